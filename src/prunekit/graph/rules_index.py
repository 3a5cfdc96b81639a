"""Rules for indexing, cat/stack, split/chunk and matmul (reductions and softmax:
:mod:`.rules_reduce`)."""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from .builder import Builder, function_rule, method_rule
from .layout import Block, Layout, untracked
from .rules_shape import merge_elementwise


def spans(b: Builder, blk: Block, axis: int) -> bool:
    """True when every unit of the block covers the whole of ``axis`` (its size never changes)."""
    return b.uf.constant_along(blk.ids, axis)


# ------------------------------------------------------------------- getitem
def _one_tensor_index(b: Builder, node: fx.Node, src: Layout, idx: tuple,
                      out_shape: tuple[int, ...]) -> Layout | None:
    """``t[:, index]``: one integer tensor index, every other position a full slice. The
    indexed dim is gathered (its channels freeze); the other dims keep theirs, shifted by
    the index's extra dims. None when the indexing is of another form."""
    pos = [k for k, i in enumerate(idx) if isinstance(i, fx.Node)]
    full = slice(None)
    if len(pos) != 1 or any(i != full for k, i in enumerate(idx) if k != pos[0]) \
            or not all(isinstance(i, (fx.Node, slice)) for i in idx):
        return None
    k, index = pos[0], idx[pos[0]]
    ishape = index.meta.get("pk_shape")
    if index.meta.get("pk_dtype") not in (torch.int64, torch.int32) or \
            not isinstance(ishape, tuple) or not all(isinstance(v, int) for v in ishape):
        return None
    if tuple(out_shape) != tuple(src.shape[:k]) + ishape + tuple(src.shape[k + 1:]):
        return None
    b.freeze_layout(b.layout(index), f"{b.where(node)} indexes with this tensor")
    shift = len(ishape) - 1
    blocks = []
    for blk in src.blocks:
        if k in blk.dims:
            b.freeze(blk.ids, f"{b.where(node)} gathers channels with a tensor index")
            continue
        blocks.append(Block(tuple(d + shift if d > k else d for d in blk.dims), blk.ids))
    return Layout(tuple(out_shape), tuple(blocks))


def _getitem(b: Builder, node: fx.Node, _mod: Any) -> Any:
    src = b.layout(node.args[0])
    idx = node.args[1]
    if isinstance(src, (tuple, list)):
        return src[idx] if isinstance(idx, int) and -len(src) <= idx < len(src) else None
    if not isinstance(src, Layout):
        return None
    out_shape = b.shape(node)
    if out_shape is None:
        return b.unknown(node)
    idx = idx if isinstance(idx, tuple) else (idx,)
    if any(isinstance(i, fx.Node) or (isinstance(i, (list, tuple))) for i in idx):
        one = _one_tensor_index(b, node, src, idx, out_shape)
        if one is not None:
            return one
        b.freeze_layout(src, f"{b.where(node)} indexes channels with a tensor")
        return untracked(out_shape)
    n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
    expanded: list[Any] = []
    for i in idx:
        if i is Ellipsis:
            expanded.extend([slice(None)] * (len(src.shape) - n_real))
        else:
            expanded.append(i)
    expanded.extend([slice(None)] * (len(src.shape) - sum(1 for i in expanded if i is not None)))
    blocks = {id(blk): blk for blk in src.blocks}
    ids_of = {id(blk): blk.ids for blk in src.blocks}
    dim_out: dict[int, int | None] = {}
    d_in = d_out = 0
    for i in expanded:
        if i is None:
            d_out += 1
            continue
        blk = src.block_at(d_in)
        if isinstance(i, int):
            dim_out[d_in] = None
            if blk is not None:
                ax = blk.dims.index(d_in)
                if len(blk.dims) > 1 and spans(b, blk, ax):
                    ids_of[id(blk)] = np.take(ids_of[id(blk)], i, axis=ax)
                else:
                    b.freeze(blk.ids, f"{b.where(node)} selects a single channel")
                    blocks.pop(id(blk), None)
        elif isinstance(i, slice) and any(isinstance(v, fx.Node) for v in (i.start, i.stop, i.step)):
            dim_out[d_in] = d_out   # bounds computed in the graph: the channels cannot follow
            if blk is not None:
                b.freeze(blk.ids, f"{b.where(node)} slices channels at a computed position")
                blocks.pop(id(blk), None)
            d_out += 1
        elif isinstance(i, slice):
            dim_out[d_in] = d_out
            if blk is not None and i != slice(None):
                ids_of[id(blk)] = _slice_block(b, node, blk, d_in, i, ids_of[id(blk)])
            d_out += 1
        d_in += 1
    out_blocks = []
    for key, blk in blocks.items():
        new_dims = tuple(dim_out[d] for d in blk.dims if dim_out.get(d) is not None)
        if len(new_dims) != np.ndim(ids_of[key]):
            b.freeze(blk.ids, f"{b.where(node)} indexes a channel block")
            continue
        out_blocks.append(Block(new_dims, ids_of[key]))
    return Layout(out_shape, tuple(out_blocks))


