"""EMO-DIR's evaluations: the impairment of a sub-network's candidate widths (its output
features against the dense-recalibrated reference), of whole-network plans, and the
cross-network feature matching; built once per worker (:class:`Evaluator`)."""

from __future__ import annotations

from fnmatch import fnmatch
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TargetError
from ..graph import ChannelGraph
from ..graph.verify import flat_outputs
from .allocate import metric_value
from .emo_config import EmoConfig
from .split import Runner, Segment, features, split
from .widths import WidthPlanner

__all__ = ["Evaluator", "UNUSABLE"]


class Evaluator:
    """Everything an evaluation needs; built once per worker from picklable parts."""

    def __init__(self, model: nn.Module, example: torch.Tensor, batches: list[torch.Tensor],
                 config: EmoConfig, latency: Any = None) -> None:
        self.model, self.config = model.eval(), config
        self.latency = config.budget(latency=latency).require_latency() \
            if config.metric == "latency" else None
        self.graph = self.latency.graph if self.latency is not None else \
            ChannelGraph.build(self.model, example, ignore=config.ignore)
        ids = [g.id for g in self.graph.prunable_groups
               if not config.groups or any(fnmatch(g.id, p) for p in config.groups)]
        self.segments = split(self.graph, config.parts, ids)
        if not any(s.groups for s in self.segments):
            raise TargetError("no prunable group lies inside a sub-network")
        chunk = self.graph.replay_batch     # a recorded graph replays at one batch size
        if chunk:
            batches = [p for b in batches for p in b.split(chunk) if len(p) == chunk]
        self.batches = batches
        self.feats = features(self.graph, self.model, self.segments, batches)
        self.planner = WidthPlanner(self.graph, self.model, config.criterion, config.seed)
        self.base = self.cost_value(np.ones(self.graph.n_units, dtype=bool))
        self.full = {s.index: self._full(s) for s in self.segments if s.groups}
        self._dense_targets()

    def _dense_targets(self) -> None:
        """What impairments compare with: the dense network's outputs with its BN statistics
        re-estimated as every candidate's are, per sub-network (on the original's input
        features) and whole (in a chain). The dense plan then has zero impairment and only
        pruning is measured; without it a model whose stored statistics do not fit the
        calibration images (random weights, another domain) measured every plan, the
        dense one included, as heavily impaired and its front collapsed to one point."""
        self.seg_ref: dict[int, list[torch.Tensor]] = {}
        own = Runner(self.graph, self.model)   # segments are disjoint: one copy serves all
        for seg in self.segments:
            if seg.groups:
                own.recalibrate(seg, self.feats[seg.index])
                self.seg_ref[seg.index] = [own.run(seg, b) for b in self.feats[seg.index]]
        runner, x = Runner(self.graph, self.model), list(self.feats[0])
        self.chain_ref = [x]       # the recalibrated dense network's features, in a chain
        for seg in self.segments:
            runner.recalibrate(seg, x)
            x = [runner.run(seg, b) for b in x]
            self.chain_ref.append(x)
        self.whole_ref = x

    def cost_value(self, keep: np.ndarray) -> float:
        """The budget's cost of ``keep``: MACs or params, or predicted seconds."""
        if self.latency is not None:
            return self.latency.predict(keep)
        return float(metric_value(self.graph.cost_of_mask(keep), self.config.metric))

    def _full(self, seg: Segment) -> float:
        """The cost of the sub-network's layers at full width (for latency: what removing
        every prunable channel of its groups would save, the prediction being no sum of
        per-layer terms alone)."""
        if self.latency is None:
            return float(metric_value(self.graph.layers_cost(list(seg.groups)),
                                      self.config.metric))
        keep = np.ones(self.graph.n_units, dtype=bool)
        for gid in seg.groups:
            g = self.graph.group(gid)
            keep[g.units[g.prunable]] = False
        return max(self.base - self.cost_value(keep), 1e-12)

    def keep(self, widths: dict[str, int]) -> np.ndarray:
        return self.planner.keep(widths)

    def widths(self, seg: Segment, x: np.ndarray) -> dict[str, int]:
        out, c = {}, self.config
        for gid, frac in zip(seg.groups, np.asarray(x, dtype=float)):
            g = self.graph.group(gid)
            k = max(1, c.min_width, round(float(frac) * g.width))
            out[gid] = int(min(g.width, -(-k // c.round_to) * c.round_to))
        return out

    def subnet(self, item: tuple[int, tuple[int, ...]]) -> tuple[float, float]:
        """(cost of the sub-network's layers / full, impairment) of one candidate."""
        s, ws = item
        seg = self.segments[s]
        keep = self.keep(dict(zip(seg.groups, ws)))
        runner = Runner(self.graph, self.model, keep)
        runner.recalibrate(seg, self.feats[s])
        err = ref = 0.0
        for x, y in zip(self.feats[s], self.seg_ref[s]):
            e, r = _sq_err(runner.run(seg, x), y)
            err, ref = err + e, ref + r
        inside = self.full[s] - (self.base - self.cost_value(keep))
        return round(inside / self.full[s], 6), round(err / max(ref, 1e-30), 6)

    def whole(self, widths: dict[str, int]) -> float:
        """Impairment of the whole network's output (logits) after BN recalibration and,
        with ``feature_steps``, cross-network feature-matching training."""
        runner = self._trained(widths)
        err = ref = 0.0
        x = self.feats[0]
        for seg in self.segments:
            x = [runner.run(seg, b) for b in x]
        for out, y in zip(x, self.whole_ref):
            e, r = _sq_err(out, y)
            err, ref = err + e, ref + r
        return round(err / max(ref, 1e-30), 6)

    def _trained(self, widths: dict[str, int]) -> Runner:
        runner = Runner(self.graph, self.model, self.keep(widths))
        x = list(self.feats[0])
        for seg in self.segments:
            runner.recalibrate(seg, x)
            if self.config.feature_steps:
                _match_features(runner, seg, x, self.chain_ref[seg.index + 1], self.config)
            x = [runner.run(seg, b) for b in x]
        return runner


def _match_features(runner: Runner, seg: Segment, inputs: list[torch.Tensor],
                    targets: list[torch.Tensor], config: EmoConfig) -> None:
    """A few SGD steps so the (masked = pruned) segment maps its predecessor's pruned
    features to the original's output features; BN statistics stay fixed."""
    names = {n.target for n in runner.nodes[seg.start + 1: seg.stop + 1] if n.op == "call_module"}
    params = [p for n in names for p in runner.root.get_submodule(n).parameters(recurse=False)]
    if not params:
        return
    opt = torch.optim.SGD(params, lr=config.feature_lr, momentum=0.9)
    start = [p.detach().clone() for p in params]
    for step in range(config.feature_steps):
        b = step % len(inputs)
        out = flat_outputs(runner.run(seg, inputs[b], grad=True))
        want = flat_outputs(targets[b])
        loss = sum(F.mse_loss(o, t) / t.pow(2).mean().clamp_min(1e-12)
                   for o, t in zip(out, want) if t.is_floating_point())
        if not torch.isfinite(loss):      # diverged: keep the weights it started from
            with torch.no_grad():
                for p, p0 in zip(params, start):
                    p.copy_(p0)
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for p in params:
        p.grad = None


UNUSABLE = 1e9   # the impairment of a candidate whose output is not finite


def _sq_err(out: Any, ref: Any) -> tuple[float, float]:
    """Squared error of ``out`` against ``ref`` and ``ref``'s squared norm, over every
    floating tensor of the two (one tensor, or a model's output structure); a
    non-finite output counts as :data:`UNUSABLE` times the norm."""
    err = norm = 0.0
    for o, r in zip(flat_outputs(out), flat_outputs(ref)):
        if r.is_floating_point():
            err += float((o - r).double().pow(2).sum())
            norm += float(r.double().pow(2).sum())
    if not np.isfinite(err):
        err = UNUSABLE * max(norm, 1.0)
    return err, norm
