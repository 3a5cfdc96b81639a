"""Verification at apply time: the pruned model must compute what the reference computes.

``graph.apply`` runs the pruned model and the masked reference on the example
inputs the graph was built with. When they differ, or the pruned model fails
to run, it finds the group responsible (each pruned group alone) and raises
:class:`VerificationError` naming it and the first ops that touch it, instead
of handing back a model that is wrong or crashes.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..errors import VerificationError
from ..plan import Plan

if TYPE_CHECKING:
    from .core import ChannelGraph

TOLERANCE = 1e-4


def flat_outputs(x: Any) -> list[torch.Tensor]:
    """Tensors of a (nested) output in a canonical order: dicts (and ModelOutputs) by key."""
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        return [t for k in sorted(x) for t in flat_outputs(x[k])]
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return [t for f in sorted(f.name for f in dataclasses.fields(x))
                for t in flat_outputs(getattr(x, f))]
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in flat_outputs(v)]
    return []


def max_difference(a: Any, b: Any) -> float:
    """Largest abs difference relative to the reference's scale (+1); inf if shapes differ."""
    fa, fb = flat_outputs(a), flat_outputs(b)
    if len(fa) != len(fb):
        return float("inf")
    worst = 0.0
    for x, y in zip(fa, fb):
        if x.shape != y.shape:
            return float("inf")
        if not x.is_floating_point():
            if not torch.equal(x, y):
                return float("inf")
            continue
        xf, yf = x.float(), y.float()
        both = torch.isnan(xf) & torch.isnan(yf)   # NaN where the reference has NaN is equal
        if both.any():
            xf, yf = xf.masked_fill(both, 0.0), yf.masked_fill(both, 0.0)
        scale = yf.abs().max().item() + 1.0 if y.numel() else 1.0
        err = (xf - yf).abs().max().item() if x.numel() else 0.0
        if err != err or err == float("inf"):
            return float("inf")
        worst = max(worst, err / scale)
    return worst


def _run(model: nn.Module, graph: "ChannelGraph") -> Any:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return graph.inputs.call(model)
    finally:
        model.train(was)


def _failure(graph: "ChannelGraph", model: nn.Module, plan: Plan,
             reference: nn.Module | None) -> str | None:
    from .surgery import apply_plan
    ref = reference if reference is not None else graph.masked_reference(plan, root=model,
                                                                          snapshot=False)
    keep = graph.keep_mask(plan)
    try:
        expect = _run(ref, graph)
        pruned = apply_plan(graph, model, keep, inplace=False)
        got = _run(pruned, graph)
    except Exception as exc:  # the pruned model (or its surgery) fails: that is the finding
        return f"the pruned model fails: {type(exc).__name__}: {exc}"
    err = max_difference(got, expect)
    if err > TOLERANCE:
        return f"its outputs differ from the reference by {err:.3g} (relative)"
    return None


def expected_outputs(graph: "ChannelGraph", model: nn.Module, plan: Plan) -> Any:
    """The masked reference's outputs on the example inputs (before an in-place apply)."""
    return _run(graph.masked_reference(plan, root=model, snapshot=False), graph)


def verify_pruned(graph: "ChannelGraph", model: nn.Module, plan: Plan, pruned: nn.Module,
                  expected: Any = None) -> None:
    """Raise VerificationError unless ``pruned`` equals the masked reference of ``plan``.

    ``expected``: the reference outputs computed before an in-place apply changed
    ``model`` (then the group responsible is not searched for)."""
    if graph.inputs is None:
        return
    try:
        expect = expected if expected is not None else _run(
            graph.masked_reference(plan, root=model, snapshot=False), graph)
        got = _run(pruned, graph)
        err = max_difference(got, expect)
        why = None if err <= TOLERANCE else \
            f"its outputs differ from the reference by {err:.3g} (relative)"
    except Exception as exc:
        why = f"the pruned model fails: {type(exc).__name__}: {exc}"
    if why is None:
        return
    culprit = _culprit(graph, model, plan) if expected is None else None
    where = f" Pruning group {culprit!r} alone already does this; ops touching it: " \
        f"{'; '.join(touching_ops(graph, culprit))}." if culprit else ""
    raise VerificationError(
        f"the pruned model is not equivalent to the original with the removed channels "
        f"zeroed: {why}.{where} prunekit refuses to return it; freeze the group "
        f"(ignore=...) and report the model, or register a rule for its layer "
        f"(docs/engine.md, 'Custom layers').")


def _culprit(graph: "ChannelGraph", model: nn.Module, plan: Plan) -> str | None:
    for gid, idx in plan.keep.items():
        single = Plan({gid: idx}, plan.fingerprint, {})
        if _failure(graph, model, single, None) is not None:
            return gid
    return None


def touching_ops(graph: "ChannelGraph", gid: str, limit: int = 3) -> list[str]:
    """The first ops (in graph order) whose tensors carry the group's channels."""
    units = set(graph.group(gid).units.tolist())
    found: list[str] = []
    from .layout import Layout
    for node, value in graph._b.layouts.items():
        lays = value if isinstance(value, tuple) else (value,)
        for lay in lays:
            if isinstance(lay, Layout) and any(
                    units.intersection(np.unique(graph.unit_of[blk.ids]).tolist())
                    for blk in lay.blocks):
                found.append(graph._b.where(node))
                break
        if len(found) >= limit:
            break
    return found
