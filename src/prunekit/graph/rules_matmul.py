"""Batched matmul over heads: ``q @ k.transpose(-2, -1)`` and ``attn @ v`` written by hand.

Eager attention (Hugging Face's ``eager`` path, timm blocks without fused
attention) multiplies ``(..., heads, tokens, head size)`` tensors. Heads are
batch dims whose units span the head size (a reshape with a constant head size
made them), so a head is removed whole: the operands' heads are coupled, the
contracted head size never changes, and the product keeps the heads. Anything
else along a batch dim is frozen.
"""

from __future__ import annotations

import numpy as np
import torch.fx as fx

from .builder import Builder
from .layout import Block, Layout, materialize
from .rules_index import spans


def _heads(b: Builder, node: fx.Node, lay: Layout, inner: tuple[int, int], off: int):
    """(out batch dims, head ids) of an operand's block over batch dims, or None.

    ``inner`` = (own dim, contracted dim) among the last two; the block must span
    every inner dim it covers."""
    nd = len(lay.shape)
    blk = next((x for x in lay.blocks if set(x.dims) & set(range(nd - 2))), None)
    if blk is None:
        return None
    batch = tuple(d for d in blk.dims if d < nd - 2)
    extra = [d for d in blk.dims if d >= nd - 2]
    if not all(spans(b, blk, blk.dims.index(d)) for d in extra):
        b.freeze(blk.ids, f"{b.where(node)} multiplies along a channel block")
        return None
    full = materialize(blk, tuple(sorted(blk.dims)), lay.shape)
    for d in sorted(extra, reverse=True):
        full = np.take(full, 0, axis=sorted(blk.dims).index(d))
    return tuple(d + off for d in batch), full


def batched_matmul(b: Builder, node: fx.Node, la: Layout, lb: Layout) -> Layout | None:
    """The rule for matmuls with blocks over batch dims; None where it does not apply."""
    out_shape = b.shape(node)
    na, nb, no = len(la.shape), len(lb.shape), len(out_shape)
    if na < 3 and nb < 3:
        return None
    ha = _heads(b, node, la, (na - 2, na - 1), no - na)
    hb = _heads(b, node, lb, (nb - 1, nb - 2), no - nb)
    if ha is None and hb is None:
        return None
    for mine, lay, off in ((ha, lb, no - nb), (hb, la, no - na)):
        other = hb if mine is ha else ha
        if mine is None or other is not None:
            continue
        if any(lay.shape[d - off] > 1 for d in mine[0] if d - off >= 0):
            b.freeze(mine[1], f"{b.where(node)} multiplies heads with an operand of fixed size")
    if ha is not None and hb is not None:
        if ha[0] != hb[0] or ha[1].shape != hb[1].shape:
            b.freeze(ha[1], f"{b.where(node)} multiplies heads it cannot align")
            b.freeze(hb[1], f"{b.where(node)} multiplies heads it cannot align")
        else:
            b.uf.union_arrays(ha[1], np.ascontiguousarray(hb[1]))
    dims, heads = ha if ha is not None else hb
    rows = la.ids_1d(na - 2) if la.block_at(na - 2) is not None and \
        la.block_at(na - 2).dims == (na - 2,) else None
    cols = lb.ids_1d(nb - 1) if lb.block_at(nb - 1) is not None and \
        lb.block_at(nb - 1).dims == (nb - 1,) else None
    for lay, d in ((la, na - 1), (lb, nb - 2)):   # a per-channel contraction beside heads
        blk = lay.block_at(d)
        if blk is not None and blk.dims == (d,):
            b.freeze(blk.ids, f"{b.where(node)} contracts channels beside heads")
    coeff = int(np.prod([s for d, s in enumerate(out_shape[:-2]) if d not in dims]))
    coeff *= (out_shape[-2] if rows is None else 1) * (out_shape[-1] if cols is None else 1)
    coeff *= la.shape[-1]
    b.macs(coeff, [heads.ravel(), rows, cols], b.where(node))
    blocks = [Block(dims, heads)]
    if rows is not None:
        blocks.append(Block((no - 2,), rows))
    if cols is not None:
        blocks.append(Block((no - 1,), cols))
    return Layout(out_shape, tuple(blocks))
