"""EMO-DIR's configuration (see :mod:`.emo` for the method)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import TargetError
from ..importance import CRITERIA
from .protocol import MethodConfig

__all__ = ["EmoConfig"]


@dataclass(frozen=True)
class EmoConfig(MethodConfig):
    """The search (``parts`` sub-networks, NSGA-II of ``pop_size`` for ``generations``,
    ``chain_points`` whole-network plans measured) and the budget: the returned plan is
    the front's point closest under ``target``, its widths scaled onto the target (the
    whole front is in ``Result.front``)."""

    parts: int = 3                 # sub-networks; 1 = whole-network NSGA-II
    pop_size: int = 16
    generations: int = 8
    criterion: str = "l1"
    min_keep: float = 0.1          # smallest keep fraction of a group
    chain_points: int = 12         # whole-network plans measured in the global ranking
    feature_steps: int = 0         # cross-network feature-matching steps per sub-network
    feature_lr: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.parts < 1 or self.pop_size < 4 or self.generations < 0 or \
                self.chain_points < 2 or self.feature_steps < 0:
            raise TargetError("parts >= 1, pop_size >= 4, generations >= 0, chain_points >= 2 "
                              "and feature_steps >= 0 are required")
        if not 0 < self.min_keep <= 1:
            raise TargetError(f"min_keep must be in (0, 1], got {self.min_keep}")
        if self.criterion not in CRITERIA:
            raise TargetError(f"criterion must be one of {CRITERIA}, got {self.criterion!r}")
