"""What every method returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import TargetError
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


def check_batches(example: Any, batches: list, who: str, labels: bool = False) -> None:
    """Calibration or training batches are float tensors shaped like the example input
    but for the batch size (with ``labels``: (inputs, integer labels) pairs). Anything
    else is refused here, with the batch named, not deep inside a layer."""
    if not batches:
        raise TargetError(f"{who} needs at least one {'training' if labels else 'calibration'}"
                          " batch")
    ex = example[0] if isinstance(example, (tuple, list)) and len(example) == 1 else example
    want = tuple(ex.shape[1:]) if isinstance(ex, torch.Tensor) else None
    for i, b in enumerate(batches):
        y = None
        if labels:
            if not isinstance(b, (tuple, list)) or len(b) != 2:
                raise TargetError(f"{who}: batch {i} must be an (inputs, labels) pair, got "
                                  f"{type(b).__name__}")
            b, y = b
        if not isinstance(b, torch.Tensor) or not b.is_floating_point() or b.dim() < 1 \
                or len(b) == 0:
            raise TargetError(f"{who}: batch {i} must be a non-empty float tensor, got "
                              f"{type(b).__name__}"
                              + (f" of {b.dtype}" if isinstance(b, torch.Tensor) else ""))
        if want is not None and tuple(b.shape[1:]) != want:
            raise TargetError(f"{who}: batch {i} has shape {tuple(b.shape)}; the example "
                              f"input is {tuple(ex.shape)}, so batches must be "
                              f"(N, {', '.join(map(str, want))})")
        if labels and (not isinstance(y, torch.Tensor) or y.is_floating_point()
                       or y.shape[:1] != b.shape[:1]):
            raise TargetError(f"{who}: batch {i} needs integer labels, one per input, got "
                              + (f"{y.dtype} of shape {tuple(y.shape)}"
                                 if isinstance(y, torch.Tensor) else type(y).__name__))
