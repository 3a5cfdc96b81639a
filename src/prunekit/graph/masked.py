"""The masked reference: the original model with removed channels zeroed at every op.

This is the definition of correctness for surgery: for any plan, the pruned
model's output equals the masked reference's output (eval mode). Removed
channels are zeroed in every tensor of the graph and in every weight slice that
belongs to them; the latter matters inside leaf layers whose channels no graph
tensor shows (an attention head's output columns in ``out_proj``).
"""

from __future__ import annotations

import copy
import operator
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .layout import Layout

if TYPE_CHECKING:
    from .core import ChannelGraph


class MaskedReference(nn.Module):
    """``snapshot`` (default): a zeroed deep copy of the weights, unaffected by later
    changes of the model. ``snapshot=False`` (verification): no copy; the zeroed tensors
    are swapped into the model only while it runs, so the model must not change between
    construction and the run."""

    def __init__(self, graph: "ChannelGraph", keep: np.ndarray,
                 root: nn.Module | None = None, snapshot: bool = True) -> None:
        super().__init__()
        traced = graph.traced
        base = root if root is not None else traced.root
        self._swap: dict[str, torch.Tensor] = {}
        if snapshot:
            self.root = copy.deepcopy(base).eval()
            _zero_slices(self.root, graph, keep)
        else:
            object.__setattr__(self, "_live", base)   # not a submodule: modes stay the user's
            self._swap = _zeroed(base, graph, keep, hidden_slices(graph))
        self.graph = traced.graph
        self._traced = traced
        self._graph_stats = graph._b.stats
        self._masks: dict[str, Any] = {}
        for node, value in graph._b.layouts.items():
            mask = _node_mask(graph, keep, value)
            if mask is not None:
                self._masks[node.name] = mask
        self._kept: dict[str, torch.Tensor] = {}
        for name, st in graph._b.stats.items():
            k = keep[graph.unit_of[st.ids]]
            if not k.all():
                self._kept[name] = torch.from_numpy(np.nonzero(k)[0])

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        from .trace import Inputs
        inputs = self._traced.placeholders(Inputs(args, kwargs))
        if "root" in self._modules:
            return _Masker(self.root, self.graph, self._masks, self._stats_of()).run(*inputs)
        root = self._live
        was, old = root.training, {}
        try:
            root.eval()
            for fqn, t in self._swap.items():
                old[fqn] = _set_tensor(root, fqn, t)
            return _Masker(root, self.graph, self._masks, self._stats_of()).run(*inputs)
        finally:
            for fqn, t in old.items():
                _set_tensor(root, fqn, t)
            root.train(was)

    def _stats_of(self) -> dict[str, Any]:
        return {name: (self._graph_stats[name], idx) for name, idx in self._kept.items()}

    def run_nodes(self, nodes: Sequence[fx.Node], env: dict[fx.Node, Any],
                  grad: bool = False) -> Any:
        """Run consecutive ``nodes`` of the traced graph (a stretch such as a sub-network)
        masked as :meth:`forward` runs them, from ``env`` (the values they read that
        come from before the stretch, and any model input inside it); the value of the
        last node (the model's output structure when it is the output node). Snapshot
        mode only; ``grad``: record gradients (to train the snapshot's weights)."""
        if "root" not in self._modules:
            raise RuntimeError("run_nodes needs a snapshot reference (snapshot=True)")
        masker = self.__dict__.get("_masker")
        if masker is None:
            masker = _Masker(self.root, self.graph, self._masks, self._stats_of())
            self.__dict__["_masker"] = masker
        masker.env = dict(env)
        try:
            with torch.set_grad_enabled(grad):
                for node in nodes:
                    if node.op != "placeholder":    # inputs come from ``env``
                        masker.env[node] = masker.run_node(node)
            return masker.env[nodes[-1]]
        finally:
            masker.env = {}


def _set_tensor(root: nn.Module, fqn: str, value: torch.Tensor) -> torch.Tensor:
    prefix, _, name = fqn.rpartition(".")
    mod = root.get_submodule(prefix) if prefix else root
    table = mod._parameters if name in mod._parameters else mod._buffers
    old = table[name]
    table[name] = value
    return old


def visible_units(graph: "ChannelGraph") -> dict[str, np.ndarray]:
    """Per layer captured as one node: the units its input and output tensors show.

    A weight slice whose units all show there needs no zeroing in the reference: the
    node masks already zero those channels where they enter and leave the layer. Only
    slices of channels that live inside a layer (an attention head in ``out_proj``) must
    be zeroed in the weights."""
    carried = graph.node_units()
    out: dict[str, np.ndarray] = {}
    for node in graph.traced.graph.nodes:
        if node.op != "call_module":
            continue
        units = [carried[v] for v in [node, *node.all_input_nodes] if v in carried]
        out[str(node.target)] = np.unique(np.concatenate(units)) if units \
            else np.zeros(0, dtype=np.int64)
    return out


def hidden_slices(graph: "ChannelGraph") -> list[tuple[str, int]]:
    """The weight slices some of whose units no node mask zeroes (computed once)."""
    cached = graph.__dict__.get("_hidden_slices")
    if cached is None:
        visible = visible_units(graph)
        cached = []
        for key, units in graph.slices.items():
            shown = visible.get(key[0].rpartition(".")[0])
            if shown is None or not np.isin(units, shown).all():
                cached.append(key)
        graph.__dict__["_hidden_slices"] = cached
    return cached


