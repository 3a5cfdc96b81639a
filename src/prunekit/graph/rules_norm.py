"""Rules for normalisation layers, modules and functional forms.

Batch/instance norm act per channel. LayerNorm, RMSNorm, GroupNorm (and a mean
or variance over channels, see ``rules_index``) compute statistics over the
channels: by default those channels prune anyway, and the definition of
correctness is that the reference takes the statistics over the kept channels
(``Builder.stat``; ``masked.py`` evaluates it). ``freeze_normalised=True``
keeps them instead. GroupNorm with several groups loses whole groups, which
leaves every remaining group's statistics unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .builder import Builder, function_rule, module_rule
from .layout import Layout
from .rules_index import spans
from .rules_shape import merge_elementwise


def _input(b: Builder, node: fx.Node) -> Layout | None:
    lay = b.layout(node.args[0]) if node.args else b.layout(node.kwargs.get("input"))
    return lay if isinstance(lay, Layout) else None


def _arg(node: fx.Node, i: int, name: str, default: Any = None) -> Any:
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


def normalised(b: Builder, node: fx.Node, lay: Layout, dims: set[int], kind: str) -> int | None:
    """Handle the tracked channels that ``node`` normalises over ``dims``.

    Returns the one pruned dim whose statistics the reference takes over the kept
    channels, or None (nothing to prune there, or frozen)."""
    hit = []
    for blk in lay.blocks:
        inside = dims & set(blk.dims)
        if inside and not all(spans(b, blk, blk.dims.index(d)) for d in inside):
            hit.append(blk)   # whole units (heads) spanning the dims leave statistics alone
    if not hit:
        return None
    why = None
    if b.freeze_normalised:
        why = "normalises over channels (freeze_normalised=True)"
    elif len(hit) > 1 or len(hit[0].dims) != 1:
        why = "normalises over a channel block prunekit cannot follow"
    if why:
        for blk in hit:
            b.freeze(blk.ids, f"{b.where(node)} {why}")
        return None
    b.stat(node, kind, hit[0].dims[0], hit[0].ids)
    return hit[0].dims[0]


# ---------------------------------------------------------------- batch norm
@module_rule(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
             nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
def batchnorm(b: Builder, node: fx.Node, mod: nn.Module) -> Any:
    lay = _input(b, node)
    if lay is None:
        return b.unknown(node)
    fqn = str(node.target)
    ids = _channel_ids(b, node, lay)
    if ids is not None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            if getattr(mod, name, None) is not None:
                b.record(f"{fqn}.{name}", 0, ids)
    b.fix(fqn, "norm")
    return merge_elementwise(b, node, [lay])


def _channel_ids(b: Builder, node: fx.Node, lay: Layout) -> np.ndarray | None:
    if len(lay.shape) < 2:
        return None
    blk = lay.block_at(1)
    if blk is not None and len(blk.dims) != 1:
        b.freeze(blk.ids, f"{b.where(node)} normalises a channel block it cannot follow")
        return None
    return None if blk is None else blk.ids


def bind_vector(b: Builder, node: fx.Node, arg: Any, ids: np.ndarray | None) -> None:
    """Couple a per-channel tensor argument (a norm's weight or statistics) with ``ids``."""
    if not isinstance(arg, fx.Node):
        return
    if ids is None:   # fixed channels: the vector keeps its size too
        b.freeze_layout(b.layout(arg), f"{b.where(node)} scales channels it cannot follow")
        return
    if arg.op == "get_attr":
        b.record(str(arg.target), 0, ids)
        return
    lay = b.layout(arg)
    if not isinstance(lay, Layout) or ids is None:
        return
    own = lay.ids_1d(0)
    if own is not None:
        b.uf.union_arrays(own, ids)
    else:
        b.freeze(ids, f"{b.where(node)} scales channels by a tensor of fixed size")


def _owner(node: fx.Node, *args: Any) -> str | None:
    """The module owning a norm's weight (read directly, or through ``.float()``/``.to()``)."""
    for a in args:
        while isinstance(a, fx.Node) and a.op == "call_method" and a.target in _CASTS:
            a = a.args[0]
        if isinstance(a, fx.Node) and a.op == "get_attr":
            return str(a.target).rpartition(".")[0]
    return None


def _running_module(node: fx.Node) -> str | None:
    """The innermost module running ``node`` (a norm without affine weights names no owner)."""
    from .trace import module_stack
    stack = module_stack(node)
    return stack[-1] if stack else None


_CASTS = ("float", "half", "bfloat16", "double", "to", "type_as", "contiguous")


@function_rule(F.batch_norm, F.instance_norm)
def f_batch_norm(b: Builder, node: fx.Node, _mod: Any) -> Any:
    lay = _input(b, node)
    if lay is None:
        return b.unknown(node)
    ids = _channel_ids(b, node, lay)
    inst = node.target is F.instance_norm
    names = (("running_mean", 1), ("running_var", 2), ("weight", 3), ("bias", 4)) if not inst \
        else (("running_mean", 1), ("running_var", 2), ("weight", 3), ("bias", 4))
    vecs = [_arg(node, i, n) for n, i in names]
    for v in vecs:
        bind_vector(b, node, v, ids)
    training = _arg(node, 5, "training", False) if not inst else True
    if training:
        for blk in lay.blocks:
            if 1 not in blk.dims:
                b.freeze(blk.ids, f"{b.where(node)} takes batch statistics over a channel dim")
    owner = _owner(node, *vecs)
    if owner and ids is not None and hasattr(b.root.get_submodule(owner), "num_features"):
        b.fix(owner, "norm")
    return merge_elementwise(b, node, [lay])


# ------------------------------------------------------- layer / rms / group
@module_rule(nn.LayerNorm, nn.RMSNorm)
def layer_norm(b: Builder, node: fx.Node, mod: nn.Module) -> Any:
    lay = _input(b, node)
    if lay is None:
        return b.unknown(node)
    nd, k = len(lay.shape), len(mod.normalized_shape)
    kind = "rms_norm" if isinstance(mod, nn.RMSNorm) else "layer_norm"
    d = normalised(b, node, lay, set(range(nd - k, nd)), kind)
    fqn = str(node.target)
    if d is not None:
        ids = lay.ids_1d(d)
        for name in ("weight", "bias"):
            if getattr(mod, name, None) is not None:
                b.record(f"{fqn}.{name}", d - (nd - k), ids)
        b.follow(fqn, "normalized_shape", ids, index=d - (nd - k))
    return merge_elementwise(b, node, [lay])


@module_rule(nn.GroupNorm)
def group_norm(b: Builder, node: fx.Node, mod: nn.GroupNorm) -> Any:
    lay = _input(b, node)
    if lay is None:
        return b.unknown(node)
    fqn = str(node.target)
    ids = _group_norm(b, node, lay, mod.num_groups)
    if ids is not None:
        for name in ("weight", "bias"):
            if getattr(mod, name, None) is not None:
                b.record(f"{fqn}.{name}", 0, ids)
        b.follow(fqn, "num_channels", ids)
        if mod.num_groups > 1:
            b.follow(fqn, "num_groups", ids, per=mod.num_channels // mod.num_groups)
    return merge_elementwise(b, node, [lay])


def _group_norm(b: Builder, node: fx.Node, lay: Layout, groups: int) -> np.ndarray | None:
    """Channel ids of a group norm's input, whole groups coupled (one group: kept stats)."""
    nd = len(lay.shape)
    if groups == 1:
        d = normalised(b, node, lay, set(range(1, nd)), "group_norm")
        return lay.ids_1d(1) if d == 1 else None
    for blk in lay.blocks:
        if 1 not in blk.dims and set(blk.dims) & set(range(2, nd)):
            normalised(b, node, Layout(lay.shape, (blk,)), set(blk.dims), "group_norm")
    ids = _channel_ids(b, node, lay)
    if ids is None:
        return None
    for row in ids.reshape(groups, -1):
        b.uf.union_all(row)
    return ids


@module_rule(nn.LocalResponseNorm)
def local_response_norm(b: Builder, node: fx.Node, mod: nn.Module) -> Any:
    lay = _input(b, node)
    if lay is None:
        return b.unknown(node)
    for blk in lay.blocks:
        if 1 in blk.dims:
            b.freeze(blk.ids, f"{b.where(node)} normalises over neighbouring channels")
    return merge_elementwise(b, node, [lay])


@function_rule(F.layer_norm, F.rms_norm)
def f_layer_norm(b: Builder, node: fx.Node, _mod: Any) -> Any:
    lay = _input(b, node)
    if lay is None:
        return b.unknown(node)
    shape = _arg(node, 1, "normalized_shape")
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    nd, k = len(lay.shape), len(shape)
    rms = node.target is F.rms_norm
    vecs = [_arg(node, 2, "weight")] + ([] if rms else [_arg(node, 3, "bias")])
    d = normalised(b, node, lay, set(range(nd - k, nd)), "rms_norm" if rms else "layer_norm")
    if d is None:
        for v in vecs:
            bind_vector(b, node, v, None)
    else:
        ids, pos = lay.ids_1d(d), d - (nd - k)
        owner = _owner(node, *vecs) or _running_module(node)
        from .record import is_computed
        if not is_computed(shape[pos]):
            mod = b.root.get_submodule(owner) if owner else None
            if mod is None or tuple(getattr(mod, "normalized_shape", ())) != shape:
                b.freeze(ids, f"{b.where(node)} normalises over a constant shape it cannot follow")
                for v in vecs:
                    bind_vector(b, node, v, None)
                return merge_elementwise(b, node, [lay])
            b.follow(owner, "normalized_shape", ids, index=pos)
        for v in vecs:
            if k == 1:
                bind_vector(b, node, v, ids)
            elif isinstance(v, fx.Node) and v.op == "get_attr":
                b.record(str(v.target), pos, ids)
    return merge_elementwise(b, node, [lay])


@function_rule(F.group_norm)
def f_group_norm(b: Builder, node: fx.Node, _mod: Any) -> Any:
    lay = _input(b, node)
    groups = _arg(node, 1, "num_groups")
    if lay is None or not isinstance(groups, int):
        return b.unknown(node)
    ids = _group_norm(b, node, lay, groups)
    vecs = [_arg(node, 2, "weight"), _arg(node, 3, "bias")]
    if ids is None:
        for v in vecs:
            bind_vector(b, node, v, None)
    else:
        from .record import is_computed
        owner = _owner(node, *vecs)
        mod = b.root.get_submodule(owner) if owner else None
        if groups > 1 and not is_computed(groups):
            if mod is None or getattr(mod, "num_groups", None) != groups:
                b.freeze(ids, f"{b.where(node)} uses a constant group count it cannot follow")
                for v in vecs:
                    bind_vector(b, node, v, None)
                return merge_elementwise(b, node, [lay])
            b.follow(owner, "num_groups", ids, per=lay.shape[1] // groups)
        if mod is not None and hasattr(mod, "num_channels"):
            b.follow(owner, "num_channels", ids)
        for v in vecs:
            bind_vector(b, node, v, ids)
    return merge_elementwise(b, node, [lay])
