"""Reusable checks of the engine's contract, used by the test suite and the coverage benchmark.

Each check takes a model, example inputs and a plan and raises AssertionError with a
readable message when the contract is broken.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .graph import ChannelGraph
from .graph.cost import flop_counter
from .graph.trace import as_inputs
from .graph.verify import flat_outputs
from .plan import Plan


def random_plan(graph: ChannelGraph, ratio: float, seed: int = 0) -> Plan:
    """Remove about ``ratio`` of the prunable units of every group, chosen at random."""
    rng = np.random.default_rng(seed)
    keep: dict[str, list[int]] = {}
    for g in graph.prunable_groups:
        idx = np.nonzero(g.prunable)[0]
        n_remove = min(int(round(ratio * len(idx))), g.width - 1)
        if n_remove <= 0:
            continue
        drop = set(rng.choice(idx, size=n_remove, replace=False).tolist())
        keep[g.id] = [i for i in range(g.width) if i not in drop]
    return graph.make_plan(keep, {"method": "random", "ratio": ratio, "seed": seed})


class ConformanceError(AssertionError):
    """A failed conformance check. Raised explicitly (never by ``assert``), so the checks
    still check under ``python -O``."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConformanceError(message)


def outputs_close(a: Any, b: Any, rtol: float = 1e-4, atol: float = 1e-4) -> float:
    """Max abs difference over (nested) outputs; raises if structure differs or not close."""
    fa, fb = flat_outputs(a), flat_outputs(b)
    _require(len(fa) == len(fb), f"output structure differs: {len(fa)} vs {len(fb)} tensors")
    worst = 0.0
    for x, y in zip(fa, fb):
        _require(x.shape == y.shape,
                 f"output shape differs: {tuple(x.shape)} vs {tuple(y.shape)}")
        diff = (x.float() - y.float()).abs()
        scale = y.float().abs().max().item() + 1.0
        err = diff.max().item() if diff.numel() else 0.0
        _require(err <= atol * scale + rtol * scale,
                 f"outputs differ by {err:.3g} (scale {scale:.3g})")
        worst = max(worst, err / scale)
    return worst


def measured_cost(model: nn.Module, inputs: Sequence[Any]) -> tuple[int, int]:
    """(params, MACs) measured on a real model: parameter count and FlopCounterMode / 2."""
    inputs = as_inputs(inputs)
    model.eval()
    # FlopCounterMode's module tracker hooks autograd on inputs that require grad (a
    # parameter handed to a submodule), which fails under no_grad: count without grad
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        with torch.no_grad(), flop_counter() as fc:
            inputs.call(model)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    return sum(p.numel() for p, _ in flags), fc.get_total_flops() // 2


def check_plan(model: nn.Module, inputs: Sequence[Any], graph: ChannelGraph, plan: Plan,
               atol: float = 1e-4) -> dict[str, Any]:
    """Equivalence with the masked reference, cost = measured, input model untouched."""
    inputs = as_inputs(inputs)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = graph.apply(model, plan, verify=False).eval()
    with torch.no_grad():
        out = inputs.call(pruned)
        ref = inputs.call(graph.masked_reference(plan))
    err = outputs_close(out, ref, atol=atol, rtol=atol)
    after = model.state_dict()
    _require(before.keys() == after.keys(), "apply changed the input model's state_dict keys")
    for k, v in before.items():
        _require(after[k].shape == v.shape and torch.equal(after[k], v),
                 f"apply modified the input model ({k})")
    cost = graph.cost(plan)
    params, macs = measured_cost(pruned, inputs)
    _require(cost.params == params, f"analytic params {cost.params} != measured {params}")
    _require(cost.macs == macs, f"analytic MACs {cost.macs} != measured {macs}")
    _require(Plan.from_json(plan.to_json()) == plan, "plan JSON round-trip changed the plan")
    return {"error": err, "params": params, "macs": macs, "pruned": pruned}