def _zeroed(root: nn.Module, graph: "ChannelGraph", keep: np.ndarray,
            hidden: list[tuple[str, int]]) -> dict[str, torch.Tensor]:
    """Zeroed copies of the tensors with removed channels that no node mask zeroes
    (no copy of the model)."""
    out: dict[str, torch.Tensor] = {}
    if not hidden:
        return out
    names = dict(root.named_parameters()) | dict(root.named_buffers())
    with torch.no_grad():
        for fqn, dim in hidden:
            k = keep[graph.slices[(fqn, dim)]]
            if k.all() or fqn not in names or "running_var" in fqn:
                continue
            t = out.get(fqn)
            if t is None:
                src = names[fqn]
                t = out[fqn] = (nn.Parameter(src.detach().clone(), src.requires_grad)
                                if isinstance(src, nn.Parameter) else src.detach().clone())
            t.data.index_fill_(dim, torch.from_numpy(np.nonzero(~k)[0]), 0.0)
    return out


def _zero_slices(gm: nn.Module, graph: "ChannelGraph", keep: np.ndarray) -> None:
    with torch.no_grad():
        for (fqn, dim), units in graph.slices.items():
            k = keep[units]
            if k.all():
                continue
            try:
                t = gm.get_parameter(fqn)
            except AttributeError:
                try:
                    t = gm.get_buffer(fqn)
                except AttributeError:
                    continue  # only in the training-mode graph
            if "running_var" in fqn:
                continue  # a zero variance is not "no channel"; the node mask zeroes it
            drop = torch.from_numpy(np.nonzero(~k)[0])
            t.index_fill_(dim, drop, 0.0)


def _node_mask(graph: "ChannelGraph", keep: np.ndarray, value: Any) -> Any:
    if isinstance(value, Layout):
        masks = []
        for blk in value.blocks:
            k = keep[graph.unit_of[blk.ids]]
            if k.all():
                continue
            order = sorted(blk.dims)
            k = np.transpose(k, [blk.dims.index(d) for d in order])
            shape = [value.shape[d] if d in order else 1 for d in range(len(value.shape))]
            masks.append(torch.from_numpy(np.ascontiguousarray(k).reshape(shape)))
        return masks or None
    if isinstance(value, tuple):
        inner = [_node_mask(graph, keep, v) for v in value]
        return inner if any(m is not None for m in inner) else None
    return None


def _apply(value: Any, mask: Any, in_place: bool = False) -> Any:
    """``value`` with the masked channels zeroed; ``in_place`` only for a tensor whose
    storage no other tensor (an input, a weight, an earlier value) shares."""
    if mask is None:
        return value
    if isinstance(value, torch.Tensor):
        if in_place:
            for m in mask:
                value.masked_fill_(~m.to(value.device), 0.0)
            return value
        for m in mask:
            value = torch.where(m.to(value.device), value, torch.zeros((), dtype=value.dtype,
                                                                       device=value.device))
        return value
    if isinstance(value, (tuple, list)):
        out = [_apply(v, m) for v, m in zip(value, mask)]
        return type(value)(out) if isinstance(value, tuple) and not hasattr(value, "_fields") \
            else (type(value)(*out) if hasattr(value, "_fields") else out)
    return value


# layers (by their torch-defined ``forward``) and ops that always return a new tensor,
# never a view or one of their inputs: their outputs are masked in place
_FRESH_FUNCTIONS = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add,
                    torch.sub, torch.mul, torch.cat, torch.matmul, F.linear, F.conv1d,
                    F.conv2d, F.conv3d, F.batch_norm, F.layer_norm, F.group_norm}


def _fresh(module: nn.Module, n: fx.Node, out: Any) -> bool:
    """True when ``out`` is a new tensor no other value shares: the output of a layer
    whose ``forward`` is one of torch's in ``_FRESH_FORWARDS``, or of an op above."""
    if not isinstance(out, torch.Tensor) or out.layout != torch.strided:
        return False
    if n.op == "call_module":
        return type(module.get_submodule(str(n.target))).forward in _FRESH_FORWARDS
    return n.op == "call_function" and n.target in _FRESH_FUNCTIONS


_FRESH_FORWARDS = {c.forward for c in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d,
                                       nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear,
                                       nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
                                       nn.LayerNorm, nn.GroupNorm)}


class _Masker(fx.Interpreter):
    def __init__(self, root: nn.Module, graph: fx.Graph, masks: dict[str, Any],
                 stats: dict[str, Any] | None = None) -> None:
        super().__init__(root, graph=graph)
        self.masks = masks
        self.stats = stats or {}

    def run_node(self, n: fx.Node) -> Any:
        if n.name in self.stats:
            from .masked_stats import kept_statistics
            with self._set_current_node(n):
                args, kwargs = self.fetch_args_kwargs_from_env(n)
                out = kept_statistics(self.module, n, args, kwargs, *self.stats[n.name])
        else:
            out = super().run_node(n)
        mask = self.masks.get(n.name)
        if mask is None:
            return out
        return _apply(out, mask, in_place=_fresh(self.module, n, out))
