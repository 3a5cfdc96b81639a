"""Capture: torch.fx symbolic tracing (the fast path) or recording one eager forward.

Both give an ``fx.Graph`` in one set of conventions (see ``record.py``), so
one set of op rules reads either. ``torch.fx.symbolic_trace`` keeps
``torch.nn`` layers as single ``call_module`` nodes named by their qualified
name, which is exactly the granularity surgery works at, records the module
stack of every functional op, and traces in milliseconds even for 500-layer
networks; shapes come from one forward pass of the traced graph. Where
symbolic tracing fails (control flow over tensors or shapes, keyword or dict
inputs), :func:`prunekit.graph.record.record` captures one real forward pass
instead. ``torch.export`` was measured and not used (``docs/engine.md``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.fx as fx
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten

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
        return record_leaf(m) or super().is_leaf_module(m, module_qualified_name)


@dataclass(frozen=True)
class Inputs:
    """Example inputs: positional arguments and keyword arguments of ``forward``."""

    args: tuple
    kwargs: dict = field(default_factory=dict)

    def tensors(self) -> list[torch.Tensor]:
        """The tensor leaves, in the order of the recorded graph's placeholders."""
        flat, _ = tree_flatten((self.args, self.kwargs))
        return [v for v in flat if isinstance(v, torch.Tensor)]

    def call(self, model: nn.Module) -> Any:
        return model(*self.args, **self.kwargs)

    def with_tensors(self, tensors: Sequence[torch.Tensor]) -> "Inputs":
        """These inputs with their tensor leaves (in :meth:`tensors`' order) replaced."""
        flat, spec = tree_flatten((self.args, self.kwargs))
        new = iter(tensors)
        args, kwargs = tree_unflatten([next(new) if isinstance(v, torch.Tensor) else v
                                       for v in flat], spec)
        return Inputs(tuple(args), dict(kwargs))

    def shapes(self) -> list[Any]:
        return [tuple(t.shape) for t in self.tensors()]


def as_inputs(example: Any) -> Inputs:
    """A tensor, a tuple/list of positional arguments, a dict of keyword arguments,
    or an :class:`Inputs`."""
    if isinstance(example, Inputs):
        return example
    if isinstance(example, torch.Tensor):
        return Inputs((example,))
    if isinstance(example, dict):
        return Inputs((), dict(example))
    if isinstance(example, (tuple, list)):
        return Inputs(tuple(example))
    raise ExampleInputError(
        f"example inputs must be a tensor, a tuple of positional arguments or a dict of "
        f"keyword arguments, not {type(example).__name__}")


@dataclass(frozen=True)
class Traced:
    """A model and its fx graph (no generated code: building a GraphModule compiles
    Python source, which is a quarter of the analysis time of a small network).

    ``capture`` is ``"fx"`` (placeholders are ``forward``'s positional arguments) or
    ``"record"`` (placeholders are the tensor leaves of the example inputs)."""

    root: nn.Module
    graph: fx.Graph
    capture: str = "fx"

    def get_submodule(self, name: str) -> nn.Module:
        return self.root.get_submodule(name)

    def placeholders(self, inputs: Inputs) -> list[Any]:
        return inputs.tensors() if self.capture == "record" else list(inputs.args)


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
        from .builder import needs_measuring
        if n.op in ("call_module", "call_function", "call_method") and \
                needs_measuring(n.op, n.target, self.module):
            from .cost import flop_counter
            with flop_counter() as fc:
                out = super().run_node(n)
            n.meta["pk_flops"] = fc.get_total_flops()
        else:
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


CAPTURES = ("auto", "fx", "record")


def record_leaf(mod: nn.Module) -> bool:
    """A layer the recording keeps whole: a module rule covers its type and its forward."""
    from .builder import is_rule_leaf
    from .optional import torchvision_leaves
    leaves = torchvision_leaves()
    if leaves and isinstance(mod, leaves):
        return True
    return is_rule_leaf(type(mod))


def capture(model: nn.Module, inputs: Inputs, how: str) -> Traced:
    """One graph of ``model`` on ``inputs`` (the model's mode is used as it is); declared
    size attributes are read as AttrInts, so rules know them by origin."""
    if how not in CAPTURES:
        raise ValueError(f"capture must be one of {CAPTURES}, not {how!r}")
    from .attrs import tagged_attributes
    from .optional import torchvision_leaves
    torchvision_leaves()        # registers the rules (and declarations) of imported zoos
    with tagged_attributes(model):
        return _capture(model, inputs, how)


def _capture(model: nn.Module, inputs: Inputs, how: str) -> Traced:
    fx_error: Exception | None = None
    if how in ("auto", "fx"):
        try:
            if inputs.kwargs or not all(isinstance(a, torch.Tensor) for a in inputs.args):
                raise TraceError("torch.fx takes positional tensor inputs only")
            gm = trace(model)
            propagate_shapes(gm, inputs.args)
            return gm
        except (TraceError, ExampleInputError) as exc:
            if how == "fx":
                raise
            fx_error = exc
    from .record import record
    try:
        return Traced(model, record(model, inputs.args, inputs.kwargs, record_leaf), "record")
    except ExampleInputError as exc:
        if fx_error is not None and not isinstance(fx_error, TraceError):
            raise fx_error from exc
        raise


def trace_modes(model: nn.Module, example_inputs: Any, how: str = "auto"
                ) -> list[tuple[str, Traced]]:
    """Capture in eval mode; also in train mode when eval misses parametrised modules.

    The train-mode pass runs on a deep copy so batch-norm statistics of the
    user's model are never touched.
    """
    inputs = as_inputs(example_inputs)
    was_training = model.training
    model.eval()
    try:
        gm_eval = capture(model, inputs, how)
    finally:
        model.train(was_training)
    graphs = [("eval", gm_eval)]
    missed = modules_missed(model, gm_eval)
    if missed:
        twin = copy.deepcopy(model).train()
        try:
            gm_train = capture(twin, inputs, gm_eval.capture)
        except Exception as exc:
            raise TraceError(
                f"modules {missed[:5]} are used only in training mode, and the training-mode "
                f"capture failed ({exc}); use larger example inputs (batch >= 2) or pass them in "
                "`ignore`.") from exc
        graphs.append(("train", gm_train))
    return graphs


def module_stack(node: fx.Node) -> list[str]:
    stack = node.meta.get("nn_module_stack") or {}
    return [v[0] if isinstance(v, tuple) else str(k) for k, v in stack.items()]
