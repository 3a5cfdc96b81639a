"""Physical removal of channels: slice tensors, fix module attributes, patch constants."""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from .attention import PrunedMultiheadAttention
from .trace import PrunekitTracer

if TYPE_CHECKING:
    from .core import ChannelGraph


def apply_plan(graph: "ChannelGraph", model: nn.Module, keep: np.ndarray,
               inplace: bool) -> nn.Module:
    new = model if inplace else copy.deepcopy(model)
    per_tensor: dict[str, list[tuple[int, torch.Tensor]]] = defaultdict(list)
    for (fqn, dim), units in graph.slices.items():
        k = keep[units]
        if not k.all():
            per_tensor[fqn].append((dim, torch.from_numpy(np.nonzero(k)[0])))
    with torch.no_grad():
        for names, cuts in _tied(new, per_tensor):
            sliced = _slice_tensor(new, names[0], cuts)
            for other in names[1:]:   # tied weights (embedding and LM head) stay one tensor
                prefix, _, attr = other.rpartition(".")
                setattr(new.get_submodule(prefix) if prefix else new, attr, sliced)
    for fqn, kind in graph._b.fixes.items():
        _FIXERS[kind](new, fqn, model)
    for f in graph._b.follows:
        units = graph.unit_of[f.ids]
        if len(units) > 1 and (units == units[0]).all():
            continue   # a line inside one whole unit (a head's features): its size stays
        _follow(new, f, int(keep[units].sum()) // f.per)
    new = _patch_constants(graph, new, keep)
    for hook in AFTER_SURGERY:
        hook(graph, new, keep)
    return new


# ``hook(graph, pruned_model, keep)`` run after every surgery: library integrations that
# keep a model's own bookkeeping in step (transformers' ``config``)
AFTER_SURGERY: list = []


def _follow(model: nn.Module, f, value: int) -> None:
    """Set an attribute the model's code reads (a norm's shape, a head count)."""
    mod = model.get_submodule(f.fqn)
    if f.index is None:
        setattr(mod, f.attr, value)
        return
    old = getattr(mod, f.attr)
    seq = list(old)
    seq[f.index] = value
    setattr(mod, f.attr, type(old)(seq) if isinstance(old, (tuple, list)) else tuple(seq))


def _tied(model: nn.Module, per_tensor: dict) -> list[tuple[list[str], list]]:
    """Names that share one tensor, with their cuts merged (identical cuts per dim)."""
    names = {n: id(t) for n, t in list(model.named_parameters(remove_duplicate=False)) +
             list(model.named_buffers(remove_duplicate=False))}
    by_obj: dict[int, list[str]] = defaultdict(list)
    for n, oid in names.items():
        by_obj[oid].append(n)
    out, done = [], set()
    for fqn, cuts in per_tensor.items():
        oid = names.get(fqn)
        if oid in done:
            continue
        group = by_obj.get(oid, [fqn])
        merged: dict[int, torch.Tensor] = {}
        tie = True
        for n in group:
            for dim, idx in per_tensor.get(n, []):
                if dim in merged and not torch.equal(merged[dim], idx):
                    tie = False
                merged.setdefault(dim, idx)
        if not tie or len(group) == 1:
            out.append(([fqn], cuts))
            continue
        done.add(oid)
        out.append((group, sorted(merged.items())))
    return out


def _slice_tensor(model: nn.Module, fqn: str, cuts: list[tuple[int, torch.Tensor]]) -> Any:
    prefix, _, name = fqn.rpartition(".")
    mod = model.get_submodule(prefix) if prefix else model
    old = getattr(mod, name)
    t = old.detach() if isinstance(old, nn.Parameter) else old
    for dim, idx in cuts:
        t = t.index_select(dim, idx.to(t.device))
    if isinstance(old, nn.Parameter):
        new = nn.Parameter(t.clone(), requires_grad=old.requires_grad)
        setattr(mod, name, new)
        return new
    mod._buffers[name] = t.clone()
    return mod._buffers[name]


def _fix_conv(model: nn.Module, fqn: str, original: nn.Module) -> None:
    mod = model.get_submodule(fqn)
    orig = original.get_submodule(fqn)
    w = mod.weight
    if mod.transposed:
        mod.in_channels = w.shape[0]
        mod.out_channels = w.shape[1] * mod.groups
        return
    # read the original's attributes first: with inplace=True ``orig`` is ``mod``
    depthwise = orig.groups > 1 and orig.in_channels // orig.groups == 1
    multiplier = orig.out_channels // orig.groups
    mod.out_channels = w.shape[0]
    if depthwise:
        mod.groups = w.shape[0] // multiplier
        mod.in_channels = mod.groups
    else:
        mod.in_channels = w.shape[1] * mod.groups


def _fix_linear(model: nn.Module, fqn: str, _orig: nn.Module) -> None:
    mod = model.get_submodule(fqn)
    mod.out_features, mod.in_features = mod.weight.shape


def _fix_norm(model: nn.Module, fqn: str, _orig: nn.Module) -> None:
    mod = model.get_submodule(fqn)
    ref = mod.weight if getattr(mod, "weight", None) is not None else getattr(
        mod, "running_mean", None)
    if ref is not None:
        mod.num_features = ref.shape[0]


def _fix_hf_conv1d(model: nn.Module, fqn: str, _orig: nn.Module) -> None:
    mod = model.get_submodule(fqn)
    mod.nx, mod.nf = mod.weight.shape


def _fix_embedding(model: nn.Module, fqn: str, _orig: nn.Module) -> None:
    mod = model.get_submodule(fqn)
    mod.embedding_dim = mod.weight.shape[1]


def _fix_prelu(model: nn.Module, fqn: str, _orig: nn.Module) -> None:
    mod = model.get_submodule(fqn)
    mod.num_parameters = mod.weight.numel()


def _fix_mha(model: nn.Module, fqn: str, original: nn.Module) -> None:
    mod = model.get_submodule(fqn)
    head_dim = original.get_submodule(fqn).head_dim
    _set_submodule(model, fqn, PrunedMultiheadAttention.from_module(mod, head_dim))


def _fix_window(model: nn.Module, fqn: str, original: nn.Module) -> None:
    from .window_attention import fix_window
    wrapper = fix_window(model, fqn, original)
    if wrapper is not None:
        _set_submodule(model, fqn, wrapper)


_FIXERS = {"conv": _fix_conv, "linear": _fix_linear, "norm": _fix_norm,
           "embedding": _fix_embedding, "hf_conv1d": _fix_hf_conv1d, "prelu": _fix_prelu, "mha": _fix_mha,
           "window_attention": _fix_window}


def _set_submodule(model: nn.Module, fqn: str, new: nn.Module) -> None:
    prefix, _, name = fqn.rpartition(".")
    parent = model.get_submodule(prefix) if prefix else model
    setattr(parent, name, new)


def _patch_constants(graph: "ChannelGraph", model: nn.Module, keep: np.ndarray) -> nn.Module:
    """Rewrite pad widths inside the innermost module that runs each pad.

    The owner module is re-traced alone and replaced by a GraphModule with the
    new constants; the rest of the model keeps its own classes (a pad in the
    root's own forward makes the whole result a GraphModule).
    """
    by_owner: dict[str, list] = defaultdict(list)
    for p in graph._b.patches:
        before, after = (int(keep[graph.unit_of[z]].sum()) for z in p.layout_ids)
        if (before, after) != (len(p.layout_ids[0]), len(p.layout_ids[1])):
            by_owner[p.owner].append((p, before, after))
    for owner, items in by_owner.items():
        mod = model.get_submodule(owner) if owner else model
        gm = fx.GraphModule(mod, PrunekitTracer().trace(mod), class_name=type(mod).__name__)
        for p, before, after in items:
            node = [n for n in gm.graph.nodes if n.op == "call_function" and
                    n.target is p.target][p.index_in_owner]
            widths = list(node.args[1])
            widths[p.pair], widths[p.pair + 1] = before, after
            node.args = (node.args[0], tuple(widths)) + tuple(node.args[2:])
        gm.recompile()
        gm.train(mod.training)
        if owner:
            _set_submodule(model, owner, gm)
        else:
            model = gm
    return model
