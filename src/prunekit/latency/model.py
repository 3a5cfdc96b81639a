"""A latency model of one model on one target, and its validation.

    predicted(keep) = alpha * sum_layers table_l(kept in_l, kept out_l)
                      + beta * activation_elements(keep) + delta * op_macs(keep) + gamma

The conv/linear layers are timed standalone at candidate widths (:mod:`.table`): that is
where the widths act, bilinearly in (cin, cout). Everything else (norms, activations,
adds, pooling; fused away by ONNX Runtime, separate kernels in eager PyTorch) scales with
the size of the tensors it touches, ``activation_elements``, plus a fixed per-op
overhead no width changes. Ops that multiply-accumulate without a module (attention's
products, matmuls, einsums) do work in proportion to their contracted dimensions too,
which their output size does not show (``q @ k.T`` contracts the head width and outputs
tokens x tokens): ``op_macs`` is the engine's MAC count of those ops
(:meth:`~prunekit.graph.ChannelGraph.op_macs`; zero in a pure conv net).
``alpha``, ``beta``, ``delta`` and ``gamma`` (non-negative) are fitted
by least squares on whole-model measurements of the dense model and of uniformly
thinned plans, so the sum of standalone timings is corrected for what running inside
the whole model changes (caches, fusion, dispatch). :meth:`LatencyModel.validate`
compares prediction and measurement on any plans.

Widths off the backend's favourite multiple cost more inside the whole model than
standalone: ONNX Runtime's CPU convolutions run in a channel-blocked layout and fall
back to plain layout, with reorders around them, when a width is off the block. So
calibration also fits ``penalty * misaligned(keep, b)``, the
activation elements whose channel count is off a multiple ``b`` of 4, 8 or 16, and
keeps the ``b`` that explains the measurements best, if any explains them markedly
better than none (:attr:`LatencyModel.align`). Budgets under such a model keep widths
on multiples of ``align`` (the projector's rounding), where the penalty is zero."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..graph import ChannelGraph
from ..graph.profile import Layer
from .table import LayerTable, signature
from .target import Target
from .timers import Timer, timer_for

__all__ = ["ALIGNMENTS", "Bound", "LatencyModel", "batched", "time_model"]

ALIGNMENTS = (4, 8, 16)    # channel multiples a misalignment penalty is fitted for


def batched(inputs: Sequence[Any], batch: int) -> tuple[Any, ...]:
    """The example inputs with their batch dim (dim 0) repeated to ``batch``."""
    out = []
    for x in inputs:
        if isinstance(x, torch.Tensor) and x.dim() > 0:
            reps = -(-batch // x.shape[0])
            x = x.repeat(reps, *([1] * (x.dim() - 1)))[:batch]
        out.append(x)
    return tuple(out)


class Bound(nn.Module):
    """``model`` called the way its example inputs call it (positional tensors, keyword
    arguments, constants), taking only the tensors, in order: what a timer (and an ONNX
    export) runs."""

    def __init__(self, model: nn.Module, example: Any) -> None:
        super().__init__()
        self.model, self.example = model, example

    def tensors(self, batch: int) -> tuple[torch.Tensor, ...]:
        return batched(self.example.tensors(), batch)

    def forward(self, *tensors: torch.Tensor) -> Any:
        return self.example.with_tensors(tensors).call(self.model)


def time_model(timer: Timer, graph: ChannelGraph, model: nn.Module, batch: int) -> float:
    """Measured seconds of ``model`` on ``graph``'s example inputs at ``batch``."""
    bound = Bound(model.eval(), graph.inputs)
    return float(timer.time(bound, bound.tensors(batch)))


@dataclass
class _Entry:
    layer: Layer
    table: LayerTable


