"""LAPP under the method protocol: train with learnable thresholds, prune, train on."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from ..errors import TargetError
from .base import Result, require_classifier
from .lapp import LappConfig, train_lapp
from .protocol import Context, MethodBase, register


@register
class LappMethod(MethodBase):
    """Layer-adaptive progressive pruning while training (from scratch or pretrained)."""

    name: ClassVar[str] = "lapp"
    config: ClassVar[type] = LappConfig
    needs: ClassVar[frozenset[str]] = frozenset({"train"})
    resumable: ClassVar[bool] = True
    summary: ClassVar[str] = ("LAPP: learnable per-layer thresholds under the budget, pruning "
                              "progressively while training")

    def check(self, config: LappConfig, context: Context, model: nn.Module | None = None
              ) -> None:
        if model is not None:
            require_classifier(model, context.example, self.name)
        tc = context.train_config
        if config.phase_epochs(tc.epochs) > tc.epochs:
            raise TargetError(f"prune_epochs ({config.prune_epochs}) exceeds epochs "
                              f"({tc.epochs})")

    def run(self, model: nn.Module, config: LappConfig, context: Context) -> Result:
        """Trains a copy of ``model``; logs, the model as pruned and plots go to
        ``context.folder`` (a temporary folder when None), which ``resume`` continues."""
        tc = context.train_config
        model = copy.deepcopy(model).train()
        if context.folder is None:
            with tempfile.TemporaryDirectory(prefix="prunekit-lapp-") as tmp:
                result = train_lapp(model, context.inputs, context.train, context.test, config,
                                    tc, tmp, progress=context.progress)
        else:
            result = train_lapp(model, context.inputs, context.train, context.test, config,
                                tc, context.folder, progress=context.progress,
                                resume=context.resume)
            _plots(result, Path(context.folder))
        result.config = config
        return result

    def test_config(self, **overrides: Any) -> LappConfig:
        return LappConfig(**{"target": 0.5, **overrides})


def _plots(result: Result, folder: Path) -> None:
    from ..inputs import read_jsonl
    from ..reporting import plot_curves, plot_lapp
    plot_curves(result.history, folder / "training.png")
    trace = folder / "prune" / "lapp_trace.jsonl"
    rows = read_jsonl(trace, "LAPP trace") if trace.is_file() else []
    plot_lapp(rows or result.history, folder / "thresholds.png", "step" if rows else "epoch")
