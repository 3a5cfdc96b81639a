"""LAPP: layer-adaptive progressive pruning under a FLOPs constraint (Zhai et al., 2023).

Every managed group (a prunable group with batch-norm members) has an importance
score per channel, the BN scale |gamma| (mean over the group's BN layers; or, with
``score="taylor"``, the running mean of the task loss's |dL/dmask|), and **one
learnable threshold**, parametrised by its quantile r_g: the fraction of the group's
prunable channels whose score lies below it (the threshold in score units, the score
at quantile r_g, is what the logs and plots show). During the first ``prune_epochs``
(default: a third of the schedule) of training a channel is kept iff its score is above
the threshold; the mask is applied to the group's BN outputs with a straight-through
estimator: the forward pass uses the hard 0/1 mask (so the training-time network *is* a
pruned network; with ``leak``, in training a masked channel passes ``leak`` of its output),
the backward pass the gradient of sigmoid((q_c - r_g) / temperature), q_c the
channel's quantile (rank + 1/2) / n in its group. A threshold in score units failed
from scratch: BN scales start equal and stay clustered, so a threshold step either
prunes nothing or crosses the whole cluster (docs/lapp.md).
The loss adds ``penalty * relu(cost(mask) / base - target_now)``, where cost is the
engine's cost model as a polynomial in the masks (exact for 0/1 masks, see
:mod:`.soft_cost`) and target_now ramps from 1 to ``target`` over the first 80% of
the pruning phase (``progressive``; without it the final target applies from the
first step). Task loss and constraint both move the thresholds (a step normalised by
each threshold's running gradient RMS, so it moves about ``threshold_lr`` of the
group's channels); the model's optimizer moves the scores, so which channels are
pruned follows the scores as they change.
At the end of the phase the mask is frozen, projected onto the budget (within
``tolerance``), the network is physically pruned by the engine, and training
continues on the smaller dense model.

:class:`Lapp` is also a :class:`~prunekit.train.Callback` for a user's own loop:
``loss = task + lapp.penalty(progress)``; after ``opt.step()`` call
``lapp.after_step()``; at the end ``plan = lapp.freeze()``. The whole schedule (prune,
then train the pruned model on) is :func:`prunekit.methods.lapp_method.train_lapp`, and
the registered method ``lapp``.
"""

from __future__ import annotations

from fnmatch import fnmatch
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import TargetError
from ..graph import ChannelGraph
from ..plan import Plan
from ..train.engine import Callback
from .allocate import Budget
from .lapp_bypass import add_bypass, has_bypass
from .lapp_config import LappConfig
from .lapp_members import KeptNorms, Member, _Masked, find_members
from .projector import Projector, bisect
from .soft_cost import SoftCost

__all__ = ["Lapp", "LappConfig", "add_bypass", "has_bypass"]


