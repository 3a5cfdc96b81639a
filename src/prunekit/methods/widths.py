"""Widths to channels: keep each group's best channels by an importance criterion.

Searches over widths (EMO-DIR, pruning spaces) decide *how many* channels a group
keeps; which ones is this ranking's job, computed once per model.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from ..graph import ChannelGraph
from ..importance import unit_scores
from ..plan import Plan


class WidthPlanner:
    def __init__(self, graph: ChannelGraph, model: nn.Module, criterion: str = "l1",
                 seed: int = 0) -> None:
        self.graph = graph
        scores = unit_scores(graph, model, criterion, seed=seed)
        self.scores = scores   # per unit: the ranking's importance (higher kept first)
        self.order = {}   # per group: prunable local indices, most important first
        for g in graph.prunable_groups:
            idx = np.nonzero(g.prunable)[0]
            self.order[g.id] = idx[np.argsort(-scores[g.units[idx]], kind="stable")]

    def keep(self, widths: dict[str, int]) -> np.ndarray:
        """Unit keep flags for ``widths`` (kept channels per group id, frozen ones included)."""
        keep = np.ones(self.graph.n_units, dtype=bool)
        for gid, k in widths.items():
            g = self.graph.group(gid)
            n_frozen = g.width - len(self.order[gid])
            keep[g.units[self.order[gid][max(0, k - n_frozen):]]] = False
        return keep

    def plan(self, widths: dict[str, int], meta: dict | None = None) -> Plan:
        return self.graph.plan_of_mask(self.keep(widths), meta)
