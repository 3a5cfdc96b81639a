"""Turn per-unit scores into a Plan that meets a cost target (fraction of MACs or params).

Shared by every method that ranks channels. Two allocations:

- ``uniform``: the same removal fraction r of every prunable group; r is found by
  bisection on the analytic cost.
- ``global``: units ranked across groups by score divided by their group's mean
  score; the k lowest go, k found by bisection.

Both then fill: while the cost is below the target by more than the tolerance,
the best removed unit whose return keeps the cost under the target comes back
(and the reverse when the rounding overshoots), so the result lands within the
tolerance whenever channel granularity allows it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import TargetError, UnreachableTargetError
from ..graph import ChannelGraph, Cost
from ..plan import Plan

METRICS = ("macs", "params")
ALLOCATIONS = ("uniform", "global")
SCOPES = ("network", "groups")


@dataclass(frozen=True)
class Budget:
    target: float              # fraction of the original cost to keep
    metric: str = "macs"
    round_to: int = 1
    min_width: int = 1
    tolerance: float = 0.01    # relative: the plan keeps at most target * (1 + tolerance)
    scope: str = "network"     # "groups": the target counts only the layers pruned groups touch

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


def metric_value(cost: Cost, metric: str) -> int:
    """``cost``'s MACs or params, as ``metric`` ("macs" | "params") says."""
    return cost.macs if metric == "macs" else cost.params


class Allocator:
    """Builds keep masks from per-group removal counts, with rounding and minimum width."""

    def __init__(self, graph: ChannelGraph, scores: np.ndarray, budget: Budget,
                 group_ids: set[str] | None = None) -> None:
        self.graph, self.budget = graph, budget
        self.groups = [g for g in graph.prunable_groups
                       if group_ids is None or g.id in group_ids]
        if not self.groups:
            raise TargetError("no prunable group to allocate over")
        self.order = []   # per group: prunable local indices, least important first
        self.cap = []     # per group: most units that may go
        for g in self.groups:
            idx = np.nonzero(g.prunable)[0]
            self.order.append(idx[np.argsort(scores[g.units[idx]], kind="stable")])
            self.cap.append(max(0, min(len(idx), g.width - budget.min_width)))
        self.base = metric_value(graph.cost(), budget.metric)
        self.offset = 0  # cost outside the target's scope (constant under these groups)
        if budget.scope == "groups":
            inside = metric_value(graph.layers_cost([g.id for g in self.groups]), budget.metric)
            self.offset = self.base - inside

    def mask(self, removed: list[int]) -> np.ndarray:
        keep = np.ones(self.graph.n_units, dtype=bool)
        r = self.budget.round_to
        for g, order, n, cap in zip(self.groups, self.order, removed, self.cap):
            n = min(n, cap)
            kept = g.width - n
            kept = min(g.width, -(-kept // r) * r)
            n = g.width - kept
            if n > 0:
                keep[g.units[order[:n]]] = False
        return keep

    def ratio(self, keep: np.ndarray) -> float:
        value = metric_value(self.graph.cost_of_mask(keep), self.budget.metric)
        return (value - self.offset) / max(self.base - self.offset, 1)

    def plan(self, keep: np.ndarray, meta: dict) -> Plan:
        kept = {}
        for g in self.groups:
            k = keep[g.units]
            if not k.all():
                kept[g.id] = np.nonzero(k)[0].tolist()
        return self.graph.make_plan(kept, meta)


def allocate(graph: ChannelGraph, scores: np.ndarray, budget: Budget, allocation: str,
             meta: dict | None = None, group_ids: set[str] | None = None) -> Plan:
    """A plan over the prunable groups (or only ``group_ids``) that meets ``budget``."""
    if allocation not in ALLOCATIONS:
        raise TargetError(f"allocation must be one of {ALLOCATIONS}, got {allocation!r}")
    al = Allocator(graph, scores, budget, group_ids)
    floor = al.ratio(al.mask(list(al.cap)))
    if floor > budget.target * (1 + budget.tolerance):   # the promise: within 1% of target
        raise UnreachableTargetError(
            f"target {budget.target:.4g} of {budget.metric} is unreachable: with every "
            f"prunable group at its minimum width the model keeps {floor:.4g}, the closest "
            "reachable value (frozen groups: see graph.explain())")
    removal = _uniform(al) if allocation == "uniform" else _global(al, scores)
    keep = _fill(al, al.mask(removal), scores)
    ratio = al.ratio(keep)
    info = {"target": budget.target, "metric": budget.metric, "achieved": round(ratio, 6),
            "allocation": allocation, "scope": budget.scope}
    return al.plan(keep, {**(meta or {}), **info})


def _uniform(al: Allocator) -> list[int]:
    def removal(r: float) -> list[int]:
        return [int(np.floor(r * len(o))) for o in al.order]
    lo, hi = 0.0, 1.0
    for _ in range(24):  # 2^-24: finer than one channel of any group
        mid = (lo + hi) / 2
        if al.ratio(al.mask(removal(mid))) > al.budget.target:
            lo = mid
        else:
            hi = mid
    return removal(hi)


def _global(al: Allocator, scores: np.ndarray) -> list[int]:
    entries = []  # (normalised score, group position)
    for gi, (g, order) in enumerate(zip(al.groups, al.order)):
        s = scores[g.units[order]]
        norm = s / (s.mean() + 1e-12) if len(s) else s
        entries += [(float(v), gi) for v in norm[: al.cap[gi]]]
    entries.sort(key=lambda e: e[0])
    owners = np.array([gi for _, gi in entries], dtype=np.int64)

    def removal(k: int) -> list[int]:
        return np.bincount(owners[:k], minlength=len(al.groups)).tolist()
    lo, hi = 0, len(entries)
    while lo < hi:
        mid = (lo + hi) // 2
        if al.ratio(al.mask(removal(mid))) > al.budget.target:
            lo = mid + 1
        else:
            hi = mid
    return removal(lo)


def _fill(al: Allocator, keep: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Return removed channels (best first, ``round_to`` at a time per group) while the
    cost stays at or under the target; only runs when bisection landed outside half the
    tolerance, and tries at most 256 returns (each costs one cost evaluation)."""
    target, tol, r = al.budget.target, al.budget.tolerance, al.budget.round_to
    if al.ratio(keep) >= target - tol / 2:
        return keep
    steps = []  # (score of the step, units) ; a step returns r units of one group
    for g in al.groups:
        gone = g.units[~keep[g.units]]
        gone = gone[np.argsort(-scores[gone], kind="stable")]
        for i in range(0, len(gone) - r + 1, r):
            steps.append((float(scores[gone[i:i + r]].mean()), gone[i:i + r]))
    steps.sort(key=lambda s: -s[0])
    for _, units in steps[:256]:
        keep[units] = True
        ratio = al.ratio(keep)
        if ratio > target:
            keep[units] = False
        elif ratio >= target - tol / 2:
            break
    return keep
