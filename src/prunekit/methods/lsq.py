"""Least-squares machinery of submodular selection: Gram statistics, greedy, reweighting.

For a consumer layer (conv or linear) with input columns B (rows: images x
positions; columns: input channels x kernel taps, grouped by channel) and weight
W (columns x outputs), the target is Y = A W, where A is the same layer's input
in a reference network (A = B for the symmetric objective). Everything the
selection needs is in three Gram matrices, accumulated batch by batch so memory
never holds more than one batch of patches:

    G = B^T B,   H = B^T A,   K = A^T A,   C = H W,   ||Y||^2 = tr(W^T K W).

The objective of a set S of channels (their columns) is
F(S) = tr(C_S^T G_SS^-1 C_S) / ||Y||^2, the fraction of ||Y||^2 that the best
reweighted W' on the columns of S explains. The greedy keeps a residual copy of
G and C (the part orthogonal to the chosen columns), so one step costs a block
Cholesky of each candidate's k x k residual block instead of a least-squares
solve per candidate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CONSUMER_TYPES = (nn.Conv2d, nn.Linear)


def is_consumer(module: nn.Module) -> bool:
    """Layers whose input channels this machinery can reweight."""
    if isinstance(module, nn.Conv2d):
        return module.groups == 1 and module.padding_mode == "zeros"
    return isinstance(module, nn.Linear)


def patches(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The consumer's input as (batch, in_channels * taps, positions), channel-major:
    column c of B is row c here, and B^T B = sum over the batch of P P^T."""
    if isinstance(module, nn.Conv2d):
        padding = module.padding
        if isinstance(padding, str):
            if padding != "valid":
                raise ValueError(f"conv padding {padding!r} is not supported for reweighting")
            padding = 0
        return F.unfold(x, module.kernel_size, dilation=module.dilation, padding=padding,
                        stride=module.stride)
    return x.reshape(-1, x.shape[-1]).t()[None]


def with_ones(p: torch.Tensor) -> torch.Tensor:
    """:func:`patches` with a last, constant column (the intercept of the least squares)."""
    return torch.cat([p, p.new_ones(p.shape[0], 1, p.shape[2])], 1)


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """W as (in_channels * taps, out), matching :func:`patches`."""
    w = module.weight.detach()
    return w.reshape(w.shape[0], -1).t().double()


def taps(module: nn.Module) -> int:
    if isinstance(module, nn.Conv2d):
        return int(np.prod(module.kernel_size))
    return 1


