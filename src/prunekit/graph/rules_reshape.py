"""Rules for reshapes (view, reshape, flatten, unflatten), permutes and transposes,
expand and repeat."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.fx as fx

from .builder import Builder, function_rule, method_rule, module_rule
from .layout import Block, Layout, materialize, untracked
from .record import is_computed, tensor_attr
from .rules_shape import merge_elementwise


# -------------------------------------------------------------------- reshape
def _size_args(node: fx.Node) -> list[Any]:
    args = list(node.args[1:])
    if "shape" in node.kwargs:
        args = [node.kwargs["shape"]]
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = list(args[0])
    return args


def reshape_layout(b: Builder, node: fx.Node, lay: Layout, out_shape: tuple[int, ...],
                   const: list[bool]) -> Layout:
    """General reshape: dims regroup by products; constant output sizes must not change."""
    in_shape = lay.shape
    for blk in lay.blocks:
        if any(in_shape[d] == 1 for d in blk.dims):
            b.freeze(blk.ids, f"{b.where(node)} reshapes a single channel")
    blocks = [blk for blk in lay.blocks if all(in_shape[d] > 1 for d in blk.dims)]
    if not blocks:
        return untracked(out_shape)
    groups = _regroup(in_shape, out_shape)
    if groups is None:
        for blk in blocks:
            b.freeze(blk.ids, f"{b.where(node)} is a reshape prunekit cannot follow")
        return untracked(out_shape)
    # clusters: groups that one block spans (not necessarily adjacent)
    owner = list(range(len(groups)))
    for blk in blocks:
        hit = [k for k, (gi, _) in enumerate(groups) if set(blk.dims) & set(gi)]
        root = min(owner[k] for k in hit)
        for k in range(len(groups)):
            if owner[k] in {owner[h] for h in hit}:
                owner[k] = root
    out_blocks = []
    for root in sorted(set(owner)):
        members = [k for k in range(len(groups)) if owner[k] == root]
        gi = [d for k in members for d in groups[k][0]]
        go = [d for k in members for d in groups[k][1]]
        inside = [blk for blk in blocks if set(blk.dims) & set(gi)]
        if not inside:
            continue
        full = np.ascontiguousarray(materialize(inside[0], tuple(gi), in_shape))
        for other in inside[1:]:
            b.uf.union_arrays(full, materialize(other, tuple(gi), in_shape))
        full = full.reshape([out_shape[d] for d in go])
        for k in members:
            _check_group(b, node, full, [go.index(d) for d in groups[k][1]], groups[k][1],
                         const)
        out_blocks.append(Block(tuple(go), full))
    return Layout(out_shape, tuple(out_blocks))


def _check_group(b: Builder, node: fx.Node, full: np.ndarray, axes: list[int], go: list[int],
                 const: list[bool]) -> None:
    """One regrouped set of dims: its size change goes to its one computed output size."""
    if all(b.uf.constant_along(full, a) for a in axes):
        return  # inside whole units: these dims never change size
    free = [a for a, d in zip(axes, go) if not const[d]]
    if len(free) != 1:
        b.freeze(full, f"{b.where(node)} gives a channel dim a constant size"
                 if not free else f"{b.where(node)} splits channels into several computed sizes")
    if len(go) > 1:
        for a, d in zip(axes, go):
            if const[d]:
                moved = np.moveaxis(full, a, 0).reshape(full.shape[a], -1)
                for col in range(moved.shape[1]):
                    b.uf.union_all(moved[:, col])


def _regroup(a: tuple[int, ...], c: tuple[int, ...]) -> list[tuple[list[int], list[int]]] | None:
    ia = [d for d, s in enumerate(a) if s != 1]
    ic = [d for d, s in enumerate(c) if s != 1]
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(ia) and j < len(ic):
        gi, go = [ia[i]], [ic[j]]
        pa, pc = a[ia[i]], c[ic[j]]
        i, j = i + 1, j + 1
        while pa != pc:
            if pa < pc:
                if i >= len(ia):
                    return None
                gi.append(ia[i]); pa *= a[ia[i]]; i += 1
            else:
                if j >= len(ic):
                    return None
                go.append(ic[j]); pc *= c[ic[j]]; j += 1
        groups.append((gi, go))
    if i != len(ia) or j != len(ic):
        return None
    return groups


def _view(b: Builder, node: fx.Node, _mod: Any) -> Any:
    lay = b.layout(node.args[0])
    out_shape = b.shape(node)
    if not isinstance(lay, Layout) or out_shape is None:
        return b.unknown(node)
    sizes = _size_args(node)
    if len(sizes) != len(out_shape):
        sizes = [None] * len(out_shape)
    const = [isinstance(s, int) and not is_computed(s) and s != -1 for s in sizes]
    attrs = _one_attribute_per_group(_declared_sizes(b, node, sizes, const), lay.shape,
                                     out_shape, const)
    for d in attrs:
        const[d] = False          # a declared attribute: surgery sets it to the kept size
    out = reshape_layout(b, node, lay, out_shape, const)
    check_size_sources(b, node, out, sizes)
    for d, (owner, attr, index) in attrs.items():
        blk = out.block_at(d)
        if blk is None:
            continue
        ax = blk.dims.index(d)
        line = np.moveaxis(blk.ids, ax, 0).reshape(blk.ids.shape[ax], -1)[:, 0]
        b.follow(owner, attr, line, index)
    return out


def _declared_sizes(b: Builder, node: fx.Node, sizes: list[Any],
                    const: list[bool]) -> dict[int, tuple[str, str, int | None]]:
    """Constant sizes read from a layer's attributes (``reshape(B, N, 3, self.num_heads,
    self.head_dim)``), known by their origin. Where no size of the call has an origin
    (a ``torch.Size`` sum erased it), an attribute declared with ``size_attributes`` on
    the module running the call is matched by value, only where exactly one constant of
    the call has that value, so a literal is never mistaken for it."""
    from .attrs import declared, declared_by_value
    from .trace import module_stack
    out = {d: declared(s) for d, (s, c) in enumerate(zip(sizes, const))
           if c and declared(s) is not None}
    stack = module_stack(node)
    if out or not stack:
        return out
    owner = stack[-1]
    mod = b.root.get_submodule(owner)
    values = [s for s, c in zip(sizes, const) if c]
    for d, (s, c) in enumerate(zip(sizes, const)):
        if c and values.count(s) == 1:
            attr = declared_by_value(mod, s)
            if attr is not None:
                out[d] = (owner, attr, None)
    return out


def _one_attribute_per_group(attrs: dict[int, tuple], in_shape: tuple[int, ...],
                             out_shape: tuple[int, ...], const: list[bool]
                             ) -> dict[int, tuple]:
    """Where one channel dim splits into several sizes, one of them may follow the
    pruning: a size the code computes (``-1``, ``C // heads``) if there is one, else the
    outermost attribute (``self.num_heads`` before ``self.head_dim``: whole heads go); the
    other attributes stay as they are."""
    groups = _regroup(in_shape, out_shape) if attrs else None
    if not groups:
        return attrs
    out = dict(attrs)
    for _, go in groups:
        mine = [d for d in go if d in attrs]
        computed = any(not const[d] for d in go if d not in attrs)
        for d in (mine if computed else mine[1:]):
            out.pop(d)
    return out


def check_size_sources(b: Builder, node: fx.Node, out: Layout, sizes: list[Any]) -> None:
    """A size read from another tensor's channel dim ties this dim to that tensor's group.

    ``reshape(B, N, C)`` with ``C`` read from the block's input while the tensor
    reshaped is an attention's inner width: pruning one without the other would break
    the reshape. Where both are single channel dims of one size, position ``i`` of one is
    coupled with position ``i`` of the other (every unit then holds as many of each, so
    the two widths stay equal); otherwise both freeze.
    """
    for d, s in enumerate(sizes):
        if not is_computed(s):
            continue
        srcs = b.size_sources(s)
        for src, sd in srcs or ():
            slay = b.layout(src)
            if not isinstance(slay, Layout) or not slay.shape:
                continue
            sblk = slay.block_at(sd % len(slay.shape))
            if sblk is None:
                continue
            mine = out.block_at(d)
            if mine is not None and mine.ids.size == sblk.ids.size and np.array_equal(
                    np.sort(mine.ids, axis=None), np.sort(sblk.ids, axis=None)):
                continue   # the very channels the size was read from (a shuffle): it follows
            theirs = set(b.uf.roots(sblk.ids).ravel().tolist())
            if mine is not None and mine.dims == (d,) and len(sblk.dims) == 1 and \
                    mine.ids.shape == sblk.ids.shape:
                b.uf.union_arrays(mine.ids, sblk.ids)
                continue
            if mine is None or not theirs <= set(b.uf.roots(mine.ids).ravel().tolist()):
                b.freeze(sblk.ids, f"{b.where(node)} reshapes to a size read from another "
                         "tensor's channels")
                if mine is not None:
                    b.freeze(mine.ids, f"{b.where(node)} reshapes to a size read from another "
                             "tensor's channels")


def _implicit_reshape(b: Builder, node: fx.Node, _mod: Any) -> Any:
    """flatten / squeeze / unsqueeze / view_as: sizes follow the input."""
    lay = b.layout(node.args[0])
    out_shape = b.shape(node)
    if not isinstance(lay, Layout) or out_shape is None:
        return b.unknown(node)
    return reshape_layout(b, node, lay, out_shape, [False] * len(out_shape))


def _unflatten(b: Builder, node: fx.Node, _mod: Any) -> Any:
    lay = b.layout(node.args[0])
    out_shape = b.shape(node)
    if not isinstance(lay, Layout) or out_shape is None:
        return b.unknown(node)
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    sizes = node.args[2] if len(node.args) > 2 else node.kwargs.get("sizes")
    dim = dim % len(lay.shape)
    const = [False] * len(out_shape)
    for k, s in enumerate(sizes):
        const[dim + k] = isinstance(s, int) and not is_computed(s) and s != -1
    return reshape_layout(b, node, lay, out_shape, const)


function_rule(torch.reshape)(_view)
method_rule("view", "reshape")(_view)
function_rule(torch.flatten, torch.squeeze, torch.unsqueeze)(_implicit_reshape)
method_rule("flatten", "squeeze", "unsqueeze", "view_as", "reshape_as")(_implicit_reshape)
module_rule(torch.nn.Flatten)(_implicit_reshape)
function_rule(torch.unflatten)(_unflatten)
method_rule("unflatten")(_unflatten)


def _unflatten_module(b: Builder, node: fx.Node, mod: torch.nn.Unflatten) -> Any:
    lay = b.layout(node.args[0])
    out_shape = b.shape(node)
    if not isinstance(lay, Layout) or out_shape is None:
        return b.unknown(node)
    dim = mod.dim % len(lay.shape)
    const = [False] * len(out_shape)
    for k in range(len(mod.unflattened_size)):
        const[dim + k] = True
    const[dim] = False if len(mod.unflattened_size) else const[dim]
    return reshape_layout(b, node, lay, out_shape, const)


module_rule(torch.nn.Unflatten)(_unflatten_module)


# -------------------------------------------------------------------- permute
def permute_layout(lay: Layout, perm: list[int]) -> Layout:
    nd = len(lay.shape)
    perm = [p % nd for p in perm]
    inv = {old: new for new, old in enumerate(perm)}
    return Layout(tuple(lay.shape[p] for p in perm), tuple(blk.moved(inv) for blk in lay.blocks))


def _permute(b: Builder, node: fx.Node, _mod: Any) -> Any:
    lay = b.layout(node.args[0])
    if not isinstance(lay, Layout):
        return b.unknown(node)
    perm = node.args[1:] if len(node.args) > 1 else node.kwargs.get("dims")
    if len(perm) == 1 and isinstance(perm[0], (tuple, list)):
        perm = perm[0]
    return permute_layout(lay, list(perm))


def _transpose(b: Builder, node: fx.Node, _mod: Any) -> Any:
    lay = b.layout(node.args[0])
    if not isinstance(lay, Layout):
        return b.unknown(node)
    nd = len(lay.shape)
    if node.target in ("t",) or node.target is torch.t:
        d0, d1 = 0, nd - 1
    else:
        d0 = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim0")
        d1 = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim1")
    perm = list(range(nd))
    perm[d0 % nd], perm[d1 % nd] = perm[d1 % nd], perm[d0 % nd]
    return permute_layout(lay, perm)


def _movedim(b: Builder, node: fx.Node, _mod: Any) -> Any:
    lay = b.layout(node.args[0])
    if not isinstance(lay, Layout):
        return b.unknown(node)
    nd = len(lay.shape)
    src, dst = node.args[1], node.args[2]
    src = [src] if isinstance(src, int) else list(src)
    dst = [dst] if isinstance(dst, int) else list(dst)
    perm = list(np.moveaxis(np.arange(nd), [s % nd for s in src], [d % nd for d in dst]))
    return permute_layout(lay, [int(p) for p in perm])


def _tensor_attr(b: Builder, node: fx.Node, _mod: Any) -> Any:
    """``x.T`` / ``x.mT`` (transposes) and ``x.data`` (the same tensor), from a recording."""
    lay = b.layout(node.args[0])
    name = node.args[1]
    if not isinstance(lay, Layout) or name not in ("T", "mT", "data"):
        return b.unknown(node)
    nd = len(lay.shape)
    if name == "data":
        return lay
    perm = list(range(nd))[::-1] if name == "T" else list(range(nd - 2)) + [nd - 1, nd - 2]
    return permute_layout(lay, perm)


function_rule(tensor_attr)(_tensor_attr)
function_rule(torch.permute)(_permute)
method_rule("permute")(_permute)
function_rule(torch.transpose, torch.swapaxes, torch.t)(_transpose)
method_rule("transpose", "swapaxes", "t")(_transpose)
function_rule(torch.movedim, torch.moveaxis)(_movedim)
method_rule("movedim", "moveaxis")(_movedim)


def _input_and_shape(b: Builder, node: fx.Node) -> tuple[Layout | None, Any]:
    """The first argument's layout and the output's shape, (None, None) unless both known."""
    lay, out_shape = b.layout(node.args[0]), b.shape(node)
    return (lay, out_shape) if isinstance(lay, Layout) and out_shape is not None else \
        (None, None)


def _expand(b: Builder, node: fx.Node, _mod: Any) -> Any:
    lay, _ = _input_and_shape(b, node)
    return b.unknown(node) if lay is None else merge_elementwise(b, node, [lay])


method_rule("expand", "expand_as")(_expand)


def _repeat(b: Builder, node: fx.Node, _mod: Any) -> Any:
    lay, out_shape = _input_and_shape(b, node)
    if lay is None:
        return b.unknown(node)
    off = len(out_shape) - len(lay.shape)
    blocks = []
    for blk in lay.blocks:
        if any(out_shape[d + off] != lay.shape[d] for d in blk.dims):
            b.freeze(blk.ids, f"{b.where(node)} repeats along a channel dim")
        else:
            blocks.append(Block(tuple(d + off for d in blk.dims), blk.ids))
    return Layout(out_shape, tuple(blocks))


method_rule("repeat")(_repeat)
