"""Meeting a latency target as measured, not only as predicted: run a method, measure its
plan on the target, teach the latency model that measurement, and run it again at a
corrected target until the measured fraction of the dense latency is within
``tolerance`` of the one asked for (or ``rounds`` runs)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Sequence

import numpy as np
from torch import nn

from .model import Bound, LatencyModel
from .timers import Timer, median_seconds

__all__ = ["alternating_ratio", "meet_measured", "measured_ratio"]


def measured_ratio(lm: LatencyModel, dense: nn.Module, pruned: nn.Module,
                   pairs: int = 9, reps: int = 3) -> float:
    """``pruned``'s latency over ``dense``'s on ``lm``'s target, on its graph's example
    inputs at the target's batch: :func:`alternating_ratio`."""
    a, b = Bound(dense.eval(), lm.graph.inputs), Bound(pruned.eval(), lm.graph.inputs)
    return alternating_ratio(lm.timer, a, b, a.tensors(lm.target.batch), pairs, reps)


def alternating_ratio(timer: Timer, dense: nn.Module, pruned: nn.Module,
                      inputs: Sequence[Any], pairs: int = 9, reps: int = 3) -> float:
    """``pruned(*inputs)``'s latency over ``dense(*inputs)``'s under ``timer``: the median
    over ``pairs`` alternating measurements of each (each the median of ``reps`` runs), so
    a drift of the machine's speed during the measurement cancels. Timers with a
    ``runner`` (the built-in ones) set each model up once and alternate short blocks of
    runs; others are timed whole, in turn."""
    if not hasattr(timer, "runner"):
        ratios = [timer.time(pruned, inputs) / timer.time(dense, inputs)
                  for _ in range(pairs)]
        return float(np.median(ratios))
    with timer.runner(dense, inputs) as run_a, timer.runner(pruned, inputs) as run_b:
        ratios = []
        for _ in range(pairs):
            ta = median_seconds(run_a, reps)
            ratios.append(median_seconds(run_b, reps) / ta)
    return float(np.median(ratios))


def meet_measured(lm: LatencyModel, model: nn.Module, run: Callable[[Any], Any], config: Any,
                  tolerance: float = 0.03, rounds: int = 4,
                  refine: bool = True) -> tuple[Any, list[dict]]:
    """``run(config)`` -> a Result whose ``plan`` is on ``lm.graph`` and whose method
    budgets by ``lm``; ``config.target`` is the fraction of the dense model's *measured*
    latency wanted.

    ``refine`` (needs a calibrated ``lm``): each measured plan is added to ``lm``'s
    calibration (:meth:`LatencyModel.refine`), so the next run budgets by a model
    corrected where the method's plans lie, and asks for the wanted fraction scaled by
    what the refitted model still gets wrong on the last plan (its prediction over the
    measurement); the rounds stop when that ask lies at or below a target the method
    refused (it would be refused again). Otherwise the model stays and the target
    handed to the method is corrected by the secant through the (asked, measured) pairs so far (first step:
    scaled by asked / measured). Targets are never above 1. Returns the result closest
    to the target from below when none is within the tolerance (else the closest), and
    the log of the rounds: each with the target asked, the latency ``predicted`` when
    the plan was made (before it was measured) and the one ``measured``; the chosen
    round has ``chosen``."""
    from ..errors import UnreachableTargetError
    want = float(config.target)
    tried: list[tuple[float, float]] = []
    log: list[dict] = []
    best = None
    asked, floor = want, 0.0
    refine = refine and lm.calibrated
    for i in range(rounds):
        try:
            res = run(replace(config, target=asked))
        except UnreachableTargetError:
            if best is None and not tried:
                raise
            log.append({"round": i, "asked": asked, "unreachable": True})
            floor = asked                  # the method's own floor lies above this
            asked = (asked + min(a for a, _ in tried)) / 2
            continue
        keep = lm.graph.keep_mask(res.plan)
        predicted = lm.predict(keep) / lm.predict()
        got = measured_ratio(lm, model, res.model)
        log.append({"round": i, "asked": asked, "measured": got, "predicted": predicted})
        tried.append((asked, got))
        under = got <= want * (1 + tolerance)
        score = (not under, abs(got / want - 1))
        if best is None or score < best[0]:
            best = (score, res, len(log) - 1)
        if abs(got / want - 1) <= tolerance:
            break
        if refine:
            lm.refine(keep, got)
            nxt = want * (lm.predict(keep) / lm.predict()) / got
            if nxt <= floor:               # below a target the method already refused
                break
            asked = float(min(1.0, max(1e-3, nxt)))
        else:
            asked = _next(tried, want, floor)
            if asked is None:
                break
    log[best[2]]["chosen"] = True
    return best[1], log


def _next(tried: list[tuple[float, float]], want: float, floor: float = 0.0) -> float | None:
    """The next target to ask for: secant through the last two (asked, measured) pairs,
    else a proportional step, kept inside the bracket of asked targets that measured
    below and above ``want`` (bisected when the step leaves it: measurements are noisy)
    and above ``floor`` (a target the method refused); None when it would repeat a
    target already asked."""
    (a1, m1) = tried[-1]
    if len(tried) > 1 and tried[-2][1] != m1:
        a0, m0 = tried[-2]
        nxt = a1 + (want - m1) * (a1 - a0) / (m1 - m0)
    else:
        nxt = a1 * want / max(m1, 1e-9)
    lo = max([a for a, m in tried if m < want] + [floor])
    hi = min([a for a, m in tried if m > want] + [1.0])
    if not lo < nxt < hi:
        nxt = (lo + hi) / 2 if lo < hi else nxt
    nxt = float(min(1.0, max(1e-3, floor + 1e-4, nxt)))
    return None if any(abs(nxt - a) < 1e-4 for a, _ in tried) else nxt
