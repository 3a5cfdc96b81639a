"""One-shot pruning: score channels once, allocate to a cost target, cut."""

from __future__ import annotations

import json
from fnmatch import fnmatch
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from ..errors import TargetError
from ..graph import ChannelGraph
from ..importance import CRITERIA, unit_scores
from .allocate import ALLOCATIONS, Budget, allocate
from .base import Result


@dataclass(frozen=True)
class OneShotConfig:
    """``target``: fraction of the original MACs (or params) to keep, in (0, 1].
    ``groups``: fnmatch patterns of the group ids to prune (empty: every prunable group);
    the target still counts the whole network."""

    target: float = 0.5
    metric: str = "macs"
    criterion: str = "l1"
    allocation: str = "global"
    round_to: int = 1
    min_width: int = 1
    seed: int = 0
    ignore: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        Budget(self.target, self.metric, self.round_to, self.min_width)  # validates
        if self.criterion not in CRITERIA:
            raise TargetError(f"criterion must be one of {CRITERIA}, got {self.criterion!r}")
        if self.allocation not in ALLOCATIONS:
            raise TargetError(f"allocation must be one of {ALLOCATIONS}, "
                              f"got {self.allocation!r}")
        object.__setattr__(self, "ignore", tuple(self.ignore))
        object.__setattr__(self, "groups", tuple(self.groups))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "OneShotConfig":
        data = json.loads(text)
        data["ignore"] = tuple(data.get("ignore", ()))
        data["groups"] = tuple(data.get("groups", ()))
        return cls(**data)


def prune_oneshot(model: nn.Module, example_inputs: Sequence[Any] | torch.Tensor,
                  config: OneShotConfig = OneShotConfig(), *, graph: ChannelGraph | None = None,
                  data: Iterable[Any] | None = None,
                  loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
                  inplace: bool = False, verify: bool = True) -> Result:
    """Prune ``model`` to ``config.target`` of its cost; ``model`` is left untouched unless
    ``inplace`` (which saves the copy). ``verify``: ``graph.apply`` checks the pruned model
    against the masked reference on the example inputs (off only inside search loops)."""
    graph = graph or ChannelGraph.build(model, example_inputs, ignore=config.ignore)
    scores = unit_scores(graph, model, config.criterion, data=data, loss_fn=loss_fn,
                         seed=config.seed)
    budget = Budget(config.target, config.metric, config.round_to, config.min_width)
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
    return Result(pruned, plan, graph, before, after)
