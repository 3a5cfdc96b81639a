"""One-shot pruning: score channels once, allocate to a cost target, cut."""

from __future__ import annotations

from fnmatch import fnmatch
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Sequence

import torch
from torch import nn

from ..errors import TargetError
from ..graph import ChannelGraph
from ..importance import CRITERIA, unit_scores
from .allocate import ALLOCATIONS, Budget, allocate
from .base import Result
from .protocol import Context, MethodBase, MethodConfig, register


@dataclass(frozen=True)
class OneShotConfig(MethodConfig):
    """Score every channel once by ``criterion`` and keep the best ones: ``allocation``
    "global" ranks channels across groups (scores normalised by their group's mean),
    "uniform" removes the same fraction of every group. The budget fields are
    :class:`~prunekit.methods.protocol.MethodConfig`'s; the target counts the whole
    network, ``groups`` only restricts which groups are pruned."""

    criterion: str = "l1"
    allocation: str = "global"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.criterion not in CRITERIA:
            raise TargetError(f"criterion must be one of {CRITERIA}, got {self.criterion!r}")
        if self.allocation not in ALLOCATIONS:
            raise TargetError(f"allocation must be one of {ALLOCATIONS}, "
                              f"got {self.allocation!r}")


def prune_oneshot(model: nn.Module, example_inputs: Sequence[Any] | torch.Tensor,
                  config: OneShotConfig = OneShotConfig(), *, graph: ChannelGraph | None = None,
                  data: Iterable[Any] | None = None,
                  loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
                  inplace: bool = False, verify: bool = True, latency: Any = None) -> Result:
    """Prune ``model`` to ``config.target`` of its cost; ``model`` is left untouched unless
    ``inplace`` (which saves the copy). ``verify``: ``graph.apply`` checks the pruned model
    against the masked reference on the example inputs (off only inside search loops).
    ``latency``: the :class:`prunekit.latency.LatencyModel` of ``metric="latency"`` (built
    on ``graph``, which is then required)."""
    if graph is None and latency is not None:
        graph = latency.graph
    graph = graph or ChannelGraph.build(model, example_inputs, ignore=config.ignore)
    scores = unit_scores(graph, model, config.criterion, data=data, loss_fn=loss_fn,
                         seed=config.seed)
    budget = Budget(config.target, config.metric, config.round_to, config.min_width,
                    latency=latency)
    chosen = None
    if config.groups:
        chosen = {g.id for g in graph.prunable_groups
                  if any(fnmatch(g.id, p) for p in config.groups)}
        if not chosen:
            raise TargetError(f"no prunable group matches {list(config.groups)}")
    plan = allocate(graph, scores, budget, config.allocation,
                    {"method": "oneshot", "criterion": config.criterion}, group_ids=chosen)
    before, after = graph.cost(), graph.cost(plan)
    pruned = graph.apply(model, plan, inplace=inplace, verify=verify)
    return Result(pruned, plan, graph, before, after, config=config)


@register
class OneShot(MethodBase):
    """One-shot pruning by an importance criterion (the baselines)."""

    name: ClassVar[str] = "oneshot"
    config: ClassVar[type] = OneShotConfig
    summary: ClassVar[str] = "score channels once (l1, l2, bn, taylor, ...) and cut to the target"
    metrics: ClassVar[tuple[str, ...]] = ("macs", "params", "latency")
    rerun: ClassVar[bool] = True

    def run(self, model: nn.Module, config: OneShotConfig, context: Context) -> Result:
        return prune_oneshot(model, context.inputs, config, latency=context.latency)

