"""Least-squares reweighting as a recovery for any pruned model (AsymInChange's step of
submodular pruning with the selection fixed)."""

from __future__ import annotations

import copy
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from ..graph import ChannelGraph
from ..plan import Plan
from .calibration import Reference, as_batches, grams
from .lsq import is_consumer, set_weight, solve, weight_matrix

__all__ = ["reweight"]


def reweight(original: nn.Module, pruned: nn.Module, plan: Plan, graph: ChannelGraph,
             data: torch.Tensor | Iterable[Any], *, batch_size: int = 128,
             ridge: float = 1e-6, progress: bool = False) -> tuple[nn.Module, list[dict]]:
    """Recovery for any plan: re-solve, in execution order, the weights of every conv/linear
    layer whose input channels the plan removed, so its output on ``data`` matches the
    original network's (AsymInChange's least squares, selection fixed). Returns a reweighted
    copy of ``pruned`` and, per layer, the relative output error before and after."""
    if plan.fingerprint != graph.fingerprint:
        from ..errors import PlanMismatchError
        raise PlanMismatchError("the plan was made for another architecture")
    keep = graph.keep_mask(plan)
    batches = as_batches(data, batch_size)
    original = copy.deepcopy(original).eval()
    out = copy.deepcopy(pruned).eval()
    order = [n for n, _ in original.named_modules()]
    targets = []
    for (fqn, dim), units in graph.slices.items():
        if dim != 1 or not fqn.endswith(".weight") or keep[units].all():
            continue
        name = fqn[: -len(".weight")]
        if is_consumer(original.get_submodule(name)):
            targets.append(name)
    targets.sort(key=order.index)
    ref = Reference(original, targets, batches, cache=True)
    report = []
    it = targets
    if progress:
        from ..progress import bar
        it = bar(targets, desc="reweight", unit="layer")
    for name in it:
        orig_mod, mod = original.get_submodule(name), out.get_submodule(name)
        rows = keep[graph.slices[(f"{name}.weight", 0)]] if (f"{name}.weight", 0) in \
            graph.slices else np.ones(orig_mod.weight.shape[0], dtype=bool)
        W = weight_matrix(orig_mod)[:, torch.as_tensor(np.nonzero(rows)[0])]
        gram = grams(out, {name: mod}, out, batches, ref, {name: W})[name]
        before = gram.rel_err(weight_matrix(mod), W)
        new = solve(gram, W, np.arange(gram.n), ridge)
        set_weight(mod, new)
        report.append({"layer": name, "rel_err_before": before,
                       "rel_err_after": gram.rel_err(new, W)})
    return out, report