class LatencyModel:
    """Predicted seconds of ``graph``'s model under any unit mask, on ``target``."""

    def __init__(self, graph: ChannelGraph, target: Target, timer: Timer | None = None,
                 cache: str | os.PathLike[str] | None = None, points: int = 6) -> None:
        self.graph, self.target = graph, target
        self.timer = timer if timer is not None else timer_for(target)
        tables: dict[str, LayerTable] = {}
        self.entries: list[_Entry] = []
        for layer in graph.layers():
            mod = graph.traced.get_submodule(layer.module)
            sig = signature(layer, mod, target.batch)
            key = repr(sorted(sig.items()))
            if key not in tables:
                tables[key] = LayerTable(sig, target, self.timer, cache, points)
            self.entries.append(_Entry(layer, tables[key]))
        self.tables = list(tables.values())
        per = max(1, _example_batch(graph))      # the records are at the example's batch
        self.acts = [(a.coeff * target.batch // per, a.factors) for a in graph.activations()]
        self.ops = [(a.coeff * target.batch // per, a.factors) for a in graph.op_macs()]
        self.coef = np.array([1.0, 0.0, 0.0, 0.0])  # alpha, beta, delta, gamma (uncalibrated)
        self.align, self.penalty = 1, 0.0         # widths off multiples of align pay penalty
        self.calibration: list[dict[str, float]] = []
        self.fit: dict[str, float] = {}
        self.dense_s = 0.0                        # the dense model's measured seconds
        self._samples: list[tuple[np.ndarray, float]] = []   # (keep, measured seconds)

    # ------------------------------------------------------------- building
    def measure_tables(self, progress: bool = False) -> int:
        """Time every grid point not in the cache; returns how many were timed."""
        todo = sum(t.missing() for t in self.tables)
        bar = None
        if progress and todo:
            from ..progress import bar as make_bar
            bar = make_bar(total=todo, desc=f"latency table ({self.target.backend})",
                           unit="point")
        before = sum(t.measured for t in self.tables)
        for t in self.tables:
            t.fill((lambda: bar.update(1)) if bar is not None else (lambda: None))
        if bar is not None:
            bar.close()
        return sum(t.measured for t in self.tables) - before

    def calibrate(self, model: nn.Module, plans: Sequence[np.ndarray] | None = None) -> None:
        """Fit alpha, beta, delta, gamma (and the misalignment penalty, see the module) on
        whole-model measurements of ``model`` pruned to each keep mask of ``plans``
        (default: dense; uniform keeps of 3/4, 1/2, 1/4 and 1/10; the same at 1/2 and 1/4
        with widths on multiples of 16; four seeded random plans whose groups keep
        different fractions, so layers and other ops are told apart where widths differ
        from layer to layer; and two more random plans on exact multiples of each of
        :data:`ALIGNMENTS`, so nested multiples are told apart: a backend that blocks by
        16 is slow on multiples of 8 that are not of 16, one that blocks by 4 is not).
        Among the multiples whose penalty halves the residual, the one with the least
        residual is kept. Each plan is measured relative to the dense model
        (:func:`~prunekit.latency.measured_ratio`, five alternating pairs) and scaled by
        one dense measurement, so the machine's drift does not pass for a width effect."""
        masks = list(plans) if plans is not None else \
            [self.uniform(f) for f in (1.0, 0.75, 0.5, 0.25, 0.1)] + \
            [self.uniform(f, align=16) for f in (0.5, 0.25)] + \
            [self.mixed(seed) for seed in range(4)] + \
            [self.mixed(100 * a + seed, align=a) for a in ALIGNMENTS for seed in range(2)]
        from .measured import measured_ratio
        dense = self.measure(model, np.ones(self.graph.n_units, dtype=bool))
        self.dense_s = dense
        samples = []
        for keep in masks:     # each against the dense model, alternating (drift cancels)
            pruned = self.graph.apply(model, self.graph.plan_of_mask(keep), verify=False)
            samples.append((keep, dense * measured_ratio(self, model, pruned, pairs=5)))
        self._samples = samples
        self._fit()
        self.calibration = [{"measured": float(m), "predicted": self.predict(k)}
                            for k, m in samples]

    @property
    def calibrated(self) -> bool:
        """Whether :meth:`calibrate` has fitted the model to measurements."""
        return bool(self._samples)

    def refine(self, keep: np.ndarray, ratio: float) -> None:
        """Add a measurement, ``keep``'s latency as ``ratio`` of the dense model's (as
        :func:`~prunekit.latency.measured_ratio` measures it), to the calibration and
        fit again: the plans a search makes are where the model must be right, and the
        ones it has measured teach it there. The fitted multiple (:attr:`align`) stays:
        the plans measured so far were rounded to it. Needs :meth:`calibrate` first."""
        if not self.calibrated:
            raise RuntimeError("refine needs a calibrated latency model")
        self._samples = self._samples + [(np.asarray(keep, dtype=bool),
                                          self.dense_s * float(ratio))]
        self._fit(only=self.align)

    def _fit(self, only: int | None = None) -> None:
        """Coefficients, alignment and penalty by least squares on the samples (``only``:
        the alignment is this one, 1 for none, instead of the best explaining one)."""
        masks = [k for k, _ in self._samples]
        A = np.array([self.features(k) for k in masks])
        b = np.array([m for _, m in self._samples])
        coef, rss = _nnls(A, b)
        self.coef, self.align, self.penalty = coef, 1, 0.0
        self.fit = {"rss": rss, "samples": len(masks)}
        for align in ALIGNMENTS if only is None else [a for a in ALIGNMENTS if a == only]:
            extra = np.array([[self.misaligned(k, align)] for k in masks])
            if only is None and (not extra.any() or not (~extra.astype(bool)).any()):
                continue
            c, r = _nnls(np.hstack([A, extra]), b)
            self.fit[f"rss_align{align}"] = r
            if only is not None or c[4] > 0 and c[0] > 0 and r < 0.5 * self.fit["rss"] and \
                    (self.align == 1 or r < self.fit[f"rss_align{self.align}"]):
                self.coef, self.align, self.penalty = c[:4], align, float(c[4])
        if self.coef[0] == 0:               # degenerate fit: keep the tables' own sum
            self.coef = np.array([1.0, 0.0, 0.0, max(0.0, float(np.min(b - A[:, 0])))])
            self.penalty = 0.0
            if only is None:
                self.align = 1

    # ------------------------------------------------------------- predicting
    def widths(self, keep: np.ndarray, e: _Entry) -> tuple[int, int]:
        lay = e.layer
        dim = 1 if lay.kind == "conv" else -1
        cin = int(keep[lay.in_units].sum()) if lay.in_units is not None else lay.in_shape[dim]
        cout = int(keep[lay.out_units].sum()) if lay.out_units is not None \
            else lay.out_shape[dim]
        return cin, cout

    def features(self, keep: np.ndarray) -> np.ndarray:
        """(sum of the layers' table latencies, activation elements, MACs of the other
        ops, 1) under ``keep``."""
        layers = sum(e.table.interp(*self.widths(keep, e)) for e in self.entries)
        return np.array([layers, _products(self.acts, keep), _products(self.ops, keep), 1.0])

    def misaligned(self, keep: np.ndarray, align: int) -> float:
        """Activation elements under ``keep`` with a channel count off a multiple of
        ``align``."""
        total = 0.0
        for c, fs in self.acts:
            counts = [int(keep[f].sum()) for f in fs]
            if any(n % align for n in counts):
                total += c * float(np.prod(counts))
        return total

    def predict(self, keep: np.ndarray | None = None) -> float:
        """Predicted seconds per batch under ``keep`` (default: dense)."""
        if keep is None:
            keep = np.ones(self.graph.n_units, dtype=bool)
        out = float(self.features(keep) @ self.coef)
        return out + self.penalty * self.misaligned(keep, self.align) if self.penalty else out

    def polynomial(self) -> Any:
        """The prediction as a polynomial in kept counts (a
        :class:`prunekit.graph.cost.CostPolynomial` with float coefficients, for methods
        that need a differentiable cost): each layer's table fitted by least squares as
        a + b*cin + c*cout + d*cin*cout, the activation terms as they are. The
        misalignment penalty is left out: it is zero where widths are on multiples of
        :attr:`align`, as budgets keep them."""
        from ..graph.cost import CostPolynomial
        alpha, beta, delta, gamma = (float(c) for c in self.coef)
        terms: list[tuple[float, list[np.ndarray]]] = [(gamma, [])]
        for e in self.entries:
            a, b, c, d = _bilinear(e.table)
            lay = e.layer
            dim = 1 if lay.kind == "conv" else -1
            fin, fout = lay.in_units, lay.out_units
            cin = 1.0 if fin is not None else float(lay.in_shape[dim])
            cout = 1.0 if fout is not None else float(lay.out_shape[dim])
            if e.table.sig["kind"] == "conv" and e.table.sig["groups"] > 1:
                fin, cin = None, float(e.table.sig["cin"])      # runs along the output only
            ins = [fin] if fin is not None else []
            outs = [fout] if fout is not None else []
            terms += [(alpha * a, []), (alpha * b * cin, ins), (alpha * c * cout, outs),
                      (alpha * d * cin * cout, ins + outs)]
        terms += [(beta * coeff, list(fs)) for coeff, fs in self.acts]
        terms += [(delta * coeff, list(fs)) for coeff, fs in self.ops]
        coeffs, offsets, flat, owner, pos = [], [], [], [], 0
        for t, (coef, fs) in enumerate(terms):
            coeffs.append(coef)
            for f in fs:
                offsets.append(pos)
                owner.append(t)
                flat.append(np.asarray(f, dtype=np.int64))
                pos += len(f)
        return CostPolynomial(np.asarray(coeffs, dtype=np.float64),
                              np.asarray(offsets, dtype=np.int64),
                              np.concatenate(flat) if flat else np.zeros(0, dtype=np.int64),
                              np.asarray(owner, dtype=np.int64))

    # ------------------------------------------------------------- rounding
    def round_widths(self, keep: np.ndarray, groups: Sequence[Any], priority: np.ndarray,
                     window: int = 8, fits: Any = None) -> np.ndarray:
        """Latency-aware rounding: each group's kept count raised to the width within
        ``window`` above it whose layers measure fastest on the target (the staircase of
        the hardware's favourite multiples, timed exactly, not interpolated); ties go to
        the wider. ``fits(keep)``: a change that breaks the budget is not made. Under a
        fitted alignment only widths on its multiples (or the full width) are tried."""
        keep = keep.copy()
        window = max(window, self.align + 1)
        for g in groups:
            touching = [e for e in self.entries if _touches(e.layer, g.units)]
            if not touching:
                continue
            gone = np.nonzero(~keep[g.units])[0]
            back = g.units[gone[np.argsort(-priority[g.units[gone]], kind="stable")]]
            best, best_s = 0, None
            now = int(keep[g.units].sum())
            for extra in range(0, min(window - 1, len(back)) + 1):
                if self.align > 1 and (now + extra) % self.align and \
                        now + extra < len(g.units):
                    continue
                trial = keep.copy()
                trial[back[:extra]] = True
                sec = sum(e.table.seconds(*self.widths(trial, e)) for e in touching)
                if best_s is None or sec <= best_s * (1 + 1e-3):
                    best, best_s = extra, min(sec, best_s) if best_s is not None else sec
            if best:
                trial = keep.copy()
                trial[back[:best]] = True
                if fits is None or fits(trial):
                    keep = trial
        return keep

    # ------------------------------------------------------------- measuring
    def uniform(self, fraction: float, align: int = 1) -> np.ndarray:
        """Keep the first ``fraction`` of every prunable group's units (at least one),
        their count raised to a multiple of ``align`` (at most the group's width)."""
        return self._first(lambda: fraction, align)

    def mixed(self, seed: int, align: int = 1) -> np.ndarray:
        """Every prunable group keeps its first fraction f_g of units, f_g drawn uniformly
        from [0.05, 1] (seeded), the count raised to a multiple of ``align``."""
        rng = np.random.default_rng(seed)
        return self._first(lambda: float(rng.uniform(0.05, 1.0)), align)

    def _first(self, fraction: Any, align: int = 1) -> np.ndarray:
        """Each prunable group keeps its first ``fraction()`` of units (frozen ones kept,
        at least one; the count a multiple of ``align`` or the width)."""
        keep = np.ones(self.graph.n_units, dtype=bool)
        for g in self.graph.prunable_groups:
            idx = np.nonzero(g.prunable)[0]
            n = min(g.width, -(-int(np.ceil(fraction() * g.width)) // align) * align)
            n -= int((~g.prunable).sum())
            keep[g.units[idx[max(n, 0 if (~g.prunable).any() else 1):]]] = False
        return keep

    def measure(self, model: nn.Module, keep: np.ndarray) -> float:
        """Measured seconds per batch of ``model`` pruned to ``keep``, on the target."""
        pruned = self.graph.apply(model, self.graph.plan_of_mask(keep), verify=False)
        return time_model(self.timer, self.graph, pruned, self.target.batch)

    def validate(self, model: nn.Module, plans: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """Predicted against measured seconds for each named keep mask."""
        rows = []
        for name, keep in plans.items():
            p, m = self.predict(keep), self.measure(model, keep)
            rows.append({"plan": name, "predicted_ms": 1e3 * p, "measured_ms": 1e3 * m,
                         "error": p / m - 1.0 if m > 0 else float("nan")})
        return rows


def _products(terms: list[tuple[int, tuple[np.ndarray, ...]]], keep: np.ndarray) -> float:
    """sum coeff * prod(kept(f)) over ``terms``."""
    return sum(c * float(np.prod([keep[f].sum() for f in fs])) for c, fs in terms)


def _nnls(A: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float]:
    """Non-negative least squares on column-scaled ``A``: (coefficients, residual sum of
    squares)."""
    try:
        from scipy.optimize import nnls
    except ImportError:
        from ..errors import TargetError
        raise TargetError("calibrating a latency model needs scipy "
                          "(pip install 'prunekit[latency]')") from None
    scale = np.maximum(np.abs(A).max(axis=0), 1e-12)
    coef, _ = nnls(A / scale, b)
    coef = coef / scale
    return coef, float(np.sum((A @ coef - b) ** 2))


def _bilinear(table: LayerTable) -> tuple[float, float, float, float]:
    """a, b, c, d of seconds ~ a + b*cin + c*cout + d*cin*cout over the table's grid."""
    pts = [(a, b, table.points[(a, b)]) for a in table.grid_in for b in table.grid_out]
    A = np.array([[1.0, a, b, a * b] for a, b, _ in pts])
    y = np.array([v for _, _, v in pts])
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    return tuple(float(c) for c in coef)


def _touches(layer: Layer, units: np.ndarray) -> bool:
    return any(u is not None and np.isin(u, units).any()
               for u in (layer.in_units, layer.out_units))


def _example_batch(graph: ChannelGraph) -> int:
    ts = graph.inputs.tensors() if graph.inputs is not None else []
    return int(ts[0].shape[0]) if ts and ts[0].dim() else 1