def _slice_block(b: Builder, node: fx.Node, blk: Block, dim: int, sl: slice,
                 ids: np.ndarray) -> np.ndarray:
    ax = blk.dims.index(dim)
    size = ids.shape[ax]
    start, stop, step = sl.indices(size)
    if (start, stop, step) == (0, size, 1):
        return ids
    if spans(b, Block(blk.dims, ids), ax) and len(blk.dims) > 1:
        return np.take(ids, range(start, stop, step), axis=ax)  # inside whole units (a head)
    if len(blk.dims) > 1 or step < 0 or _computed(sl):
        b.freeze(ids, f"{b.where(node)} slices a channel block" if len(blk.dims) > 1 else
                 f"{b.where(node)} slices channels at a computed position")
        return np.take(ids, range(start, stop, step), axis=ax)
    if stop < size:
        b.freeze(ids[:stop], f"{b.where(node)} slices channels with a fixed end")
    else:
        b.freeze(ids[:start], f"{b.where(node)} slices channels with a fixed start")
        for k in range(start, size, step):
            b.uf.union_all(ids[k:k + step])
    return ids[start:stop:step]


def _computed(sl: slice) -> bool:
    from .record import is_computed
    return any(is_computed(v) for v in (sl.start, sl.stop, sl.step))


function_rule(operator.getitem)(_getitem)


# ---------------------------------------------------------------- cat / stack
def _tensors_and_dim(node: fx.Node) -> tuple[list[Any], int]:
    tensors = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    return list(tensors), dim


def _cat(b: Builder, node: fx.Node, _mod: Any) -> Any:
    tensors, dim = _tensors_and_dim(node)
    lays = [b.layout(t) for t in tensors]
    out_shape = b.shape(node)
    if out_shape is None or not all(isinstance(l, Layout) for l in lays):
        return b.unknown(node)
    nd = len(out_shape)
    dim %= nd
    spanned = _cat_spanned(b, node, lays, dim, out_shape)
    if spanned is not None:
        return spanned
    parts = []
    for lay in lays:
        blk = lay.block_at(dim)
        if blk is not None and len(blk.dims) > 1:
            b.freeze(blk.ids, f"{b.where(node)} concatenates along a channel block")
            blk = None
        if blk is None and not any(l.block_at(dim) is not None for l in lays):
            parts.append(np.zeros(0, np.int64))
        elif blk is None:
            ids = b.new(f"{node.name}:fill", lay.shape[dim], "fill") if lay.shape[dim] else \
                np.zeros(0, np.int64)
            if lay.shape[dim] and any(l.block_at(dim) is not None for l in lays):
                b.freeze(ids, f"{b.where(node)} concatenates an operand of fixed size")
            parts.append(ids)
        else:
            parts.append(blk.ids)
    # other dims: broadcast-merge the operands with the cat dim removed
    rest = [Layout(tuple(s for d, s in enumerate(l.shape) if d != dim),
                   tuple(Block(tuple(d - (d > dim) for d in blk.dims), blk.ids)
                         for blk in l.blocks if dim not in blk.dims)) for l in lays]
    rest_shape = tuple(s for d, s in enumerate(out_shape) if d != dim)
    merged = merge_elementwise(b, node, rest, out_shape=rest_shape)
    blocks = [Block(tuple(d + (d >= dim) for d in blk.dims), blk.ids) for blk in merged.blocks]
    cat_ids = np.concatenate(parts)
    if any(lay.block_at(dim) is not None for lay in lays):
        blocks.append(Block((dim,), cat_ids))
    return Layout(out_shape, tuple(blocks))


