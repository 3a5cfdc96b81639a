"""Rules for elementwise ops and broadcasting, ops along an untracked dim, and factories
(reshapes and permutes: :mod:`.rules_reshape`)."""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F

from .builder import Builder, function_rule, method_rule, module_rule, untracked_like
from .layout import Block, Layout, materialize



# ---------------------------------------------------------------- elementwise
def merge_elementwise(b: Builder, node: fx.Node, layouts: list[Layout],
                      fixed_ok: tuple[Layout, ...] = (),
                      out_shape: tuple[int, ...] | None = None) -> Layout:
    """Broadcast inputs to the output shape; union elements that meet at one position."""
    out_shape = out_shape or b.shape(node)
    if out_shape is None:
        return b.unknown(node)
    nd = len(out_shape)
    tracked: list[Block] = []
    fixed_dims: set[int] = set()
    for lay in layouts:
        off = nd - len(lay.shape)
        if off < 0:
            return b.unknown(node)
        for blk in lay.blocks:
            if any(lay.shape[d] == 1 and out_shape[d + off] > 1 for d in blk.dims):
                b.freeze(blk.ids, f"{b.where(node)} broadcasts a single channel")
                continue
            tracked.append(Block(tuple(d + off for d in blk.dims), blk.ids))
        if lay in fixed_ok:
            continue
        for d, s in enumerate(lay.shape):
            if s > 1 and lay.block_at(d) is None:
                fixed_dims.add(d + off)
    tracked = _inside_units(b, node, tracked)
    blocks: list[Block] = []
    for comp in _components(tracked):
        dims = tuple(sorted({d for blk in comp for d in blk.dims}))
        if len(comp) == 1 and comp[0].dims == dims:
            base = comp[0].ids
        else:
            base = np.ascontiguousarray(materialize(comp[0], dims, out_shape))
            for other in comp[1:]:
                b.uf.union_arrays(base, materialize(other, dims, out_shape))
        fixed = [d for d in fixed_dims.intersection(dims)
                 if not _spans(b, base, dims.index(d))]   # whole units never change size there
        if fixed:
            b.freeze(base, f"{b.where(node)} combines channels with an operand of fixed size")
        blocks.append(Block(dims, base))
    return Layout(out_shape, tuple(blocks))


def _inside_units(b: Builder, node: fx.Node, tracked: list[Block]) -> list[Block]:
    """A per-feature vector meeting whole units that span that feature (a per-head norm's
    weight over the head size): the features never change size, so the vector is fixed;
    unioning it would merge every head into one unit."""
    out = []
    for blk in tracked:
        whole = len(blk.dims) == 1 and any(
            len(o.dims) > 1 and blk.dims[0] in o.dims and
            _spans(b, o.ids, o.dims.index(blk.dims[0])) for o in tracked if o is not blk)
        if whole:
            b.freeze(blk.ids, f"{b.where(node)} scales features inside whole units")
        else:
            out.append(blk)
    return out


def _spans(b: Builder, ids: np.ndarray, axis: int) -> bool:
    """A multi-dim block whose units each cover the whole of ``axis``."""
    return ids.ndim >= 2 and b.uf.constant_along(ids, axis)


def _components(blocks: list[Block]) -> list[list[Block]]:
    comps: list[list[Block]] = []
    for blk in blocks:
        hit = [c for c in comps if any(set(blk.dims) & set(o.dims) for o in c)]
        merged = [blk] + [o for c in hit for o in c]
        comps = [c for c in comps if c not in hit] + [merged]
    for c in comps:  # first block (creation order) is the base
        c.sort(key=lambda blk: int(blk.ids.min()))
    return comps


def tensor_layouts(b: Builder, args: Any) -> list[Layout]:
    out = []
    for a in args:
        lay = b.layout(a)
        if isinstance(lay, Layout):
            out.append(lay)
    return out


def elementwise(b: Builder, node: fx.Node, _mod: Any) -> Any:
    lays = tensor_layouts(b, list(node.args) + list(node.kwargs.values()))
    if not lays:
        return untracked_like(node.meta.get("pk_shape"))
    return merge_elementwise(b, node, lays)


def first_arg(b: Builder, node: fx.Node, _mod: Any) -> Any:
    """Elementwise in the first argument only (dropout, stochastic depth, activations)."""
    lay = b.layout(node.args[0]) if node.args else None
    if not isinstance(lay, Layout):
        return elementwise(b, node, _mod)
    return merge_elementwise(b, node, [lay])


_BINARY = [operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv,
           operator.pow, operator.iadd, operator.isub, operator.imul, operator.itruediv,
           operator.neg, operator.mod,
           torch.add, torch.sub, torch.mul, torch.div, torch.where, torch.maximum,
           torch.minimum, torch.clamp, torch.sigmoid, torch.tanh, torch.relu, torch.exp,
           torch.sqrt, torch.rsqrt, torch.abs, torch.neg, torch.erf, torch.log, torch.pow,
           torch.square, torch.reciprocal, torch.nan_to_num, torch.masked_fill,
           F.relu, F.relu6, F.gelu, F.silu, F.sigmoid, F.tanh, F.hardswish, F.hardsigmoid,
           F.leaky_relu, F.elu, F.selu, F.celu, F.mish, F.softplus, F.hardtanh, F.logsigmoid,
           F.softsign, F.tanhshrink, torch.addcmul, torch.addcdiv, torch.lerp, torch.sin,
           torch.cos, torch.clamp_min, torch.clamp_max]
