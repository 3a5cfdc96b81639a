"""Network pruning spaces (He et al., 2023): sample populations of subnetworks, compare
their error distributions per FLOPs regime, find what winners share, refine the space.

- A :class:`Space` parametrises subnetworks by keep ratios shared within *units* of
  the engine's groups: ``"stage"`` (one ratio per sub-network of :func:`split`, i.e.
  per ResNet stage), or ``"group"`` (one per group); ratios lie in
  [``min_ratio``, 1], a group keeps round(ratio * width) channels (at least one),
  chosen by the ``criterion`` ranking. A *regime* is a band of MACs (fractions of
  the dense model); an optional band of the MACs-per-parameter ratio is the
  refinement constraint.
- Sampling is **rejection sampling**: ratios drawn uniformly from the box, kept when
  the subnetwork's exact MACs (engine cost, no surgery) lie in the regime (and its
  ratio in the band), so samples are uniform over the box's part inside the regime.
- Evaluation proxy (:class:`Evaluator`): inherit the original's weights, fine-tune
  ``steps`` SGD steps (data order seeded by the sample's index), measure the error
  on held-out images. Samples are independent: they go through the same executors
  as the evolutionary search (in-process or Ray) with identical results.
- Analysis: error EDFs F(e) = (1/n) #{e_i < e}; the FLOPs-to-parameter ratio
  rho = MACs / params of a subnetwork; *parameter buckets* are the quantile bins
  of parameter count within a regime; the best rho per regime is estimated by the
  bootstrap of Radosavovic et al. (2020): many times, draw 25% of the samples and
  keep the rho of the lowest error; the median and 95% interval of those winners
  estimate the optimal rho. The conjecture that an approximately optimal rho
  exists is called supported when that interval spans at most half of the
  regime's rho range and the winners' rho lie closer to it than the population's.
- Refinement: the same space restricted to the bootstrap interval of rho.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TargetError
from ..graph import ChannelGraph
from ..importance import CRITERIA
from ..train.engine import logits_of
from .split import split
from .widths import WidthPlanner


PARAMS = ("auto", "stage", "group")


@dataclass(frozen=True)
class Space:
    """``param``: "stage" (one ratio per sub-network of :func:`split` into ``parts``),
    "group" (one per group) or "auto" (stages where the graph divides into at least two
    sub-networks with groups, else groups)."""

    param: str = "stage"
    regime: tuple[float, float] = (0.45, 0.55)  # MACs (or predicted latency) / dense
    min_ratio: float = 0.1
    rho_band: tuple[float, float] | None = None  # MACs per parameter (refinement)
    criterion: str = "l1"
    parts: int = 3
    metric: str = "macs"        # what the regime bounds: "macs", or "latency" (predicted)

    def __post_init__(self) -> None:
        if self.metric not in ("macs", "latency"):
            raise TargetError(f"a space's regime bounds macs or latency, got {self.metric!r}")
        if self.param not in PARAMS:
            raise TargetError(f"param must be one of {PARAMS}, got {self.param!r}")
        if self.parts < 1:
            raise TargetError(f"parts must be >= 1, got {self.parts}")
        lo, hi = self.regime
        if not 0 < lo < hi <= 1:
            raise TargetError(f"regime must satisfy 0 < lo < hi <= 1, got {self.regime}")
        if not 0 < self.min_ratio <= 1 or self.criterion not in CRITERIA:
            raise TargetError("min_ratio in (0, 1] and a known criterion are required")
        object.__setattr__(self, "regime", (float(lo), float(hi)))
        if self.rho_band is not None:
            object.__setattr__(self, "rho_band", tuple(float(v) for v in self.rho_band))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Space":
        d = json.loads(text)
        d["regime"] = tuple(d["regime"])
        d["rho_band"] = tuple(d["rho_band"]) if d.get("rho_band") else None
        return cls(**d)


def _auto_units(graph: ChannelGraph, ids: list[str], parts: int) -> list[list[str]]:
    """One ratio per stage where the graph divides into two or more sub-networks with
    groups, plus one per group no stage holds (a residual stream through the whole
    network); one per group where it does not divide."""
    try:
        stages = [list(s.groups) for s in split(graph, parts, ids) if s.groups]
    except TargetError:
        stages = []
    if len(stages) < 2:
        return [[g] for g in ids]
    inside = {g for st in stages for g in st}
    return stages + [[g] for g in ids if g not in inside]


class Sampler:
    """Draws subnetworks of a model from a :class:`Space`."""

    def __init__(self, model: nn.Module, example: torch.Tensor, space: Space,
                 graph: ChannelGraph | None = None, latency: Any = None) -> None:
        self.space, self.latency = space, latency
        if graph is None and latency is not None:
            graph = latency.graph
        self.graph = graph or ChannelGraph.build(model, example)
        ids = [g.id for g in self.graph.prunable_groups]
        self.units = [[g] for g in ids]
        if space.param == "stage":
            self.units = [list(s.groups) for s in split(self.graph, space.parts, ids) if s.groups]
        elif space.param == "auto" and ids:
            self.units = _auto_units(self.graph, ids, space.parts)
        if not self.units:
            raise TargetError("the model has no prunable group for a pruning space")
        self.planner = WidthPlanner(self.graph, model, space.criterion)
        dense = self.graph.cost()
        self.dense_macs = dense.macs

    def widths(self, ratios: Sequence[float]) -> dict[str, int]:
        out = {}
        for r, unit in zip(ratios, self.units):
            for gid in unit:
                g = self.graph.group(gid)
                out[gid] = int(min(g.width, max(1, round(float(r) * g.width))))
        return out

    def keep(self, widths: dict[str, int]) -> np.ndarray:
        return self.planner.keep(widths)

    def describe(self, ratios: Sequence[float]) -> dict[str, Any]:
        w = self.widths(ratios)
        keep = self.keep(w)
        cost = self.graph.cost_of_mask(keep)
        d = {"ratios": [round(float(r), 6) for r in ratios], "widths": w,
             "macs": cost.macs, "params": cost.params,
             "macs_ratio": cost.macs / self.dense_macs, "rho": cost.macs / cost.params}
        if self.latency is not None:
            d["latency_ratio"] = self.latency.predict(keep) / self.latency.predict()
        d["cost_ratio"] = d["macs_ratio"] if self.space.metric == "macs" else \
            self._latency_ratio(d)
        return d

    def _latency_ratio(self, d: dict[str, Any]) -> float:
        if "latency_ratio" not in d:
            raise TargetError("a latency regime needs a latency model (Sampler(latency=...))")
        return d["latency_ratio"]

    def accepts(self, d: dict[str, Any]) -> bool:
        lo, hi = self.space.regime
        ok = lo <= d["cost_ratio"] <= hi
        if ok and self.space.rho_band is not None:
            ok = self.space.rho_band[0] <= d["rho"] <= self.space.rho_band[1]
        return ok

    def sample(self, n: int, seed: int = 0, max_tries: int = 200_000) -> list[dict[str, Any]]:
        rng = np.random.default_rng(seed)
        out, tries = [], 0
        while len(out) < n:
            tries += 1
            if tries > max_tries:
                raise TargetError(f"only {len(out)} of {n} samples fell in the regime "
                                  f"{self.space.regime} after {max_tries} draws; widen it")
            d = self.describe(rng.uniform(self.space.min_ratio, 1.0, len(self.units)))
            if self.accepts(d):
                d["index"] = len(out)
                out.append(d)
        return out


# ------------------------------------------------------------------ evaluation proxy
class Evaluator:
    """Fine-tunes and scores one sample; built once per worker."""

    def __init__(self, model: nn.Module, example: torch.Tensor, space: Space,
                 train: tuple[torch.Tensor, torch.Tensor], held: tuple[torch.Tensor, torch.Tensor],
                 steps: int = 50, lr: float = 0.01, batch: int = 64, seed: int = 0) -> None:
        self.model = model.eval()
        self.sampler = Sampler(model, example, space)
        self.train, self.held = train, held
        self.steps, self.lr, self.batch, self.seed = steps, lr, batch, seed

    def subnetwork(self, widths: dict[str, int]) -> nn.Module:
        return self.sampler.graph.apply(self.model, self.sampler.planner.plan(widths))

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        torch.manual_seed(self.seed * 100_003 + sample["index"])
        net = self.subnetwork(sample["widths"]).train()
        opt = torch.optim.SGD(net.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-4)
        gen = torch.Generator().manual_seed(self.seed * 100_003 + sample["index"])
        x, y = self.train
        for _ in range(self.steps):
            idx = torch.randint(0, len(x), (self.batch,), generator=gen)
            loss = F.cross_entropy(logits_of(net(x[idx])), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        net.eval()
        wrong = 0
        with torch.no_grad():
            for xb, yb in zip(self.held[0].split(500), self.held[1].split(500)):
                wrong += int((logits_of(net(xb)).argmax(1) != yb).sum())
        return {**sample, "error": round(100.0 * wrong / len(self.held[1]), 4)}

    def evaluate(self, sample: dict[str, Any]) -> dict[str, Any]:
        return self(sample)


def evaluate_samples(samples: list[dict[str, Any]], factory_args: tuple,
                     executor: str = "inprocess", workers: int = 2) -> list[dict[str, Any]]:
    """Evaluate samples in order through an executor (same results on any backend)."""
    from .executor import InProcess, RayExecutor
    ex = InProcess(Evaluator, factory_args) if executor == "inprocess" else \
        RayExecutor(Evaluator, factory_args, workers=workers)
    try:
        return ex.map("evaluate", samples)
    finally:
        ex.close()


# ------------------------------------------------------------------ analysis
def edf(errors: Sequence[float], grid: Sequence[float]) -> np.ndarray:
    """F(e) = fraction of errors strictly below e, at each e of ``grid``."""
    e = np.sort(np.asarray(errors, dtype=float))
    return np.searchsorted(e, np.asarray(grid, dtype=float), side="left") / max(len(e), 1)


def param_buckets(params: Sequence[int], n: int = 4) -> np.ndarray:
    """Bucket index (0..n-1) of each subnetwork by parameter-count quantiles."""
    p = np.asarray(params, dtype=float)
    edges = np.quantile(p, np.linspace(0, 1, n + 1)[1:-1])
    return np.searchsorted(edges, p, side="right")


def best_rho(samples: list[dict[str, Any]], draws: int = 1000, frac: float = 0.25,
             seed: int = 0) -> dict[str, Any]:
    """Bootstrap estimate of the MACs-per-parameter ratio of the best subnetworks."""
    rho = np.array([s["rho"] for s in samples], dtype=float)
    err = np.array([s["error"] for s in samples], dtype=float)
    rng = np.random.default_rng(seed)
    k = max(1, int(round(frac * len(samples))))
    wins = np.array([rho[idx[np.argmin(err[idx])]]
                     for idx in (rng.choice(len(samples), k, replace=False)
                                 for _ in range(draws))])
    lo, med, hi = np.quantile(wins, [0.025, 0.5, 0.975])
    span = rho.max() - rho.min()
    top = err <= np.quantile(err, 0.1)
    dist_top = float(np.median(np.abs(rho[top] - med)))
    dist_all = float(np.median(np.abs(rho - med)))
    buckets = param_buckets([s["params"] for s in samples])
    per_bucket = []
    for b in np.unique(buckets):
        sel = np.nonzero(buckets == b)[0]
        j = sel[np.argmin(err[sel])]
        per_bucket.append({"bucket": int(b), "n": int(len(sel)), "best_rho": float(rho[j]),
                           "best_error": float(err[j])})
    return {"median": float(med), "interval": [float(lo), float(hi)],
            "rho_range": [float(rho.min()), float(rho.max())],
            "interval_share": float((hi - lo) / span) if span > 0 else 0.0,
            "winners_distance": dist_top, "population_distance": dist_all,
            "supported": bool(span > 0 and (hi - lo) <= 0.5 * span and dist_top < dist_all),
            "per_bucket": per_bucket}


def refine(space: Space, analysis: dict[str, Any]) -> Space:
    """The space restricted to the bootstrap interval of the best MACs-per-parameter ratio."""
    return replace(space, rho_band=tuple(analysis["interval"]))


def search(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The winner of an evaluated population: the lowest proxy error."""
    return min(samples, key=lambda s: (s["error"], -s["macs"]))


def held_out(x: torch.Tensor, y: torch.Tensor, n: int, seed: int = 0
             ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Split (x, y) into a fine-tuning part and ``n`` held-out images (seeded)."""
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    h, t = perm[:n], perm[n:]
    return (x[t], y[t]), (x[h], y[h])
