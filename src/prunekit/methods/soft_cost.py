"""The engine's cost model as a differentiable function of per-unit keep values.

The engine writes MACs (and params) as a sum of terms coeff * prod_f kept(f), where
kept(f) counts the kept units of a factor f (a set of units, e.g. a conv's input
channels). Replacing the 0/1 keep flags with values in [0, 1] gives a polynomial
in those values: it equals the engine's exact cost for 0/1 masks, and its
gradient says how much each unit's keep value costs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..graph import ChannelGraph


class SoftCost(nn.Module):
    """``metric``'s cost polynomial of ``graph``, or ``polynomial`` when given (a latency
    model's, :meth:`prunekit.latency.LatencyModel.polynomial`)."""

    def __init__(self, graph: ChannelGraph, metric: str = "macs", polynomial: Any = None
                 ) -> None:
        super().__init__()
        prod = polynomial if polynomial is not None else graph.cost_polynomial(metric)
        n_f = len(prod.offsets)
        lengths = np.diff(np.append(prod.offsets, len(prod.flat))).astype(np.int64)
        per_term = np.bincount(prod.owner, minlength=len(prod.coeffs)) if n_f else \
            np.zeros(len(prod.coeffs), dtype=np.int64)
        width = max(1, int(per_term.max()) if len(per_term) else 1)
        table = np.full((len(prod.coeffs), width), n_f, dtype=np.int64)  # n_f: the "1" slot
        fill = np.zeros(len(prod.coeffs), dtype=np.int64)
        for f, t in enumerate(prod.owner.tolist()):
            table[t, fill[t]] = f
            fill[t] += 1
        self.n_units = graph.n_units
        self.n_factors = n_f
        self.register_buffer("flat", torch.as_tensor(prod.flat, dtype=torch.long), False)
        self.register_buffer("factor_of", torch.as_tensor(np.repeat(np.arange(n_f), lengths),
                                                          dtype=torch.long), False)
        self.register_buffer("table", torch.as_tensor(table), False)
        self.register_buffer("coeffs", torch.as_tensor(prod.coeffs, dtype=torch.float64), False)

    def forward(self, keep: torch.Tensor) -> torch.Tensor:
        """``keep``: one value per unit of the graph (float); returns the cost (float64)."""
        keep = keep.double()
        sums = torch.zeros(self.n_factors, dtype=torch.float64, device=keep.device)
        sums = sums.index_add(0, self.factor_of, keep[self.flat])
        sums = torch.cat([sums, torch.ones(1, dtype=torch.float64, device=keep.device)])
        return (self.coeffs * sums[self.table].prod(dim=1)).sum()
