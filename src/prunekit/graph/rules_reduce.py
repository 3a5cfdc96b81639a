"""Rules for reductions over dims (sum, mean, var, max, ...) and softmax."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F

from .builder import Builder, function_rule, method_rule, module_rule
from .layout import Block, Layout
from .rules_index import spans


_SUMS = {"sum", torch.sum}
# statistics that prune, taken over the kept channels (see rules_norm)
_STATS = {"mean", "var", "std", torch.mean, torch.var, torch.std}


def _reduce(b: Builder, node: fx.Node, _mod: Any) -> Any:
    lay = b.layout(node.args[0])
    if not isinstance(lay, Layout):
        return b.unknown(node)
    nd = len(lay.shape)
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if isinstance(dim, fx.Node) or "other" in node.kwargs:   # torch.max(a, b): elementwise
        from .rules_shape import elementwise
        return elementwise(b, node, _mod)
    keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    if not isinstance(keep, bool):
        keep = False
    if dim is None:
        red = set(range(nd))
    else:
        red = {d % nd for d in ([dim] if isinstance(dim, int) else dim)}
    is_sum = node.target in _SUMS
    if node.target in _STATS and not is_sum:
        from .rules_norm import normalised
        normalised(b, node, lay, red, "reduce")
    blocks = []
    for blk in lay.blocks:
        hit = red & set(blk.dims)
        whole = bool(hit) and len(blk.dims) > len(hit) and all(
            spans(b, blk, blk.dims.index(d)) for d in hit)
        if hit and not is_sum and node.target not in _STATS and not whole:
            b.freeze(blk.ids, f"{b.where(node)} reduces over channels")
        if whole:   # reduced inside whole units (a head's features): the units remain
            ids = blk.ids
            for d in sorted(hit, reverse=True):
                ids = np.take(ids, 0, axis=blk.dims.index(d))
            blk = Block(tuple(d for d in blk.dims if d not in hit), ids)
        elif hit:
            continue
        dims = blk.dims if keep else tuple(d - sum(1 for r in red if r < d) for d in blk.dims)
        blocks.append(Block(dims, blk.ids))
    value = node.meta.get("pk_shape")
    if isinstance(value, tuple) and value and isinstance(value[0], tuple):  # (values, indices)
        return tuple(Layout(s, tuple(blocks)) for s in value)
    return Layout(value, tuple(blocks)) if isinstance(value, tuple) else None


function_rule(torch.mean, torch.sum, torch.amax, torch.amin, torch.std, torch.var,
              torch.norm, torch.logsumexp, torch.prod, torch.max, torch.min, torch.argmax,
              torch.argmin)(_reduce)
method_rule("mean", "sum", "amax", "amin", "std", "var", "norm", "logsumexp", "prod", "max",
            "min", "argmax", "argmin")(_reduce)


def _softmax_dim(b: Builder, node: fx.Node, lay: Layout, dim: Any) -> Any:
    if dim is None:
        b.freeze_layout(lay, f"{b.where(node)} has an implicit softmax dim")
        return lay
    blk = lay.block_at(dim % len(lay.shape))
    if blk is not None:
        b.freeze(blk.ids, f"{b.where(node)} normalises over channels")
    return lay


def _softmax(b: Builder, node: fx.Node, mod: Any) -> Any:
    lay = b.layout(node.args[0])
    if not isinstance(lay, Layout):
        return b.unknown(node)
    if mod is not None:
        dim = mod.dim
    else:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    return _softmax_dim(b, node, lay, dim)


function_rule(F.softmax, F.log_softmax, torch.softmax, torch.log_softmax)(_softmax)
method_rule("softmax", "log_softmax")(_softmax)
module_rule(torch.nn.Softmax, torch.nn.LogSoftmax, torch.nn.Softmax2d)(_softmax)