# ------------------------------------------------------------------ controller
class Lapp(nn.Module, Callback):
    """Scores, thresholds, masks and the cost constraint of one model (see module doc)."""

    def __init__(self, model: nn.Module, graph: ChannelGraph, config: LappConfig,
                 base_cost: float, phase_end: float = 1.0, latency: Any = None) -> None:
        nn.Module.__init__(self)
        self.config, self.graph, self.base = config, graph, float(base_cost)
        self.phase_end = phase_end          # fraction of the whole schedule that prunes
        self.bypass = has_bypass(model)     # what a saved plan records, whatever the config
        self.latency = config.budget(latency=latency).require_latency() \
            if config.metric == "latency" else None
        self.cost = SoftCost(graph, config.metric, self.latency.polynomial()
                             if self.latency is not None else None)
        self.groups: list[Any] = []
        self.members: list[list[Member]] = []
        self.skipped: dict[str, str] = {}
        chosen = [g for g in graph.prunable_groups
                  if not config.groups or any(fnmatch(g.id, p) for p in config.groups)]
        for g, mem in zip(chosen, find_members(model, graph, chosen)):
            if not mem:
                self.skipped[g.id] = ("no batch norm, LayerNorm-like layer or conv/linear "
                                      "producer carries these channels")
                continue
            self.groups.append(g)
            self.members.append(mem)
        if not self.groups:
            raise TargetError("LAPP found no prunable group it can mask (no batch norm, "
                              "LayerNorm-like layer or conv/linear producing the channels): "
                              + "; ".join(f"{k}: {v}" for k, v in list(self.skipped.items())[:3]))
        self._uses = [np.bincount(torch.cat([m.idx for m in mem]).numpy(), minlength=g.width)
                      for g, mem in zip(self.groups, self.members)]   # members per channel
        # the thresholds' quantiles r_g (fraction of prunable channels below the threshold)
        self.rates = nn.Parameter(torch.zeros(len(self.groups)))
        # Adam without momentum: each rate's step is lr * grad / its own running RMS, about
        # ``threshold_lr`` of the group's channels whatever the gradients' scale, and it stops
        # where its gradient vanishes instead of coasting on
        self.opt = torch.optim.Adam([self.rates], lr=config.threshold_lr, betas=(0.0, 0.999))
        self._masks: list[torch.Tensor] | None = None     # this forward's masks (the cost)
        self._applied: list[torch.Tensor] | None = None   # the same, as the BN layers use them
        # "taylor": running mean of |dL/dm_c|, the task loss's first-order change from
        # switching channel c off (kept) or on (masked)
        self._taylor = [torch.zeros(g.width) for g in self.groups]
        self._handles: list[Any] = []
        self._masked: list[nn.Module] = []
        self._target_now = 1.0
        self._steps = 0
        self.history: list[dict[str, Any]] = []
        self.trace: list[dict[str, Any]] = []   # every 25 steps: thresholds, widths, cost
        self.attach(model)

    # ----------------------------------------------------------- scores, masks
    def scores(self) -> list[torch.Tensor]:
        """Per group, each channel's importance (detached): with ``score="bn"`` its |gamma|
        averaged over the group's BN layers, with ``"taylor"`` the running mean of the task
        loss's gradient magnitude with respect to its mask, |dL/dm_c| (summed over the
        group's BN layers; all zero before the first step)."""
        if self.config.score == "taylor":
            return [t.clone() for t in self._taylor]
        out = []
        with torch.no_grad():
            for g, mem in zip(self.groups, self.members):
                s = torch.zeros(g.width)
                n = torch.zeros(g.width)
                for m in mem:
                    s = s.index_add(0, m.idx, m.scale())
                    n = n.index_add(0, m.idx, torch.ones(len(m.idx)))
                out.append(s / n.clamp_min(1))
        return out

    def _quantiles(self, gi: int, s: torch.Tensor) -> torch.Tensor:
        """(rank + 1/2) / n of every prunable channel among group ``gi``'s prunable channels
        by score; 2.0 (above any rate) for the others. Ties (every scale is 1 at
        initialisation) rank first the channels fewer BN layers carry (in a residual stream
        through zero-padded shortcuts, those of the late, wide stages), then the later."""
        g = self.groups[gi]
        q = torch.full((g.width,), 2.0)
        idx = np.nonzero(g.prunable)[0]
        order = idx[np.lexsort((-idx, self._uses[gi][idx], s.numpy()[idx]))]
        q[torch.as_tensor(order)] = (torch.arange(len(order)) + 0.5) / max(len(order), 1)
        return q

    def masks(self, hard_only: bool = False) -> list[torch.Tensor]:
        out = []
        for i, (g, s) in enumerate(zip(self.groups, self.scores())):
            z = (self._quantiles(i, s) - self.rates[i]) / self.config.temperature
            hard = z.detach() > 0
            hard[self._floor(g, s.numpy())] = True
            hard = hard.float()
            out.append(hard if hard_only else hard + torch.sigmoid(z) - torch.sigmoid(z).detach())
        return out

    def thresholds(self) -> list[float]:
        """Each group's threshold in score units: the score at quantile r_g of its prunable
        channels (linear interpolation between neighbours)."""
        out = []
        for g, s, r in zip(self.groups, self.scores(), self.rates.detach().tolist()):
            sorted_s = np.sort(s.numpy()[np.nonzero(g.prunable)[0]])
            out.append(float(np.interp(r * len(sorted_s) - 0.5, np.arange(len(sorted_s)),
                                       sorted_s)))
        return out

    def _floor(self, g: Any, score: np.ndarray) -> torch.Tensor:
        """Local units that are always kept: the ``min_width`` best channels of every BN
        member (a group can span several tensors, e.g. a residual stream through padded
        shortcuts, and none of them may end up empty)."""
        gi = next(i for i, h in enumerate(self.groups) if h is g)
        keep = []
        for m in self.members[gi]:
            idx = m.idx.numpy()
            keep += idx[np.argsort(-score[idx], kind="stable")[: self.config.min_width]].tolist()
        return torch.as_tensor(sorted(set(keep)), dtype=torch.long)

    def unit_keep(self, masks: Sequence[torch.Tensor]) -> torch.Tensor:
        keep = torch.ones(self.graph.n_units)
        for g, m in zip(self.groups, masks):
            keep = keep.index_put((torch.as_tensor(g.units),), m)
        return keep

    # ----------------------------------------------------------- hooks
    def attach(self, model: nn.Module) -> None:
        """Mask the managed layers. A BN layer's scale and shift, or a producer's weight
        rows and bias, are multiplied by the mask (a parametrization: equal to masking
        their output, at the cost of a C-element product instead of a pass over the
        activations); a LayerNorm-like layer normalises over the kept channels only (as
        the pruned layer does) and its output is masked (a forward hook)."""
        self.detach()
        self._handles.append(model.register_forward_pre_hook(self._refresh))
        self._norms = KeptNorms(lambda: (self._masks, self._applied), self.members)
        if self._norms.table:
            self._handles.append(model.register_forward_pre_hook(self._norms_on))
            self._handles.append(model.register_forward_hook(self._norms_off,
                                                             always_call=True))
        for gi, mem in enumerate(self.members):
            for m in mem:
                if m.kind == "norm":
                    continue
                for name in ("weight", "bias"):
                    if getattr(m.module, name, None) is not None:
                        parametrize.register_parametrization(m.module, name,
                                                             _Masked(self, gi, m))
                self._masked.append(m.module)

    def _norms_on(self, _module, _args) -> None:
        self._norms.__enter__()

    def _norms_off(self, _module, _args, _out) -> None:
        self._norms.__exit__(None, None, None)

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        for mod in self._masked:
            for name in ("weight", "bias"):
                if parametrize.is_parametrized(mod, name):
                    parametrize.remove_parametrizations(mod, name, leave_parametrized=False)
        self._masked = []

    def _refresh(self, module, _args) -> None:
        self._masks = self.masks()
        self._applied = self._masks
        training = module.training and torch.is_grad_enabled()
        if training and self.config.leak > 0:
            # a masked channel passes ``leak`` of its output: a ReLU after it then lets the
            # gradient of switching it back on through (at exactly 0 the ReLU passes none)
            self._applied = [m + self.config.leak * (1 - m.detach()) for m in self._masks]
        if training and self.config.score == "taylor":
            # a copy per group that only the BN layers use: its gradient is the task loss's
            # alone (the cost term reads ``_masks``)
            self._applied = [m.clone() for m in self._applied]
            for m in self._applied:
                m.retain_grad()

    def _update_taylor(self) -> None:
        if self.config.score != "taylor" or self._applied is None:
            return
        b = self.config.score_momentum
        for i, m in enumerate(self._applied):
            if m.grad is not None:
                self._taylor[i] = b * self._taylor[i] + (1 - b) * m.grad.detach().abs().float()
                m.grad = None

    # ----------------------------------------------------------- training
    def target_at(self, progress: float) -> float:
        t = self.config.target
        if not self.config.progressive:
            return t
        ramp = min(1.0, progress / max(0.8 * self.phase_end, 1e-12))
        return 1.0 - (1.0 - t) * ramp

    def penalty(self, progress: float) -> torch.Tensor:
        """The budget term to add to the loss; zero once the pruning phase has ended (so
        ``loss + lapp.penalty(p)`` works in a hand-written loop at every step)."""
        if progress >= self.phase_end:
            return self.rates.new_zeros(())
        self._target_now = self.target_at(progress)
        ratio = self.cost(self.unit_keep(self._masks or self.masks())) / self.base
        return self.config.penalty * torch.relu(ratio - self._target_now).float()

    def after_step(self) -> None:
        self._update_taylor()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            self.rates.clamp_(0.0, 1.0)
        if self.config.hold:
            self.hold()
        self._steps += 1
        if self._steps % 25 == 0:
            self.trace.append({"step": self._steps, **self.log(record=False)})

    def hold(self) -> float:
        """If the hard mask's cost is below the current target by more than ``tolerance``,
        move every rate down by one common offset (bisected, in quantile units) until it is
        not: the task loss decides how the budget is shared between groups, the ramp decides
        the total. Returns the offset (0 when the cost was not below).
        Why: below the target only the task loss moves the thresholds, and from scratch it
        kept pruning past the target (measured in docs/lapp.md). A likely cause: a masked
        channel gets no gradient, so its weights stop training, and the straight-through
        estimate of switching it back on says it would hurt."""
        goal = self._target_now * (1 - self.config.tolerance)
        with torch.no_grad():
            scores = self.scores()
            qs = [self._quantiles(i, s) for i, s in enumerate(scores)]
            floors = [self._floor(g, s.numpy()) for g, s in zip(self.groups, scores)]
            rates = self.rates.detach().tolist()

            def ratio(delta: float) -> float:
                masks = []
                for q, fl, r in zip(qs, floors, rates):
                    hard = q > r - delta
                    hard[fl] = True
                    masks.append(hard.float())
                return float(self.cost(self.unit_keep(masks))) / self.base
            if ratio(0.0) >= goal:
                return 0.0
            # the smallest common offset (at max(rates) every channel is kept)
            hi = bisect(lambda d: ratio(d) >= goal, 0.0, max(rates) + 1e-6, steps=24)
            self.rates.sub_(hi).clamp_(0.0, 1.0)
        return hi

    def log(self, record: bool = True) -> dict[str, Any]:
        with torch.no_grad():
            hard = self.masks(hard_only=True)
            ratio = float(self.cost(self.unit_keep(hard))) / self.base
        row = {"lapp_cost_ratio": round(ratio, 5), "lapp_target": round(self._target_now, 5),
               "lapp_thresholds": [round(t, 5) for t in self.thresholds()],
               "lapp_rates": [round(float(r), 5) for r in self.rates.detach()],
               "lapp_widths": {g.id: int(m.sum()) for g, m in zip(self.groups, hard)}}
        if record:
            self.history.append(row)
        return row

    def hard_plan(self, meta: dict | None = None) -> Plan:
        """The current hard mask as a Plan (no projection onto the budget)."""
        with torch.no_grad():
            keep = self.unit_keep(self.masks(hard_only=True)).numpy() > 0.5
        return self.graph.plan_of_mask(keep, meta)

    def verify(self, model: nn.Module, example_inputs: Sequence[Any]) -> None:
        """Check (eval mode) that LAPP's masking equals physical pruning, on a mask that
        drops about half of every group. Groups for which it does not (a channel that
        reaches a layer no mask covers) are left out, with the reason in ``skipped``;
        a model with none left, or whose groups only fail together, is refused."""
        if not self._mismatch(model, example_inputs, range(len(self.groups))):
            return
        failing = [i for i in range(len(self.groups))
                   if self._mismatch(model, example_inputs, [i])]
        if failing and len(failing) < len(self.groups):
            self._drop(model, failing)
            if not self._mismatch(model, example_inputs, range(len(self.groups))):
                return
        raise TargetError("masking the channels does not equal removing them in this model "
                          f"(groups {[g.id for g in self.groups][:3]}: a channel reaches a "
                          "layer no LAPP mask covers); restrict LAPP with `groups`")

    def _mismatch(self, model: nn.Module, inputs: Sequence[Any], half: Any) -> bool:
        """True when masking groups ``half`` (about half their channels) differs from
        physically pruning them."""
        from ..conformance import ConformanceError, outputs_close
        saved = self.rates.detach().clone()
        was = model.training
        self.attach(model)
        try:
            with torch.no_grad():
                self.rates.zero_()
                for i in half:
                    self.rates[i] = 0.5
                plan = self.hard_plan()
                model.eval()
                masked = model(*inputs)
                self.detach()
                pruned = self.graph.apply(model, plan, verify=False)(*inputs)
        finally:
            self.attach(model)
            model.train(was)
            with torch.no_grad():
                self.rates.copy_(saved)
        try:
            outputs_close(masked, pruned)
        except ConformanceError:
            return True
        return False

    def _drop(self, model: nn.Module, which: list[int]) -> None:
        self.detach()
        for i in which:
            self.skipped[self.groups[i].id] = ("masking its channels does not equal removing "
                                               "them (a layer no LAPP mask covers reads them)")
        keep = [i for i in range(len(self.groups)) if i not in set(which)]
        self.groups = [self.groups[i] for i in keep]
        self.members = [self.members[i] for i in keep]
        self._uses = [self._uses[i] for i in keep]
        self._taylor = [self._taylor[i] for i in keep]
        self.rates = nn.Parameter(torch.zeros(len(self.groups)))
        self.opt = torch.optim.Adam([self.rates], lr=self.config.threshold_lr,
                                    betas=(0.0, 0.999))
        self._masks = self._applied = None     # of the old groups
        self.attach(model)

    # ----------------------------------------------------------- the end
    def freeze(self, meta: dict | None = None) -> Plan:
        """The frozen mask as a Plan, projected onto the budget within ``tolerance`` by the
        budget projector: units ranked by margin (quantile - r_g), a global offset bisected,
        removed units with the best margins given back."""
        with torch.no_grad():
            margins = [(self._quantiles(i, s) - r).numpy() for i, (s, r) in
                       enumerate(zip(self.scores(), self.rates.detach()))]
        c = self.config
        priority = np.zeros(self.graph.n_units)
        for g, m in zip(self.groups, margins):
            priority[g.units] = m
        pj = Projector(self.graph, Budget(c.target, c.metric, c.round_to, c.min_width,
                                          tolerance=c.tolerance, latency=self.latency),
                       priority, [g.id for g in self.groups], base=self.base)

        def keep_at(delta: float) -> np.ndarray:
            keep = np.ones(self.graph.n_units, dtype=bool)
            for g, m in zip(self.groups, margins):
                k = (m > delta) | ~g.prunable
                k[self._floor(g, m).numpy()] = True
                keep[g.units] = k
            return keep
        lo = min(float(m.min()) for m in margins) - 1.0
        hi = max(float(m.max()) for m in margins) + 1.0
        keep = pj.project(keep_at, lo, hi, steps=60, fill_steps=4096)
        with torch.no_grad():
            learned = float(self.cost(self.unit_keep(self.masks(hard_only=True)))) / self.base
        info = {"method": "lapp", "config": self.config.to_dict(), "bypass": self.bypass,
                "edits": ["bypass"] if self.bypass else [],
                "achieved": round(pj.ratio(keep), 6), "learned": round(learned, 6),
                "skipped": self.skipped}
        return self.graph.plan_of_mask(keep, {**info, **(meta or {})})
