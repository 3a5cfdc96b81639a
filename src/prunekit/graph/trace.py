"""Tracing with torch.fx and shape propagation.

We use ``torch.fx.symbolic_trace`` rather than ``torch.export``: fx keeps
``torch.nn`` layers as single ``call_module`` nodes named by their qualified
name, which is exactly the granularity surgery works at (weights live in
modules), it records the module stack of every functional op (needed to patch
constants such as pad widths), it traces in milliseconds even for 500-layer
networks, and every torchvision classifier is fx-traceable by design. Shapes
come from one forward pass over the example inputs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.fx as fx
from torch import nn

from ..errors import ExampleInputError, TraceError

# torch.nn containers that fx would otherwise keep as leaves but we want to see into.
_TRACE_THROUGH = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


class PrunekitTracer(fx.Tracer):
    """fx tracer whose leaves are torch.nn's built-in layers (the default) and nothing else."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        from .optional import torchvision_leaves
        if isinstance(m, _TRACE_THROUGH):
            return False
        leaves = torchvision_leaves()
        if leaves and isinstance(m, leaves):
            return True
        return super().is_leaf_module(m, module_qualified_name)


@dataclass(frozen=True)
class Traced:
    """A model and its fx graph (no generated code: building a GraphModule compiles
    Python source, which is a quarter of the analysis time of a small network)."""

    root: nn.Module
    graph: fx.Graph

    def get_submodule(self, name: str) -> nn.Module:
        return self.root.get_submodule(name)


def trace(model: nn.Module) -> Traced:
    try:
        graph = PrunekitTracer().trace(model)
    except Exception as exc:  # fx raises many types: TraceError, TypeError, ...
        raise TraceError(
            f"{type(model).__name__} cannot be traced by torch.fx: {type(exc).__name__}: {exc}. "
            "Typical causes are Python control flow on tensor values or shapes; wrap such code "
            "in a leaf module or a torch.fx.wrap'ed function."
        ) from exc
    return Traced(model, graph)


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph once and stores each node's output shapes in ``node.meta['pk_shape']``."""

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        n.meta["pk_shape"] = _shapes(out)
        n.meta["pk_dtype"] = out.dtype if isinstance(out, torch.Tensor) else None
        return out


def _shapes(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, (tuple, list)):
        return tuple(_shapes(v) for v in value)
    if isinstance(value, torch.Size):
        return tuple(value)
    return None


def propagate_shapes(gm: Traced, example_inputs: Sequence[Any]) -> Any:
    """Annotate shapes; returns the graph's output. Raises ExampleInputError on rejection."""
    try:
        with torch.no_grad():
            return _ShapeRecorder(gm.root, graph=gm.graph).run(*example_inputs)
    except Exception as exc:
        shapes = [tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                  for x in example_inputs]
        raise ExampleInputError(
            f"the model rejected the example inputs {shapes}: {type(exc).__name__}: {exc}. "
            "Pass example_inputs as a tuple of tensors the model's forward accepts, "
            "for example (torch.randn(1, 3, 224, 224),)."
        ) from exc


def traced_modules(gm: Traced) -> set[str]:
    """Qualified names of modules and attributes the graph reaches."""
    seen: set[str] = set()
    for n in gm.graph.nodes:
        if n.op in ("call_module", "get_attr"):
            seen.add(str(n.target))
    return seen


def modules_missed(model: nn.Module, gm: Traced) -> list[str]:
    """Modules with parameters that the eval-mode graph never calls (e.g. aux heads)."""
    seen = traced_modules(gm)
    missed = []
    for name, mod in model.named_modules():
        if not name or not any(True for _ in mod.parameters(recurse=False)):
            continue
        own = [f"{name}.{p}" for p, _ in mod.named_parameters(recurse=False)]
        if name not in seen and not any(o in seen for o in own) and not any(
                s.startswith(name + ".") for s in seen):
            missed.append(name)
    return missed


def trace_modes(model: nn.Module, example_inputs: Sequence[Any]) -> list[tuple[str, Traced]]:
    """Trace in eval mode; also in train mode when eval misses parametrised modules.

    The train-mode shape pass runs on a deep copy so batch-norm statistics of the
    user's model are never touched.
    """
    was_training = model.training
    model.eval()
    try:
        gm_eval = trace(model)
        propagate_shapes(gm_eval, example_inputs)
    finally:
        model.train(was_training)
    graphs = [("eval", gm_eval)]
    missed = modules_missed(model, gm_eval)
    if missed:
        twin = copy.deepcopy(model).train()
        try:
            gm_train = trace(twin)
            propagate_shapes(gm_train, example_inputs)
        except Exception as exc:
            raise TraceError(
                f"modules {missed[:5]} are used only in training mode, and the training-mode "
                f"trace failed ({exc}); use larger example inputs (batch >= 2) or pass them in "
                "`ignore`.") from exc
        graphs.append(("train", gm_train))
    return graphs


def module_stack(node: fx.Node) -> list[str]:
    stack = node.meta.get("nn_module_stack") or {}
    return [v[0] if isinstance(v, tuple) else str(k) for k, v in stack.items()]
