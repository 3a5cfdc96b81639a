"""EMO-DIR under the method protocol: search, keep the front, choose by the budget."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from .base import FrontPoint, Result
from .emo import EmoConfig, EmoResult, EmoSearch
from .projector import Projector
from .protocol import Context, MethodBase, register


def calibration_batches(context: Context, size: int = 128) -> list[torch.Tensor]:
    data = context.calibration
    return list(data.split(size)) if isinstance(data, torch.Tensor) else list(data)


@register
class Emo(MethodBase):
    """Divide-and-conquer multi-objective evolutionary pruning (a Pareto front)."""

    name: ClassVar[str] = "emo"
    config: ClassVar[type] = EmoConfig
    needs: ClassVar[frozenset[str]] = frozenset({"calibration"})
    resumable: ClassVar[bool] = True
    parallel: ClassVar[bool] = True
    metrics: ClassVar[tuple[str, ...]] = ("macs", "params", "latency")
    summary: ClassVar[str] = ("EMO-DIR: NSGA-II per sub-network on unlabeled images, global "
                              "ranking, a Pareto front of plans")

    def run(self, model: nn.Module, config: EmoConfig, context: Context) -> Result:
        folder = context.folder
        search = EmoSearch(model, context.inputs[0], calibration_batches(context), config,
                           executor=context.executor, workers=context.workers,
                           checkpoint=folder / "checkpoint" if folder else None,
                           latency=context.latency)
        try:
            found = search.run(progress=context.progress)
        finally:
            search.close()
        if folder is not None:
            from ..reporting import plot_front
            found.save(folder)
            plot_front(found, folder / "front.png")
        graph = search.local.graph
        plan = choose(search, found, config)
        front = [FrontPoint(p, float(r["cost_ratio"]), {"impairment": float(r["impairment"])})
                 for r, p in zip(found.front, found.plans)]
        history = [{"subnet": i, "hypervolume": hv} for i, hv in enumerate(found.hypervolume)]
        return Result(graph.apply(model, plan), plan, graph, graph.cost(), graph.cost(plan),
                      history, front, config)

    def test_config(self, **overrides: Any) -> EmoConfig:
        return EmoConfig(**{"pop_size": 4, "generations": 1, "chain_points": 3, **overrides})


def choose(search: EmoSearch, found: EmoResult, config: EmoConfig):
    """The front's point closest under the target (else its smallest), its widths scaled
    by the budget projector onto the target: a plan that meets the budget always, shaped
    like the searched one."""
    front = found.front
    under = [i for i, r in enumerate(front) if r["cost_ratio"] <= config.target]
    pick = max(under, key=lambda i: front[i]["cost_ratio"]) if under else \
        min(range(len(front)), key=lambda i: front[i]["cost_ratio"])
    local = search.local
    pj = Projector(local.graph, config.budget(latency=local.latency), local.planner.scores,
                   group_ids=set(front[pick]["widths"]))
    keep = pj.scale_widths(front[pick]["widths"], local.planner.keep)
    meta = {"method": "emo", "config": config.to_dict(), "front_point": pick,
            "front_cost_ratio": front[pick]["cost_ratio"],
            "impairment": front[pick]["impairment"], "achieved": round(pj.ratio(keep), 6),
            "cost_ratio": round(pj.ratio(keep), 6)}
    return local.graph.plan_of_mask(np.asarray(keep, dtype=bool), meta)