def _cat_spanned(b: Builder, node: fx.Node, lays: list[Layout], dim: int,
                 out_shape: tuple[int, ...]) -> Layout | None:
    """cat along a dim inside whole units (e.g. the halves of a rotary head): every operand
    has the same multi-dim block there, spanning it; rows meeting at one position couple."""
    blks = [lay.block_at(dim) for lay in lays]
    if not all(blk is not None and len(blk.dims) > 1 and blk.dims == blks[0].dims for blk in blks):
        return None
    ax = blks[0].dims.index(dim)
    if not all(spans(b, blk, ax) for blk in blks) or any(
            len(lay.blocks) != 1 for lay in lays):
        return None
    full = [blk for blk in blks if blk.ids.size]
    if full:
        first = np.take(full[0].ids, [0], axis=ax)
        for blk in full[1:]:
            b.uf.union_arrays(first, np.take(blk.ids, [0], axis=ax))
    return Layout(out_shape, (Block(blks[0].dims, np.concatenate([blk.ids for blk in blks],
                                                                 axis=ax)),))


def _stack(b: Builder, node: fx.Node, _mod: Any) -> Any:
    tensors, dim = _tensors_and_dim(node)
    lays = [b.layout(t) for t in tensors]
    out_shape = b.shape(node)
    if out_shape is None or not all(isinstance(l, Layout) for l in lays):
        return b.unknown(node)
    dim %= len(out_shape)
    rest_shape = tuple(s for d, s in enumerate(out_shape) if d != dim)
    merged = merge_elementwise(b, node, lays, out_shape=rest_shape)
    blocks = [Block(tuple(d + (d >= dim) for d in blk.dims), blk.ids) for blk in merged.blocks]
    return Layout(out_shape, tuple(blocks))


function_rule(torch.cat, torch.concat, torch.concatenate)(_cat)
function_rule(torch.stack)(_stack)


# --------------------------------------------------------------- split/chunk
def _chunk(b: Builder, node: fx.Node, _mod: Any) -> Any:
    lay = b.layout(node.args[0])
    shapes = node.meta.get("pk_shape")
    if not isinstance(lay, Layout) or not isinstance(shapes, tuple):
        return b.unknown(node)
    k = node.args[1] if len(node.args) > 1 else node.kwargs.get("chunks")
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    dim %= len(lay.shape)
    blk = lay.block_at(dim)
    size = lay.shape[dim]
    if blk is None or b.uf.constant_along(blk.ids, blk.dims.index(dim)):
        return _split_outputs(lay, dim, shapes)   # inside whole units: never resized
    if len(blk.dims) > 1 or size % k or len(shapes) != k:
        b.freeze(blk.ids, f"{b.where(node)} splits channels unevenly")
        return _split_outputs(lay, dim, shapes)
    step = size // k
    grid = blk.ids.reshape(k, step)
    for col in range(step):
        b.uf.union_all(grid[:, col])
    return _split_outputs(lay, dim, shapes)


def _split_outputs(lay: Layout, dim: int, shapes: tuple) -> tuple[Layout, ...]:
    outs, pos = [], 0
    for s in shapes:
        n = s[dim]
        blocks = []
        for blk in lay.blocks:
            if dim in blk.dims:
                ax = blk.dims.index(dim)
                blocks.append(Block(blk.dims, np.take(blk.ids, range(pos, pos + n), axis=ax)))
            else:
                blocks.append(blk)
        outs.append(Layout(s, tuple(blocks)))
        pos += n
    return tuple(outs)


def _split(b: Builder, node: fx.Node, _mod: Any) -> Any:
    """split with sizes: the sizes are constants, so split channels may not change."""
    lay = b.layout(node.args[0])
    shapes = node.meta.get("pk_shape")
    if not isinstance(lay, Layout) or not isinstance(shapes, tuple):
        return b.unknown(node)
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    dim %= len(lay.shape)
    blk = lay.block_at(dim)
    if blk is not None and b.uf.constant_along(blk.ids, blk.dims.index(dim)):
        blk = None                                # inside whole units: never resized
    if blk is not None and not _split_by_attribute(b, node, blk, lay.shape[dim]):
        from .record import is_computed
        part = node.args[1] if len(node.args) > 1 else node.kwargs.get("split_size_or_sections")
        computed = any(is_computed(p) for p in (part if isinstance(part, (list, tuple))
                                                else (part,)))
        b.freeze(blk.ids, f"{b.where(node)} splits channels " +
                 ("at sizes computed from the width" if computed else "into constant sizes"))
    return _split_outputs(lay, dim, shapes)


