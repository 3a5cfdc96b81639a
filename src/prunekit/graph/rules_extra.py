"""Rules for einsum."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.fx as fx

from .builder import Builder, function_rule
from .layout import Block, Layout


@function_rule(torch.einsum)
def einsum(b: Builder, node: fx.Node, _mod: Any) -> Any:
    """Two-operand einsum without ellipsis: labels align dims; shared labels are unioned."""
    eq = node.args[0]
    ops = list(node.args[1:])
    if len(ops) == 1 and isinstance(ops[0], (tuple, list)):
        ops = list(ops[0])
    lays = [b.layout(o) for o in ops]
    out_shape = b.shape(node)
    if not isinstance(eq, str) or "..." in eq or "->" not in eq or len(lays) != 2 or \
            not all(isinstance(l, Layout) for l in lays) or out_shape is None:
        return b.unknown(node)
    lhs, out_labels = eq.replace(" ", "").split("->")
    in_labels = lhs.split(",")
    ids: dict[str, np.ndarray | None] = {}
    sizes: dict[str, int] = {}
    fixed: set[str] = set()
    for labels, lay in zip(in_labels, lays):
        for d, lab in enumerate(labels):
            sizes[lab] = lay.shape[d]
            blk = lay.block_at(d)
            if blk is not None and len(blk.dims) > 1:
                b.freeze(blk.ids, f"{b.where(node)} contracts a channel block")
                blk = None
            if blk is None:
                if lay.shape[d] > 1:
                    fixed.add(lab)
                continue
            if ids.get(lab) is None:
                ids[lab] = blk.ids
            else:
                b.uf.union_arrays(ids[lab], blk.ids)
    for lab in fixed:
        if ids.get(lab) is not None:
            b.freeze(ids[lab], f"{b.where(node)} aligns channels with an operand of fixed size")
    labels = sorted(sizes)
    every = all(sum(lab in s for s in in_labels + [out_labels]) >= 2 for lab in labels)
    if every and node.meta.get("pk_flops") == 0:
        pass  # no label is summed: PyTorch runs it as a broadcast product, no matmul cost
    elif every:
        coeff = int(np.prod([sizes[l] for l in labels if ids.get(l) is None]))
        b.macs(coeff, [ids[l] for l in labels if ids.get(l) is not None], b.where(node))
    else:
        b.freeze_layout(lays, f"{b.where(node)} is an einsum with a one-sided sum")
    blocks = [Block((d,), ids[lab]) for d, lab in enumerate(out_labels) if ids.get(lab) is not None]
    return Layout(out_shape, tuple(blocks))
