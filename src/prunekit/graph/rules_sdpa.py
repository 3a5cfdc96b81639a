"""Rule for ``F.scaled_dot_product_attention`` (hand-written attention: timm, Hugging Face).

Queries, keys and values are ``(..., heads, tokens, features)``. Heads are the
batch dims the reshape before the call made: when a projection's channels were
split into (heads, head size) with a constant head size, each head is one unit
spanning its features, and heads prune whole. Query head ``i`` attends with
key/value head ``i // (Hq / Hk)`` under grouped-query attention
(``enable_gqa=True``), so a key/value head goes with its query group. A feature
dim that is not inside whole heads is contracted channel by channel only when
the call gives an explicit ``scale`` (the default scale reads the width).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch.fx as fx
import torch.nn.functional as F

from .builder import Builder, function_rule
from .layout import Block, Layout, materialize
from .rules_index import spans
from .rules_shape import merge_elementwise

_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def _arg(node: fx.Node, name: str, default: Any = None) -> Any:
    i = _ARGS.index(name)
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


def _block(b: Builder, node: fx.Node, lay: Layout, nd: int) -> Block | None:
    """The operand's one block over (head dims, features); tokens must be untracked."""
    for blk in lay.blocks:
        if nd - 2 in blk.dims:
            b.freeze(blk.ids, f"{b.where(node)} attends over a channel-tracked dim")
    blocks = [blk for blk in lay.blocks if nd - 2 not in blk.dims]
    if len(blocks) > 1:
        for blk in blocks:
            b.freeze(blk.ids, f"{b.where(node)} attends over several channel blocks")
        return None
    return blocks[0] if blocks else None


