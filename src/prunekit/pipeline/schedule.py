"""A recovery schedule sized to a time budget: training steps and held-out evaluations
that fit in the minutes given, from the measured seconds of a training step and of an
evaluation on this machine."""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from torch import nn

__all__ = ["Schedule", "plan_schedule", "time_step"]

EVAL_SHARE = 0.2     # held-out evaluations take at most this share of a time budget


@dataclass(frozen=True)
class Schedule:
    """``epochs`` rounds of ``steps`` optimizer steps each (0: a whole pass over the
    training batches), a held-out evaluation after each; ``passes``: the training batches
    of one pass. Measured: ``step_s`` and ``eval_s`` (None when sized by epochs)."""

    epochs: int
    steps: int
    passes: int
    step_s: float | None = None
    eval_s: float | None = None
    budget_s: float | None = None

    @property
    def total_steps(self) -> int:
        return self.epochs * (self.steps or self.passes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Schedule":
        return cls(**data)


def plan_schedule(passes: int, evals: int, epochs: int | None = None,
                  budget_s: float | None = None, step_s: float | None = None,
                  eval_s: float | None = None) -> Schedule:
    """The schedule of ``epochs`` whole passes (evaluated after each), or of as many steps
    as fit in ``budget_s`` at ``step_s`` each once ``evals`` evaluations of ``eval_s``
    are paid (fewer evaluations when they would take more than a fifth of the budget),
    spread over ``evals`` rounds; when the steps exceed ``evals`` passes, as many whole
    passes, each evaluated, as fit in the budget."""
    if passes < 1:
        raise ValueError("no training step: the training data makes no full batch")
    if epochs is not None:
        return Schedule(epochs=int(epochs), steps=0, passes=passes)
    if budget_s is None or step_s is None or eval_s is None:
        raise ValueError("a time budget needs the measured seconds of a step and an "
                         "evaluation")
    evals = max(1, min(evals, int(EVAL_SHARE * budget_s / max(eval_s, 1e-9))))
    total = max(1, int((budget_s - evals * eval_s) / max(step_s, 1e-9)))
    if total <= evals * passes:
        rounds = min(evals, total)
        return Schedule(rounds, math.ceil(total / rounds), passes, step_s, eval_s, budget_s)
    whole = max(1, int(budget_s / (eval_s + passes * step_s)))   # a pass and its evaluation
    return Schedule(max(min(evals, whole), whole), 0, passes, step_s, eval_s, budget_s)


def time_step(model: nn.Module, train: Any, train_config: Any, teacher: nn.Module | None,
              steps: int = 8) -> float:
    """Seconds per training step of ``model`` (a copy is trained; ``model`` is left as it
    is) under ``train_config``, with ``teacher``: ``steps`` steps timed after two
    warm-up steps."""
    import copy

    from ..train import fit
    work = copy.deepcopy(model)
    cfg = replace(train_config, epochs=1, warmup_epochs=0.0)
    steps = max(1, min(steps, len(train) - 2)) if len(train) > 2 else 1
    with tempfile.TemporaryDirectory(prefix="prunekit-time-") as tmp:
        fit(work, train, None, replace(cfg, max_steps_per_epoch=2), tmp, teacher=teacher,
            progress=False)
        t = time.perf_counter()
        fit(work, train, None, replace(cfg, max_steps_per_epoch=steps), tmp,
            teacher=teacher, progress=False)
        return (time.perf_counter() - t) / steps
