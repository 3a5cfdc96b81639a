"""Turn per-unit scores into a Plan that meets a cost target (fraction of MACs, params or
predicted latency).

Shared by every method that ranks channels. Three allocations:

- ``uniform``: the same removal fraction r of every prunable group; r is found by
  bisection on the analytic cost.
- ``global``: units ranked across groups by score divided by their group's mean
  score; the k lowest go, k found by bisection.
- ``marginal``: greedy over the groups' marginal cost (HALP's rule for a latency
  budget, any metric): each step removes the next ``step`` units of the group whose
  importance per unit of cost saved is lowest (scores over the group's mean, times the
  number of weight tensors the group couples: a unit removes a slice of each), the
  cost saved measured on the budget's own cost (predicted latency, MACs or params) at
  the current widths; the sequence stops once the budget is met, then the projector
  bisects and fills back.

All are projected onto the budget by :class:`~prunekit.methods.projector.Projector`
(bisection, rounding, minimum width, fill-back), so the result lands within the
tolerance whenever channel granularity allows it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import TargetError
from ..graph import ChannelGraph, Cost
from ..plan import Plan

METRICS = ("macs", "params", "latency")
ALLOCATIONS = ("uniform", "global", "marginal")
SCOPES = ("network", "groups")


@dataclass(frozen=True)
class Budget:
    target: float              # fraction of the original cost to keep
    metric: str = "macs"
    round_to: int = 1
    min_width: int = 1
    tolerance: float = 0.01    # relative: the plan keeps at most target * (1 + tolerance)
    scope: str = "network"     # "groups": the target counts only the layers pruned groups touch
    # metric "latency": the prunekit.latency.LatencyModel whose prediction is the cost
    latency: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise TargetError(f"scope must be one of {SCOPES}, got {self.scope!r}")
        if not isinstance(self.target, (int, float)) or not 0.0 < self.target <= 1.0:
            raise TargetError(f"target must be a fraction of the original cost in (0, 1], "
                              f"got {self.target!r}")
        if self.metric not in METRICS:
            raise TargetError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if self.round_to < 1 or self.min_width < 1:
            raise TargetError("round_to and min_width must be >= 1")
        if self.metric == "latency" and self.scope != "network":
            raise TargetError("a latency target counts the whole network (scope='network')")

    def require_latency(self) -> Any:
        """The latency model a ``metric="latency"`` budget is measured with."""
        if self.latency is None:
            raise TargetError("metric 'latency' needs a latency model of the target machine "
                              "(prunekit.latency.LatencyModel; on the command line "
                              "--device/--backend/--batch/--threads build it)")
        return self.latency


def metric_value(cost: Cost, metric: str) -> int:
    """``cost``'s MACs or params, as ``metric`` ("macs" | "params") says (latency is not
    a function of the analytic cost: a :class:`Budget` measures it with its model)."""
    if metric == "latency":
        raise TargetError("metric 'latency' is measured by a latency model, not by MACs or "
                          "params; this code path takes macs or params")
    return cost.macs if metric == "macs" else cost.params


def allocate(graph: ChannelGraph, scores: np.ndarray, budget: Budget, allocation: str,
             meta: dict | None = None, group_ids: set[str] | None = None) -> Plan:
    """A plan over the prunable groups (or only ``group_ids``) that meets ``budget``."""
    from .projector import Projector
    if allocation not in ALLOCATIONS:
        raise TargetError(f"allocation must be one of {ALLOCATIONS}, got {allocation!r}")
    pj = Projector(graph, budget, scores, group_ids)
    order = []   # per group: prunable local indices, least important first
    for g in pj.groups:
        idx = np.nonzero(g.prunable)[0]
        order.append(idx[np.argsort(scores[g.units[idx]], kind="stable")])
    if allocation == "uniform":
        keep = pj.project(lambda t: pj.removal_mask(
            order, [int(np.floor(t * len(o))) for o in order]), steps=24)
    else:
        owners = _global_order(pj, order, scores) if allocation == "global" else \
            _marginal_order(pj, order, scores)
        keep = pj.project(lambda k: pj.removal_mask(
            order, np.bincount(owners[: int(k)], minlength=len(order)).tolist()),
            0, len(owners), integer=True)
    if budget.metric == "latency" and budget.round_to == 1:   # widths from the staircase
        keep = pj.fill(budget.latency.round_widths(keep, pj.groups, pj.priority,
                                                   fits=pj.fits))
    info = {"target": budget.target, "metric": budget.metric, "achieved": round(pj.ratio(keep), 6),
            "allocation": allocation, "scope": budget.scope}
    return graph.plan_of_mask(keep, {**(meta or {}), **info})


def _global_order(pj, order: list[np.ndarray], scores: np.ndarray) -> np.ndarray:
    """Which group each removal step takes a unit from: units ranked across groups by
    score over their group's mean score, at most ``width - min_width`` per group."""
    entries = []  # (normalised score, group position)
    for gi, (g, o) in enumerate(zip(pj.groups, order)):
        s = scores[g.units[o]]
        norm = s / (s.mean() + 1e-12) if len(s) else s
        cap = max(0, min(len(o), g.width - pj.budget.min_width))
        entries += [(float(v), gi) for v in norm[:cap]]
    entries.sort(key=lambda e: e[0])
    return np.array([gi for _, gi in entries], dtype=np.int64)


def _coupled_weights(g) -> int:
    """How many weight tensors a unit of ``g`` spans: removing it loses a slice of each,
    so its importance counts each (a residual stream coupled across every block of a
    stage weighs as much as those blocks, not as one layer)."""
    return max(1, sum(1 for m in g.members if m.rsplit(":", 1)[0].endswith("weight")))


def _marginal_order(pj, order: list[np.ndarray], scores: np.ndarray) -> np.ndarray:
    """Which group each removal takes a unit from, greedily by normalised importance per
    cost saved (at most ``width - min_width`` per group), until the budget is met."""
    r = pj.round_to
    step = [-(-max(r, int(np.ceil(len(o) / 32))) // r) * r for o in order]
    norm = []
    for g, o in zip(pj.groups, order):
        s = scores[g.units[o]]
        norm.append(s * (_coupled_weights(g) / (s.mean() + 1e-12)) if len(s) else s)
    caps = [max(0, min(len(o), g.width - pj.budget.min_width)) for g, o in zip(pj.groups, order)]
    removed = [0] * len(order)
    owners: list[int] = []
    keep = pj.removal_mask(order, removed)
    cur = pj.value(keep)
    while not pj.fits(keep):
        best, best_ratio, best_keep, best_val = None, np.inf, None, cur
        for gi, o in enumerate(order):
            n = min(step[gi], caps[gi] - removed[gi])
            if n <= 0:
                continue
            trial = removed.copy()
            trial[gi] += n
            k = pj.removal_mask(order, trial)
            val = pj.value(k)
            saved = cur - val
            imp = float(norm[gi][removed[gi]: removed[gi] + n].sum())
            ratio = imp / saved if saved > 0 else np.inf
            if best is None or ratio < best_ratio:
                best, best_ratio, best_keep, best_val = gi, ratio, k, val
        if best is None:
            break
        n = min(step[best], caps[best] - removed[best])
        removed[best] += n
        owners += [best] * n
        keep, cur = best_keep, best_val
    return np.array(owners, dtype=np.int64)
