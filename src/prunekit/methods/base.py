"""What every method returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..graph import ChannelGraph, Cost
from ..plan import Plan


@dataclass
class Result:
    """A pruned model and how it came to be."""

    model: nn.Module
    plan: Plan
    graph: ChannelGraph
    before: Cost
    after: Cost
    history: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> str:
        def pct(a: int, b: int) -> str:
            return f"{100.0 * a / b:.1f}%" if b else "n/a"
        return (f"params {self.before.params:,} -> {self.after.params:,} "
                f"({pct(self.after.params, self.before.params)}), "
                f"MACs {self.before.macs:,} -> {self.after.macs:,} "
                f"({pct(self.after.macs, self.before.macs)})")
