"""Analytic params and MACs of a plan, without surgery.

MACs follow ``torch.utils.flop_counter.FlopCounterMode`` exactly (MACs = FLOPs/2):
only convolutions, matrix products and attention count; normalisation,
activations, pooling and additions do not. Each cost term is a coefficient
times the kept sizes of a few dims; a plan is a bool mask over units, so one
evaluation is a handful of vectorised numpy reductions, cheap enough for searches that cost thousands of plans.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .builder import Builder
    from .core import ChannelGraph


def _cpu_flash_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of PyTorch's CPU flash attention, counted like its math path (two bmm)."""
    *batch, seq_q, e = query_shape
    seq_k, ev = key_shape[-2], value_shape[-1]
    n = int(np.prod(batch))
    return 2 * n * seq_q * seq_k * (e + ev)


def flop_counter():
    """``FlopCounterMode`` as the engine defines MACs: PyTorch's own formulas, plus its CPU
    flash-attention kernel (which it leaves uncounted, so the count of the same attention
    would depend on its arguments: a causal or grouped-query call goes to that kernel)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    return FlopCounterMode(display=False, custom_mapping={op: _cpu_flash_flop})


@dataclass(frozen=True)
class Cost:
    params: int
    macs: int


@dataclass(frozen=True)
class CostPolynomial:
    """A cost as ``sum_t coeffs[t] * prod_{f: owner[f] == t} kept(f)``, where factor ``f``
    is the set of units ``flat[offsets[f]:offsets[f + 1]]`` (the last one runs to the end
    of ``flat``) and ``kept(f)`` counts its kept units. Exact for 0/1 keep masks; with
    keep values in [0, 1] it is a differentiable relaxation (``methods.soft_cost``)."""

    coeffs: np.ndarray
    offsets: np.ndarray
    flat: np.ndarray
    owner: np.ndarray


class _Products:
    """sum_t coeff_t * prod_f kept(f) for factors given as unit-index arrays."""

    def __init__(self, coeffs: list[int], factors: list[list[np.ndarray]]) -> None:
        self.coeffs = np.asarray(coeffs, dtype=np.int64)
        flat, offsets, owner = [], [], []
        pos = 0
        for t, fs in enumerate(factors):
            for f in fs:
                flat.append(f)
                offsets.append(pos)
                owner.append(t)
                pos += len(f)
        self.flat = np.concatenate(flat) if flat else np.zeros(0, dtype=np.int64)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.owner = np.asarray(owner, dtype=np.int64)

    def total(self, keep: np.ndarray) -> int:
        prod = np.ones(len(self.coeffs), dtype=np.int64)
        if len(self.offsets):
            kept = np.add.reduceat(keep[self.flat].astype(np.int64), self.offsets)
            np.multiply.at(prod, self.owner, kept)
        return int((self.coeffs * prod).sum())

    def touching(self, units: np.ndarray) -> int:
        """Full-width total of the terms with a factor that holds any of ``units`` (bool)."""
        hit = np.zeros(len(self.coeffs), dtype=bool)
        if len(self.offsets):
            any_f = np.logical_or.reduceat(units[self.flat], self.offsets)
            np.logical_or.at(hit, self.owner, any_f)
        full = np.ones(len(self.coeffs), dtype=np.int64)
        if len(self.offsets):
            np.multiply.at(full, self.owner, np.diff(np.append(self.offsets, len(self.flat))))
        return int((self.coeffs * full)[hit].sum())


class CostModel:
    def __init__(self, graph: "ChannelGraph", builder: "Builder") -> None:
        unit_of = graph.unit_of
        self._macs = _Products([t.coeff for t in builder.terms],
                               [[unit_of[f] for f in t.factors] for t in builder.terms])
        coeffs, factors = [], []
        recorded: dict[str, dict[int, np.ndarray]] = {}
        for (fqn, dim), ids in builder.slices.items():
            recorded.setdefault(fqn, {})[dim] = unit_of[ids]
        for name, p in builder.root.named_parameters():
            dims = recorded.get(name, {})
            coeffs.append(int(np.prod([s for d, s in enumerate(p.shape) if d not in dims])))
            factors.append([dims[d] for d in sorted(dims)])
        self._params = _Products(coeffs, factors)

    def polynomial(self, metric: str) -> CostPolynomial:
        prod = self._macs if metric == "macs" else self._params
        return CostPolynomial(*(a.copy() for a in (prod.coeffs, prod.offsets, prod.flat,
                                                   prod.owner)))

    def macs(self, keep: np.ndarray) -> int:
        return self._macs.total(keep)

    def params(self, keep: np.ndarray) -> int:
        return self._params.total(keep)

    def touching(self, units: np.ndarray) -> tuple[int, int]:
        """(params, MACs) of the full model's layers that hold any of ``units`` (bool)."""
        return self._params.touching(units), self._macs.touching(units)
