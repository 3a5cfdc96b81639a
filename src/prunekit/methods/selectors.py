"""Baseline channel scores for submodular pruning's harness (``selector``): the norm of
each unit's outgoing consumer weights, and |activation x gradient| at the consumer input
with the network's own predictions as labels (no labels needed)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .consumers import GroupInfo
from .lsq import weight_matrix

__all__ = ["actgrad_scores", "weightnorm_scores"]


def weightnorm_scores(model: nn.Module, info: GroupInfo, width: int) -> np.ndarray:
    """Per unit, the summed norm of its outgoing consumer weights."""
    score = np.zeros(width)
    for c in info.consumers:
        W = weight_matrix(model.get_submodule(c.name))
        for u, cols in enumerate(c.unit_cols(width)):
            if len(cols):
                score[u] += float(W[torch.as_tensor(cols)].norm())
    return score


def actgrad_scores(model: nn.Module, infos: list[GroupInfo], widths: dict[str, int],
             batches: list[torch.Tensor]) -> dict[str, np.ndarray]:
    """sum over consumers of mean_images |sum_positions a * dL/da| per unit, where L is the
    cross-entropy against the model's own prediction (no labels needed)."""
    names = sorted({c.name for i in infos for c in i.consumers})
    acts: dict[str, torch.Tensor] = {}
    per: dict[str, torch.Tensor] = {n: 0 for n in names}

    def hook(name: str):
        def fn(_m, args):
            args[0].retain_grad()
            acts[name] = args[0]
        return fn
    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    was = model.training
    model.eval()
    try:
        for x in batches:
            x = x.clone().requires_grad_(True)
            out = model(x)
            loss = F.cross_entropy(out, out.argmax(1).detach(), reduction="sum")
            model.zero_grad(set_to_none=True)
            loss.backward()
            for n in names:
                a = acts[n]
                ag = (a * a.grad) if a.grad is not None else torch.zeros_like(a)
                red = ag.flatten(2).sum(2) if ag.dim() > 2 else ag
                per[n] = per[n] + red.abs().sum(0).detach()
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
        model.train(was)
    out: dict[str, np.ndarray] = {}
    for info in infos:
        score = np.zeros(widths[info.gid])
        for c in info.consumers:
            per_ch = per[c.name].double().numpy()        # one value per input channel
            ch_unit = c.col_unit[:: c.taps]
            for u in range(len(score)):
                score[u] += per_ch[ch_unit == u].sum()
        out[info.gid] = score
    return out