function_rule(*_BINARY)(elementwise)
function_rule(F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
              F.feature_alpha_dropout)(first_arg)
method_rule("add", "sub", "mul", "div", "truediv", "pow", "add_", "mul_", "sub_", "div_",
            "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "exp", "sqrt", "rsqrt", "abs",
            "neg", "clamp", "clamp_", "clamp_min", "clamp_max", "masked_fill", "where",
            "hardtanh_", "square", "erf", "log", "reciprocal", "maximum", "minimum", "sin", "cos",
            "addcmul", "addcmul_", "addcdiv", "lerp", "silu", "gelu", "exp_", "sigmoid_",
            "tanh_", "neg_", "softplus")(elementwise)
# like-factories: the shape (and so the channels) of their input, constant values
function_rule(torch.zeros_like, torch.ones_like, torch.full_like, torch.empty_like,
              torch.rand_like, torch.randn_like)(first_arg)
# conversions: a tensor argument gives only its dtype/device
method_rule("float", "half", "double", "bfloat16", "to", "type", "type_as", "contiguous",
            "clone", "detach", "requires_grad_")(first_arg)

_ACT = (torch.nn.ReLU, torch.nn.ReLU6, torch.nn.GELU, torch.nn.SiLU, torch.nn.Sigmoid,
        torch.nn.Tanh, torch.nn.Hardswish, torch.nn.Hardsigmoid, torch.nn.LeakyReLU,
        torch.nn.ELU, torch.nn.SELU, torch.nn.CELU, torch.nn.Mish, torch.nn.Softplus,
        torch.nn.Hardtanh, torch.nn.Dropout, torch.nn.Dropout1d, torch.nn.Dropout2d,
        torch.nn.Dropout3d, torch.nn.AlphaDropout, torch.nn.Identity, torch.nn.LogSigmoid,
        torch.nn.Softsign, torch.nn.Tanhshrink)
module_rule(*_ACT)(first_arg)


# ------------------------------------------------------ along-a-dim movers and scans
def _dims_arg(node: fx.Node, pos: int, name: str, nd: int) -> set[int] | None:
    v = node.args[pos] if len(node.args) > pos else node.kwargs.get(name)
    if v is None:
        return None
    return {d % nd for d in ((v,) if isinstance(v, int) else v)}


def flip(b: Builder, node: fx.Node, _mod: Any) -> Any:
    """``flip``: a tracked dim is the same channels in reverse order."""
    lay = b.layout(node.args[0])
    if not isinstance(lay, Layout):
        return b.unknown(node)
    dims = _dims_arg(node, 1, "dims", len(lay.shape))
    if dims is None:
        return b.unknown(node)
    blocks = []
    for blk in lay.blocks:
        ids = blk.ids
        for d in dims & set(blk.dims):
            ids = np.flip(ids, axis=blk.dims.index(d))
        blocks.append(Block(blk.dims, np.ascontiguousarray(ids)))
    return Layout(lay.shape, tuple(blocks))


def along_untracked(b: Builder, node: fx.Node, _mod: Any, pos: int, name: str) -> Any:
    """``roll`` / ``cumsum`` / ``cumprod``: channels pass through unless the op runs along them
    (a roll or a running sum over channels would change with the width)."""
    lay = b.layout(node.args[0])
    if not isinstance(lay, Layout):
        return b.unknown(node)
    dims = _dims_arg(node, pos, name, len(lay.shape))
    for blk in lay.blocks:
        if dims is None or dims & set(blk.dims):
            b.freeze(blk.ids, f"{b.where(node)} runs along channels")
    return merge_elementwise(b, node, [lay])


function_rule(torch.flip)(flip)
method_rule("flip")(flip)
function_rule(torch.roll)(lambda b, n, m: along_untracked(b, n, m, 2, "dims"))
method_rule("roll")(lambda b, n, m: along_untracked(b, n, m, 2, "dims"))
function_rule(torch.cumsum, torch.cumprod)(lambda b, n, m: along_untracked(b, n, m, 1, "dim"))
method_rule("cumsum", "cumprod")(lambda b, n, m: along_untracked(b, n, m, 1, "dim"))


# -------------------------------------------------------------------- factories
def factory(b: Builder, node: fx.Node, _mod: Any) -> Any:
    """A tensor made from sizes (arange, zeros, ones, full, ...): its dims are fixed.

    Sizes read from a channel dim (``torch.zeros(x.shape[1])``) tie that dim to a
    tensor prunekit does not follow, so those channels are frozen."""
    for v in list(node.args) + list(node.kwargs.values()):
        for s in (v if isinstance(v, (tuple, list)) else (v,)):
            for src, d in b.size_sources(s) or ():
                lay = b.layout(src)
                blk = lay.block_at(d % len(lay.shape)) if isinstance(lay, Layout) and \
                    lay.shape else None
                if blk is not None:
                    b.freeze(blk.ids, f"{b.where(node)} is a factory op whose size prunekit "
                             "does not control")
    return untracked_like(node.meta.get("pk_shape"))


function_rule(torch.arange, torch.zeros, torch.ones, torch.full, torch.empty, torch.rand,
              torch.randn, torch.eye, torch.linspace, torch.logspace, torch.tensor,
              torch.as_tensor)(factory)
method_rule("new_zeros", "new_ones", "new_full", "new_empty", "new_tensor")(factory)
