"""Pareto utilities (minimisation, via pymoo): the non-dominated points of a set, and the
hypervolume they dominate."""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["HV_REF", "archive_hv", "hypervolume", "non_dominated"]


def non_dominated(F_: np.ndarray) -> np.ndarray:
    """Indices of the points no other point dominates (minimisation), via pymoo."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting
    if len(F_) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.asarray(NonDominatedSorting().do(np.asarray(F_, dtype=float),
                                               only_non_dominated_front=True), dtype=np.int64)


def hypervolume(F_: np.ndarray, ref: Sequence[float]) -> float:
    """The area (minimisation) dominated by the points ``F_`` up to ``ref``, via pymoo."""
    from pymoo.indicators.hv import HV
    F_ = np.asarray(F_, dtype=float)
    F_ = F_[(F_ < np.asarray(ref)).all(axis=1)] if len(F_) else F_
    return float(HV(ref_point=np.asarray(ref, dtype=float))(F_)) if len(F_) else 0.0


HV_REF = (1.05, 1.05)   # (cost ratio, impairment): a point must beat both to count


def archive_hv(cache: dict[str, list[float]]) -> float:
    """Hypervolume of everything evaluated so far (so it never decreases)."""
    return round(hypervolume(np.array(list(cache.values())), HV_REF), 6)