def _gram(b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """sum over the batch of b[i] a[i]^T for (batch, n, positions) tensors."""
    if b.shape[2] >= b.shape[1]:
        return torch.bmm(b, a.transpose(1, 2)).sum(0)
    return b.transpose(1, 2).reshape(-1, b.shape[1]).t() @ a.transpose(1, 2).reshape(
        -1, a.shape[1])


@dataclass
class Gram:
    """Running G = B^T B and, for an asymmetric target Y = A W, C = B^T Y and ||Y||^2.

    The symmetric target (A = B) needs only G: C = G W and ||Y||^2 = tr(W^T G W).
    """

    n: int
    symmetric: bool
    G: torch.Tensor = field(init=False)
    C_: torch.Tensor | None = field(init=False, default=None)
    yy_: float = 0.0

    def __post_init__(self) -> None:
        self.G = torch.zeros(self.n, self.n, dtype=torch.float64)

    def add(self, b: torch.Tensor, a: torch.Tensor | None = None,
            W: torch.Tensor | None = None) -> None:
        """Accumulate one batch of :func:`patches`; ``a`` and ``W``: the reference input
        patches and weight matrix defining the asymmetric target."""
        b = b.float()
        self.G += _gram(b, b).double()
        if not self.symmetric:
            y = torch.matmul(W.t().float(), a.float())            # (batch, out, positions)
            c = _gram(b, y).double()
            self.C_ = c if self.C_ is None else self.C_ + c
            self.yy_ += float((y.double() ** 2).sum())

    def C(self, W: torch.Tensor) -> torch.Tensor:
        return self.G @ W if self.symmetric else self.C_

    def yy(self, W: torch.Tensor) -> float:
        if self.symmetric:
            return float(torch.einsum("io,ij,jo->", W, self.G, W))
        return self.yy_

    def rel_err(self, Wp: torch.Tensor, W: torch.Tensor) -> float:
        """||B Wp - Y||^2 / ||Y||^2."""
        yy = self.yy(W)
        err = float(torch.einsum("io,ij,jo->", Wp, self.G, Wp)) \
            - 2 * float((Wp * self.C(W)).sum()) + yy
        return max(err, 0.0) / max(yy, 1e-300)


@dataclass
class Problem:
    """One consumer's part of a group's objective.

    ``unit_cols[j]``: the columns of candidate unit j (local to the group);
    ``fixed``: columns always kept (other groups' channels, frozen channels).
    """

    G: torch.Tensor
    C: torch.Tensor
    yy: float
    unit_cols: list[np.ndarray]
    fixed: np.ndarray

    @classmethod
    def of(cls, gram: Gram, W: torch.Tensor, unit_cols: list[np.ndarray],
           fixed: np.ndarray) -> "Problem":
        return cls(gram.G, gram.C(W), max(gram.yy(W), 1e-300), unit_cols, fixed)


def _ridge(G: torch.Tensor, rel: float) -> float:
    d = torch.diagonal(G)
    return rel * float(d.mean()) + 1e-30 if len(d) else 1e-30


class _Residual:
    """Residual G and C after projecting out the chosen columns."""

    def __init__(self, p: Problem, rel_ridge: float) -> None:
        self.p = p
        self.G = p.G.clone()
        self.C = p.C.clone()
        self.eps = _ridge(p.G, rel_ridge)
        self.value = 0.0          # explained ||Y||^2 so far
        if len(p.fixed):
            self.add(p.fixed)

    def add(self, cols: np.ndarray) -> None:
        idx = torch.as_tensor(cols, dtype=torch.long)
        blk = self.G[idx][:, idx] + self.eps * torch.eye(len(idx), dtype=torch.float64)
        L, info = torch.linalg.cholesky_ex(blk)
        if int(info) != 0:  # numerically dependent on what is chosen: contributes nothing
            return
        P = torch.linalg.solve_triangular(L, self.G[idx], upper=False)
        Q = torch.linalg.solve_triangular(L, self.C[idx], upper=False)
        self.G -= P.t() @ P
        self.C -= P.t() @ Q
        self.value += float((Q * Q).sum())

    def gains(self, cands: list[np.ndarray]) -> np.ndarray:
        """Explained ||Y||^2 each candidate block would add (batched, same block size)."""
        out = np.zeros(len(cands))
        by_size: dict[int, list[int]] = {}
        for i, c in enumerate(cands):
            by_size.setdefault(len(c), []).append(i)
        for size, which in by_size.items():
            idx = torch.as_tensor(np.stack([cands[i] for i in which]), dtype=torch.long)
            blk = self.G[idx[:, :, None], idx[:, None, :]]
            blk = blk + self.eps * torch.eye(size, dtype=torch.float64)
            L, info = torch.linalg.cholesky_ex(blk)
            rhs = self.C[idx]                                   # (m, size, out)
            Z = torch.linalg.solve_triangular(L, rhs, upper=False)
            g = (Z * Z).sum(dim=(1, 2))
            g[info != 0] = 0.0
            out[which] = g.clamp_min(0).numpy()
        return out


def greedy(problems: list[Problem], candidates: np.ndarray, k: int, *, stochastic: float = 0.0,
           seed: int = 0, rel_ridge: float = 1e-6) -> tuple[list[int], list[float]]:
    """Greedily pick up to ``k`` of ``candidates`` (local unit indices) maximising the mean of
    the problems' F. Returns the picks in order and F after each pick.

    ``stochastic`` = epsilon of stochastic greedy: each step scores a random sample of
    ceil(n / k * ln(1 / epsilon)) of the remaining candidates (0 = exact greedy).
    """
    res = [_Residual(p, rel_ridge) for p in problems]
    rng = np.random.default_rng(seed)
    left = [int(c) for c in candidates]
    picks: list[int] = []
    values: list[float] = []
    sample = len(left) if stochastic <= 0 else \
        max(1, int(np.ceil(len(left) / max(k, 1) * np.log(1.0 / stochastic))))
    for _ in range(min(k, len(left))):
        pool = left if sample >= len(left) else \
            [left[i] for i in rng.choice(len(left), size=sample, replace=False)]
        total = np.zeros(len(pool))
        for r in res:
            total += r.gains([r.p.unit_cols[u] for u in pool]) / r.p.yy
        best = pool[int(np.argmax(total))]
        for r in res:
            r.add(r.p.unit_cols[best])
        left.remove(best)
        picks.append(best)
        values.append(float(np.mean([r.value / r.p.yy for r in res])))
    return picks, values


def objective(problems: list[Problem], chosen: list[int], rel_ridge: float = 1e-6) -> float:
    """F of a given set (mean over problems), by the same residual updates."""
    vals = []
    for p in problems:
        r = _Residual(p, rel_ridge)
        if chosen:
            r.add(np.concatenate([p.unit_cols[u] for u in chosen]))
        vals.append(r.value / p.yy)
    return float(np.mean(vals))


def solve(gram: Gram, W: torch.Tensor, keep_cols: np.ndarray,
          rel_ridge: float = 1e-6) -> torch.Tensor:
    """Least-squares W' on ``keep_cols``: argmin ||B_S W' - A W||^2, as a (B's columns x out)
    matrix with the other rows zero. B may have fewer columns than A (a pruned layer)."""
    idx = torch.as_tensor(keep_cols, dtype=torch.long)
    G = gram.G[idx][:, idx]
    G = G + _ridge(G, rel_ridge) * torch.eye(len(idx), dtype=torch.float64)
    C = gram.C(W)[idx]
    L, info = torch.linalg.cholesky_ex(G)
    if int(info) == 0:
        sol = torch.cholesky_solve(C, L)
    else:
        sol = torch.linalg.lstsq(G, C).solution
    out = torch.zeros(gram.n, W.shape[1], dtype=torch.float64)
    out[idx] = sol
    return out


def set_weight(module: nn.Module, W: torch.Tensor) -> None:
    """Write W (columns x out, as :func:`weight_matrix`) back into the module."""
    with torch.no_grad():
        w = module.weight
        w.copy_(W.t().reshape(w.shape).to(w.dtype))