def _heads(b: Builder, blk: Block | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """Unit ids per head position (features spanned), over all head dims; None if untracked."""
    nd = len(shape)
    if blk is None or not set(blk.dims) & set(range(nd - 2)):
        return None
    full = materialize(blk, tuple(sorted(blk.dims)), shape)
    return full[..., 0] if nd - 1 in blk.dims else full


def _head_dims(blk: Block | None, nd: int) -> tuple[int, ...]:
    return tuple(sorted(set(blk.dims) & set(range(nd - 2)))) if blk is not None else ()


@function_rule(F.scaled_dot_product_attention)
def sdpa(b: Builder, node: fx.Node, _mod: Any) -> Any:
    lays = [b.layout(_arg(node, n)) for n in ("query", "key", "value")]
    out_shape = b.shape(node)
    if not all(isinstance(l, Layout) for l in lays) or out_shape is None or \
            len({len(l.shape) for l in lays}) != 1 or len(lays[0].shape) < 3:
        return b.unknown(node)
    lq, lk, lv = lays
    nd = len(lq.shape)
    blocks = [_block(b, node, lay, nd) for lay in lays]
    for blk, lay in zip(blocks, lays):   # features inside whole heads, or contracted one by one
        if blk is not None and nd - 1 in blk.dims and len(blk.dims) > 1 and \
                not spans(b, blk, blk.dims.index(nd - 1)):
            b.freeze(blk.ids, f"{b.where(node)} splits a head's features")
    _contract(b, node, blocks[0], blocks[1], lq, lk)
    heads = [_heads(b, blk, lay.shape) for blk, lay in zip(blocks, lays)]
    rep = lq.shape[nd - 3] // max(lk.shape[nd - 3], 1) if nd >= 3 else 1
    if lk.shape[nd - 3] == 1 and lv.shape[nd - 3] == 1:
        rep = 1   # multi-query: one key/value head broadcast to every query head
    elif rep > 1 and not _arg(node, "enable_gqa", False):
        return b.unknown(node)
    hdims = [_head_dims(blk, nd) for blk in blocks]
    if len({h for h in hdims if h}) > 1:
        for blk in blocks:
            if blk is not None:
                b.freeze(blk.ids, f"{b.where(node)} has heads along different dims")
        heads = [None, None, None]
    _couple_heads(b, node, heads, rep, lq, lk)
    if heads[0] is not None and b.mode == "eval":   # query / key heads, for head counts
        b.attention.append((heads[0].ravel(), heads[1].ravel() if heads[1] is not None
                            else None))
    _mask(b, node, heads[0], nd, hdims[0] if heads[0] is not None else ())
    _cost(b, node, blocks, lays, heads[0], hdims[0] if heads[0] is not None else ())
    vblk = blocks[2]
    if vblk is not None and heads[0] is not None and nd - 3 not in vblk.dims and \
            _all_frozen(b, vblk.ids):
        vblk = None   # one shared value head of fixed size (multi-query): heads carry the output
    parts = []
    if vblk is not None:
        ids = np.repeat(vblk.ids, rep, axis=vblk.dims.index(nd - 3)) if rep > 1 and \
            nd - 3 in vblk.dims else vblk.ids
        parts.append(Layout(out_shape, (Block(vblk.dims, ids),)))
    if heads[0] is not None:
        parts.append(Layout(out_shape[:-2] + (1, 1), (Block(hdims[0], heads[0]),)))
    if not parts:
        return Layout(out_shape, ())
    return merge_elementwise(b, node, parts, fixed_ok=tuple(parts), out_shape=out_shape)


def _all_frozen(b: Builder, ids: np.ndarray) -> bool:
    frozen = set(b.uf.roots(np.fromiter(b.reasons, dtype=np.int64)).tolist()) if b.reasons \
        else set()
    return bool(ids.size) and set(b.uf.roots(ids).ravel().tolist()) <= frozen


def _contract(b: Builder, node: fx.Node, bq: Block | None, bk: Block | None, lq: Layout,
              lk: Layout) -> None:
    nd = len(lq.shape)
    q1 = lq.ids_1d(nd - 1) if bq is not None and bq.dims == (nd - 1,) else None
    k1 = lk.ids_1d(nd - 1) if bk is not None and bk.dims == (nd - 1,) else None
    if q1 is None and k1 is None:
        return
    if q1 is not None and k1 is not None and _arg(node, "scale") is not None:
        b.uf.union_arrays(q1, k1)
        return
    why = "contracts channels with the default scale (it reads the width)" if \
        _arg(node, "scale") is None else "contracts channels with an operand of fixed size"
    for ids in (q1, k1):
        if ids is not None:
            b.freeze(ids, f"{b.where(node)} {why}")


def _couple_heads(b: Builder, node: fx.Node, heads: list, rep: int, lq: Layout,
                  lk: Layout) -> None:
    hq, hk, hv = heads
    kv = [h for h in (hk, hv) if h is not None]
    if hk is not None and hv is not None and hk.shape == hv.shape:
        b.uf.union_arrays(hk, hv)
    if hq is None and not kv:
        return
    if hq is not None and not kv and lk.shape[-3] == 1:
        return    # a broadcast key/value head: query heads are independent
    if hq is None or len(kv) < 2:
        for h in [hq] + kv:
            if h is not None:
                b.freeze(h, f"{b.where(node)} attends between heads and a fixed-size operand")
        return
    expanded = np.repeat(hk, rep, axis=-1) if rep > 1 else hk
    if expanded.shape != hq.shape:
        b.freeze(hq, f"{b.where(node)} has heads it cannot align")
        b.freeze(hk, f"{b.where(node)} has heads it cannot align")
        return
    b.uf.union_arrays(hq, np.ascontiguousarray(expanded))


def _mask(b: Builder, node: fx.Node, hq: np.ndarray | None, nd: int,
          hdims: tuple[int, ...] = ()) -> None:
    """A mask's channels freeze, except a per-head mask's head dim (a relative-position
    bias gathered per head), which goes with the query heads."""
    lm = b.layout(_arg(node, "attn_mask"))
    if not isinstance(lm, Layout):
        return
    off = nd - len(lm.shape)
    covered: set[int] = set()
    for blk in lm.blocks:
        mine = tuple(d + off for d in blk.dims)
        if hq is not None and mine == hdims and blk.ids.shape == hq.shape:
            b.uf.union_arrays(blk.ids, hq)
            covered.update(mine)
        else:
            b.freeze(blk.ids, f"{b.where(node)} uses channels as an attention mask")
    if hq is not None and any(lm.shape[d - off] > 1 for d in range(max(off, 0), nd - 2)
                              if d not in covered):
        b.freeze(hq, f"{b.where(node)} has a per-head mask of fixed size")


def _cost(b: Builder, node: fx.Node, blocks: list, lays: list[Layout], heads: np.ndarray | None,
          hdims: tuple[int, ...]) -> None:
    """FlopCounterMode counts two batched matmuls, q @ k^T and attn @ v, over the query
    heads: kept query heads times the kept features a per-channel contraction leaves."""
    lq, lk, lv = lays
    nd = len(lq.shape)
    seq = lq.shape[nd - 2] * lk.shape[nd - 2]
    batch = int(np.prod([lq.shape[d] for d in range(nd - 2) if d not in hdims]))
    for blk, lay in ((blocks[0], lq), (blocks[2], lv)):
        feat = blk.ids if blk is not None and blk.dims == (nd - 1,) else None
        coeff = seq * batch * (lay.shape[nd - 1] if feat is None else 1)
        if heads is None:
            coeff *= int(np.prod([lq.shape[d] for d in hdims]))
        b.macs(coeff, [None if heads is None else heads.ravel(), feat], b.where(node))
