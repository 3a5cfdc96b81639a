"""The budget projector: every method's last step from "what to prune" to "a plan that
meets the budget", written once.

A method describes a monotone family of keep masks, ``family(t)``, fewer units kept
as ``t`` grows (a removal fraction, a score threshold, a loss level, a width scale);
the projector shapes each mask (every group keeps at least ``min_width`` and a
multiple of ``round_to`` channels (and of a latency model's fitted alignment), or all
of them; the best units by ``priority``
come back first), bisects ``t`` to the largest mask whose cost is within the target,
and then fills back: while the cost is under the target by more than half the
tolerance, the best removed units (``round_to`` at a time) return as long as the
cost stays within it. Used by one-shot allocation, submodular's equal-change
allocation, LAPP's freeze and hold, EMO-DIR's and pruning spaces' final choice, and
the benchmarks.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import numpy as np

from ..errors import TargetError, UnreachableTargetError
from ..graph import ChannelGraph


def bisect(fits: Callable[[float], bool], lo: float, hi: float, steps: int = 40,
           integer: bool = False) -> float:
    """The smallest ``t`` in [lo, hi] with ``fits(t)``, for ``fits`` False then True as t
    grows (``hi`` is returned when nothing smaller fits). ``integer``: t is an integer."""
    if integer:
        lo_i, hi_i = int(lo), int(hi)
        while lo_i < hi_i:
            mid = (lo_i + hi_i) // 2
            if fits(mid):
                hi_i = mid
            else:
                lo_i = mid + 1
        return hi_i
    for _ in range(steps):
        mid = (lo + hi) / 2
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return hi


class Projector:
    """Budget projection over ``graph``'s prunable groups (or those in ``group_ids``).

    ``budget``: a :class:`~prunekit.methods.allocate.Budget`. ``priority``: a score per
    unit, higher kept first when rounding or filling back (default: all equal).
    ``base``: the cost the target is a fraction of (default: the graph's dense cost;
    LAPP's bypass is not part of it)."""

    def __init__(self, graph: ChannelGraph, budget, priority: np.ndarray | None = None,
                 group_ids: Iterable[str] | None = None, base: float | None = None) -> None:
        ids = None if group_ids is None else set(group_ids)
        self.graph, self.budget = graph, budget
        if budget.metric == "latency":
            self._latency = budget.require_latency()
            other = self._latency.graph
            if other is not graph and (other.fingerprint != graph.fingerprint or
                                       other.n_units != graph.n_units or
                                       other.options != graph.options):
                raise TargetError("the latency model was built on another graph (another "
                                  "architecture or other graph options); build it on this one")
        # widths move in multiples of round_to, and of the latency model's alignment
        self.round_to = budget.round_to if budget.metric != "latency" else \
            math.lcm(budget.round_to, int(getattr(self._latency, "align", 1)))
        self.groups = [g for g in graph.prunable_groups if ids is None or g.id in ids]
        if not self.groups:
            raise TargetError("no prunable group to allocate over")
        self.priority = np.zeros(graph.n_units) if priority is None else \
            np.asarray(priority, dtype=np.float64)
        self.base = float(base) if base is not None else self.value(np.ones(graph.n_units, bool))
        self.offset = 0.0      # cost outside the target's scope (constant under these groups)
        if budget.scope == "groups":
            from .allocate import metric_value
            inside = metric_value(graph.layers_cost([g.id for g in self.groups]), budget.metric)
            self.offset = self.base - inside

    # --------------------------------------------------------------- measuring
    def value(self, keep: np.ndarray) -> float:
        """The budget's cost of ``keep``: MACs, params, or predicted seconds."""
        if self.budget.metric == "latency":
            return self._latency.predict(keep)
        from .allocate import metric_value
        return float(metric_value(self.graph.cost_of_mask(keep), self.budget.metric))

    def ratio(self, keep: np.ndarray) -> float:
        """The cost of ``keep`` as the fraction the target counts."""
        return (self.value(keep) - self.offset) / max(self.base - self.offset, 1e-12)

    def fits(self, keep: np.ndarray) -> bool:
        return self.ratio(keep) <= self.budget.target

    # --------------------------------------------------------------- shaping
    def kept_count(self, width: int, kept: int) -> int:
        """``kept`` raised to ``min_width`` and to a multiple of ``round_to`` (or ``width``)."""
        r = self.round_to
        kept = max(kept, min(self.budget.min_width, width))
        return min(width, -(-kept // r) * r)

    def shape(self, keep: np.ndarray) -> np.ndarray:
        """``keep`` with every group's count made valid (frozen units kept; the best
        removed units by priority come back)."""
        keep = keep.copy()
        for g in self.groups:
            k = keep[g.units] | ~g.prunable
            want = self.kept_count(g.width, int(k.sum()))
            if want > k.sum():
                gone = np.nonzero(~k)[0]
                back = gone[np.argsort(-self.priority[g.units[gone]], kind="stable")]
                k[back[: want - int(k.sum())]] = True
            keep[g.units] = k
        return keep

    def removal_mask(self, order: list[np.ndarray], removed: list[int]) -> np.ndarray:
        """Keep flags that remove ``removed[i]`` units of group i in ``order[i]`` (local
        prunable indices, least important first), shaped."""
        keep = np.ones(self.graph.n_units, dtype=bool)
        for g, o, n in zip(self.groups, order, removed):
            keep[g.units[o[: max(0, int(n))]]] = False
        return self.shape(keep)

    def floor(self) -> float:
        """The smallest reachable ratio: every group at its minimum valid width."""
        keep = np.ones(self.graph.n_units, dtype=bool)
        for g in self.groups:
            keep[g.units[g.prunable]] = False
        return self.ratio(self.shape(keep))

    # --------------------------------------------------------------- projecting
    def project(self, family: Callable[[float], np.ndarray], lo: float = 0.0,
                hi: float = 1.0, fill: bool = True, integer: bool = False,
                steps: int = 40, fill_steps: int = 256) -> np.ndarray:
        """The largest shaped ``family(t)`` within the target, filled back (see module)."""
        self.check_reachable(self.shape(family(hi)))
        t = bisect(lambda v: self.fits(self.shape(family(v))), lo, hi, steps, integer)
        keep = self.shape(family(t))
        return self.fill(keep, fill_steps) if fill else keep

    def check_reachable(self, smallest: np.ndarray) -> None:
        b = self.budget
        floor = self.ratio(smallest)
        if floor > b.target * (1 + b.tolerance):
            raise UnreachableTargetError(
                f"target {b.target:.4g} of {b.metric} is unreachable: with every prunable "
                f"group at its minimum width the model keeps {floor:.4g}, the closest "
                "reachable value (frozen groups: see graph.explain())")

    def fill(self, keep: np.ndarray, max_steps: int = 256) -> np.ndarray:
        """Return removed units, best first and ``round_to`` at a time per group, while the
        cost stays within the target; only when the cost is under it by more than half
        the tolerance; at most ``max_steps`` returns (one cost evaluation each)."""
        target, tol, r = self.budget.target, self.budget.tolerance, self.round_to
        keep = keep.copy()
        if self.ratio(keep) >= target - tol / 2:
            return keep
        steps = []   # (priority of the step, units): r units of one group
        for g in self.groups:
            gone = g.units[~keep[g.units]]
            gone = gone[np.argsort(-self.priority[gone], kind="stable")]
            for i in range(0, len(gone) - r + 1, r):
                steps.append((float(self.priority[gone[i:i + r]].mean()), gone[i:i + r]))
        steps.sort(key=lambda s: -s[0])
        for _, units in steps[:max_steps]:
            keep[units] = True
            ratio = self.ratio(keep)
            if ratio > target:
                keep[units] = False
            elif ratio >= target - tol / 2:
                break
        return keep

    def scale_widths(self, widths: dict[str, int], rank: Callable[[dict[str, int]], np.ndarray]
                     ) -> np.ndarray:
        """A plan of the same shape as ``widths`` (kept channels per group) at the target:
        every group's width scaled by one common factor (bisected; above 1 towards the
        full widths), channels chosen by ``rank(widths) -> keep flags``, filled back."""
        full = {g.id: g.width for g in self.groups}

        def at(t: float) -> np.ndarray:   # t in [0, 2]: 0 full width, 1 ``widths``, 2 empty
            out = {}
            for gid, w in full.items():
                k = widths.get(gid, w)
                out[gid] = round(w + (k - w) * t) if t <= 1 else round(k * (2 - t))
            return rank(out)
        return self.project(at, 0.0, 2.0)