def _split_by_attribute(b: Builder, node: fx.Node, blk: Block, size: int) -> bool:
    """``x.split(self.split_size)`` into equal parts, the size a declared attribute of the
    module running it: prune like chunk, and surgery sets the attribute."""
    from .attrs import declared
    part = node.args[1] if len(node.args) > 1 else node.kwargs.get("split_size_or_sections")
    origin = declared(part)
    if origin is None or len(blk.dims) != 1 or part <= 0 or size % part:
        return False
    owner, attr, index = origin
    grid = blk.ids.reshape(size // part, part)
    for col in range(part):
        b.uf.union_all(grid[:, col])
    b.follow(owner, attr, grid[0], index)
    return True


def _unbind(b: Builder, node: fx.Node, _mod: Any) -> Any:
    lay = b.layout(node.args[0])
    shapes = node.meta.get("pk_shape")
    if not isinstance(lay, Layout) or not isinstance(shapes, tuple):
        return b.unknown(node)
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    dim %= len(lay.shape)
    outs = []
    for i, s in enumerate(shapes):
        blocks = []
        for blk in lay.blocks:
            if dim not in blk.dims:
                blocks.append(Block(tuple(d - (d > dim) for d in blk.dims), blk.ids))
                continue
            ax = blk.dims.index(dim)
            if len(blk.dims) > 1 and spans(b, blk, ax):
                dims = tuple(d - (d > dim) for d in blk.dims if d != dim)
                blocks.append(Block(dims, np.take(blk.ids, i, axis=ax)))
            else:
                b.freeze(blk.ids, f"{b.where(node)} unbinds a channel dim")
        outs.append(Layout(s, tuple(blocks)))
    return tuple(outs)


function_rule(torch.chunk)(_chunk)
method_rule("chunk")(_chunk)
function_rule(torch.split)(_split)
method_rule("split")(_split)
function_rule(torch.unbind)(_unbind)
method_rule("unbind")(_unbind)


# -------------------------------------------------------------------- matmul
def matmul_layout(b: Builder, node: fx.Node, la: Layout, lb: Layout) -> Any:
    out_shape = b.shape(node)
    if out_shape is None or len(la.shape) < 2 or len(lb.shape) < 2:
        return b.unknown(node)
    na, nb, no = len(la.shape), len(lb.shape), len(out_shape)
    from .rules_matmul import batched_matmul
    batched = batched_matmul(b, node, la, lb)
    if batched is not None:
        return batched
    for lay, keep in ((la, (na - 2, na - 1)), (lb, (nb - 2, nb - 1))):
        for blk in lay.blocks:
            if len(blk.dims) > 1 or blk.dims[0] not in keep:
                b.freeze(blk.ids, f"{b.where(node)} multiplies along a channel block")
    ka, kb = la.ids_1d(na - 1), lb.ids_1d(nb - 2)
    if ka is not None and kb is not None:
        b.uf.union_arrays(ka, kb)
    elif ka is not None or kb is not None:
        b.freeze(ka if ka is not None else kb,
                 f"{b.where(node)} contracts channels with an operand of fixed size")
    rows, cols = la.ids_1d(na - 2), lb.ids_1d(nb - 1)
    batch = int(np.prod(out_shape[:-2])) if no > 2 else 1
    coeff = batch * (out_shape[-2] if rows is None else 1) * (
        out_shape[-1] if cols is None else 1) * (la.shape[-1] if ka is None else 1)
    b.macs(coeff, [rows, cols, ka], b.where(node))
    blocks = []
    if rows is not None:
        blocks.append(Block((no - 2,), rows))
    if cols is not None:
        blocks.append(Block((no - 1,), cols))
    return Layout(out_shape, tuple(blocks))


def _matmul(b: Builder, node: fx.Node, _mod: Any) -> Any:
    la, lb = b.layout(node.args[0]), b.layout(node.args[1])
    if not isinstance(la, Layout) or not isinstance(lb, Layout):
        return b.unknown(node)
    return matmul_layout(b, node, la, lb)


function_rule(torch.matmul, operator.matmul, torch.bmm, torch.mm)(_matmul)
method_rule("matmul", "bmm", "mm")(_matmul)


def _size_like(b: Builder, node: fx.Node, _mod: Any) -> Any:
    return None


function_rule(getattr)(_size_like)
method_rule("size", "dim", "numel", "__len__")(_size_like)
function_rule(len)(_size_like)
