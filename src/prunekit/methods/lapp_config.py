"""LAPP's configuration (see :mod:`.lapp` for the method)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import TargetError
from .protocol import MethodConfig

__all__ = ["LappConfig", "SCORES"]

SCORES = ("bn", "taylor")


@dataclass(frozen=True)
class LappConfig(MethodConfig):
    """``target``: fraction of the *dense* model's cost (without bypass) to keep. The
    training schedule (epochs, learning rate) is the context's ``train_config``."""

    target: float = 0.403
    prune_epochs: float | None = None  # None: a third of the training epochs (docs/lapp.md)
    progressive: bool = True
    bypass: bool = False           # measured: the bypass cost 1.1 points (docs/lapp.md)
    bypass_scale: float = 1.0      # initial BN scale of the bypass branches (0: start as no-op)
    penalty: float = 4.0
    temperature: float = 0.05      # in quantile units (a fraction of the group's channels)
    threshold_lr: float = 0.005    # typical step of a threshold's quantile
    tolerance: float = 0.01
    hold: bool = False             # keep the cost at the ramp's target from below (docs/lapp.md)
    score: str = "bn"              # channel importance: "bn" |gamma|, or "taylor" (docs/lapp.md)
    score_momentum: float = 0.98   # "taylor": the running average's momentum per step
    leak: float = 0.01             # training only: a masked channel's mask value (docs/lapp.md)

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.prune_epochs is not None and not self.prune_epochs > 0) or \
                self.penalty <= 0 or not 0 < self.temperature <= 1 or \
                not 0 < self.threshold_lr <= 1 or self.min_width < 1 or \
                not 0 < self.tolerance < 0.5 or not 0 <= self.bypass_scale <= 1 or \
                not 0 <= self.score_momentum < 1 or not 0 <= self.leak < 0.1:
            raise TargetError("prune_epochs and penalty must be > 0, temperature and "
                              "threshold_lr in (0, 1], min_width >= 1, tolerance in (0, 0.5), "
                              "bypass_scale in [0, 1], score_momentum in [0, 1), leak in [0, 0.1)")
        if self.score not in SCORES:
            raise TargetError(f"score must be one of {SCORES}, got {self.score!r}")

    def phase_epochs(self, epochs: int) -> float:
        """The pruning phase's length in a schedule of ``epochs``: ``prune_epochs``, or a
        third of the schedule when it is None."""
        return self.prune_epochs if self.prune_epochs is not None else epochs / 3
