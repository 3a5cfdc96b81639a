"""Channel identities of tensors: elements, union-find, and per-tensor layouts.

Every channel that a producer creates (a conv's output channel, a dimension of
a free parameter, a zero channel inserted by a pad) is an *element* with an
integer id. Ops that couple channels union their elements; the union-find
classes at the end are the *units* a plan keeps or removes. A tensor's layout
records, for the dimensions that carry channel identity ("tracked" dims), the
element id at every position; other dims are untracked (their size never
changes under any plan).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class UnionFind:
    """Union-find over integer element ids, with path halving."""

    def __init__(self) -> None:
        self.parent: list[int] = []

    def make(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra < rb:
                self.parent[rb] = ra
            else:
                self.parent[ra] = rb

    def union_arrays(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.ravel().tolist(), b.ravel().tolist()):
            if x != y:
                self.union(x, y)

    def union_all(self, ids: np.ndarray) -> None:
        flat = ids.ravel().tolist()
        for y in flat[1:]:
            self.union(flat[0], y)

    def constant_along(self, ids: np.ndarray, axis: int) -> bool:
        """True when every line of ``ids`` along ``axis`` is one unit (whole units span it,
        so that axis never changes size); an empty array is trivially so."""
        if ids.size == 0:
            return True
        roots = self.roots(ids)
        return bool((roots == np.take(roots, [0], axis=axis)).all())

    def roots(self, ids: np.ndarray) -> np.ndarray:
        find = self.find
        return np.fromiter((find(x) for x in ids.ravel().tolist()), dtype=np.int64,
                           count=ids.size).reshape(ids.shape)


@dataclass(frozen=True)
class Block:
    """Element ids over one or more tensor dims (``ids.shape`` = those dims' sizes)."""

    dims: tuple[int, ...]
    ids: np.ndarray

    def moved(self, mapping: dict[int, int]) -> "Block":
        return Block(tuple(mapping[d] for d in self.dims), self.ids)


@dataclass(frozen=True)
class Layout:
    """Which dims of a tensor carry channel identity, and the element at every position."""

    shape: tuple[int, ...]
    blocks: tuple[Block, ...] = field(default_factory=tuple)

    def block_at(self, dim: int) -> Block | None:
        dim = dim % len(self.shape) if self.shape else dim
        for b in self.blocks:
            if dim in b.dims:
                return b
        return None

    def ids_1d(self, dim: int) -> np.ndarray | None:
        """Element ids along ``dim`` if it is tracked by a one-dim block, else None."""
        b = self.block_at(dim)
        if b is None or len(b.dims) != 1:
            return None
        return b.ids

    @property
    def tracked(self) -> bool:
        return bool(self.blocks)

    def all_ids(self) -> list[np.ndarray]:
        return [b.ids for b in self.blocks]


def untracked(shape: tuple[int, ...]) -> Layout:
    return Layout(tuple(shape), ())


def materialize(block: Block, dims: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    """Broadcast a block's ids over ``dims`` (sorted), sizes taken from ``shape``."""
    order = sorted(block.dims)
    ids = np.transpose(block.ids, [block.dims.index(d) for d in order])
    view_shape = [shape[d] if d in order else 1 for d in dims]
    ids = ids.reshape(view_shape)
    return np.broadcast_to(ids, [shape[d] for d in dims])
