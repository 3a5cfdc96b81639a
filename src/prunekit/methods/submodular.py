"""Data-efficient structured pruning by submodular selection with reweighting.

El Halabi, Srinivas and Lacoste-Julien (NeurIPS 2022). Per group, with its
consumers' inputs B on a few hundred unlabeled images, keep the channels S that
maximise F(S) = 1 - min_W' ||B_S W' - A W||^2 / ||A W||^2 (greedy, on Gram
matrices, see :mod:`.lsq`), then replace the consumers' weights by the
least-squares W' (reweighting). Variants (``variant``):

- ``layer`` (LayerInChange): every group on the original network's activations;
- ``seq`` (SeqInChange): groups in execution order, B recomputed on the partly
  pruned (and reweighted) network, A = B;
- ``asym`` (AsymInChange): like ``seq``, but the target is the *original*
  network's input A W, so reweighting also undoes error accumulated upstream.

Baseline selectors run in the same harness (``selector``): ``weightnorm`` (norm
of each channel's outgoing consumer weights), ``random`` and ``actgrad``
(|activation x gradient| at the consumer input, with the original network's own
predictions as labels, so no labels are needed); each with or without
reweighting. :func:`reweight` is the same least-squares step as a recovery for
any pruned model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Any, ClassVar, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TargetError
from ..graph import ChannelGraph
from ..plan import Plan
from .allocate import Budget, allocate
from .base import Result, check_batches
from .protocol import Context, MethodBase, MethodConfig, register
from .consumers import Consumer, GroupInfo, analyse
from .calibration import Reference, as_batches, grams
from .intercept import Intercepts, sinks
from .lsq import Gram, Problem, greedy, solve
from .reweight import reweight
from .selectors import actgrad_scores, weightnorm_scores

__all__ = ["SubmodularConfig", "Submodular", "prune_submodular", "reweight"]

VARIANTS = ("layer", "seq", "asym")
SELECTORS = ("greedy", "weightnorm", "random", "actgrad")
SUB_ALLOCATIONS = ("uniform", "sensitivity", "output", "accuracy")
TIE = 1e-3      # accuracy allocation: points of top-1 per nat of held-out cross-entropy
OPEN_POLICIES = ("auto", "skip", "select")


@dataclass(frozen=True)
class SubmodularConfig(MethodConfig):
    """``target``: fraction of the cost (``metric``) to keep, over the whole network
    (``scope='network'``) or over the layers the pruned groups touch (``'groups'``).
    ``groups``: fnmatch patterns of group ids to prune (empty: every prunable group).
    ``open_groups``: what to do with groups whose channels also reach non-conv uses
    (residual streams): ``skip`` them, or ``select`` them by the objective without
    reweighting. ``stochastic``: epsilon of stochastic greedy (0 = exact).
    ``intercept``: give the least squares a constant column, so reweighting also re-solves
    each consumer's output offset (into its bias, or into the running mean of the batch
    norm that alone reads it; consumers with neither keep the plain problem).
    ``allocation``: per-group widths ``uniform``, or by the equal-change rule on each
    group's own pruning curve, measured with that group alone pruned (and reweighted):
    ``sensitivity`` (1 - F), ``output`` (KL of the network's predictions on calibration
    images) or ``accuracy`` (the top-1 lost on a labelled held-out split of the training
    set: Kuzmin et al.'s equal-accuracy rule, as the paper's code allocates; needs
    ``heldout``, the context's ``labelled``)."""

    metric: str = "params"
    scope: str = "network"
    variant: str = "asym"
    selector: str = "greedy"
    reweight: bool = True
    allocation: str = "uniform"
    open_groups: str = "auto"
    stochastic: float = 0.0
    ridge: float = 1e-6
    calib_batch_size: int = 128     # calibration images per forward pass
    cache_activations: bool = True
    output_points: int = 16           # widths per group measured by allocation="output"
    output_images: int = 128          # calibration images those measurements use
    accuracy_images: int = 1000       # held-out images allocation="accuracy" scores on
    intercept: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        Budget(self.target, self.metric, self.round_to, self.min_width, scope=self.scope)
        for name, value, allowed in (("variant", self.variant, VARIANTS),
                                     ("selector", self.selector, SELECTORS),
                                     ("allocation", self.allocation, SUB_ALLOCATIONS),
                                     ("open_groups", self.open_groups, OPEN_POLICIES)):
            if value not in allowed:
                raise TargetError(f"{name} must be one of {allowed}, got {value!r}")
        if not 0 <= self.stochastic < 1 or self.ridge < 0 or self.calib_batch_size < 1:
            raise TargetError("stochastic must be in [0, 1), ridge >= 0, calib_batch_size >= 1")
        if self.output_points < 2 or self.output_images < 1 or self.accuracy_images < 1:
            raise TargetError("output_points >= 2, output_images >= 1 and accuracy_images "
                              ">= 1 are required")


# ------------------------------------------------------------------ allocation
def _counts(graph: ChannelGraph, infos: list[GroupInfo], config: SubmodularConfig,
            curves: dict[str, np.ndarray] | None, latency: Any = None) -> dict[str, int]:
    """Kept units per group that meet the budget. ``curves[gid][j]``: the group's loss
    (sensitivity: 1 - F; output: KL of the network's outputs) when it keeps j + 1 of its
    prunable units, NaN where not measured."""
    budget = Budget(config.target, config.metric, config.round_to, config.min_width,
                    scope=config.scope, latency=latency)
    ids = {i.gid for i in infos}
    if config.allocation == "uniform" or curves is None:
        plan = allocate(graph, np.zeros(graph.n_units), budget, "uniform", {}, ids)
        return {gid: len(plan.keep.get(gid, range(graph.group(gid).width))) for gid in ids}
    return _equal_change(graph, infos, budget, curves)


def _monotone(curve: np.ndarray) -> np.ndarray:
    """The loss at j + 1 picks as the worst loss at j + 1 or more picks (NaN: not measured,
    so never chosen), so "the smallest width within tau" keeps every wider one within tau."""
    c = np.where(np.isnan(curve), -np.inf, curve)
    c = np.maximum.accumulate(c[::-1])[::-1]
    c[np.isnan(curve)] = np.inf
    return c


def _equal_change(graph: ChannelGraph, infos: list[GroupInfo], budget: Budget,
                  curves: dict[str, np.ndarray]) -> dict[str, int]:
    """Equal-loss allocation: the smallest widths at which every group's loss is at most a
    common tau, tau found by the budget projector's bisection."""
    from .projector import Projector, bisect
    pj = Projector(graph, budget, group_ids={i.gid for i in infos})
    mono = {gid: _monotone(np.asarray(c, dtype=np.float64)) for gid, c in curves.items()}
    top = max([float(np.max(m[np.isfinite(m)])) for m in mono.values()
               if np.isfinite(m).any()] + [1.0])

    def counts(tau: float) -> dict[str, int]:
        out = {}
        for info in infos:
            g = graph.group(info.gid)
            frozen = int((~g.prunable).sum())
            ok = np.nonzero(mono[info.gid] <= tau)[0]
            picks = int(ok[0]) + 1 if len(ok) else len(mono[info.gid])
            out[info.gid] = pj.kept_count(g.width, frozen + picks)
        return out

    def mask(c: dict[str, int]) -> np.ndarray:
        keep = np.ones(graph.n_units, dtype=bool)
        for gid, k in c.items():
            g = graph.group(gid)
            keep[g.units[np.nonzero(g.prunable)[0][: g.width - k]]] = False
        return keep

    pj.check_reachable(mask(counts(top)))
    return counts(bisect(lambda tau: pj.fits(mask(counts(tau))), 0.0, top))


# ------------------------------------------------------------------ the method
def _eligible(graph: ChannelGraph, infos: list[GroupInfo], config: SubmodularConfig,
              latency: Any = None) -> list[GroupInfo]:
    """The groups to prune: the closed ones (every use a conv/linear consumer, so
    reweighting is exact), and the open ones with consumers under ``open_groups``
    "select", or under "auto" when the closed ones alone cannot reach the target (a
    ViT's or ConvNeXt's residual stream carries most of the parameters)."""
    closed = [i for i in infos if i.closed]
    either = [i for i in infos if i.closed or i.consumers]
    if config.open_groups == "skip":
        return closed
    if config.open_groups == "select" or not closed:
        return either
    from .projector import Projector
    budget = Budget(config.target, config.metric, config.round_to, config.min_width,
                    scope=config.scope, latency=latency)
    floor = Projector(graph, budget, group_ids={i.gid for i in closed}).floor()
    return closed if floor <= config.target * (1 + budget.tolerance) else either


def _select(config: SubmodularConfig, info: GroupInfo, width: int, prunable: np.ndarray,
            k: int, grams: dict[str, Gram] | None, work: nn.Module,
            targets: dict[str, torch.Tensor],
            scores: dict[str, np.ndarray] | None) -> tuple[np.ndarray, float | None]:
    """Local indices to keep and, for greedy, the objective reached. ``targets``: per
    consumer, the weight matrix defining Y (the original network's for ``asym``)."""
    frozen = np.nonzero(~prunable)[0]
    cands = np.nonzero(prunable)[0]
    n_pick = max(0, k - len(frozen))
    if config.selector == "greedy":
        problems = [_problem(c, grams[c.name], targets[c.name], width)
                    for c in info.consumers]
        picks, values = greedy(problems, cands, n_pick, stochastic=config.stochastic,
                               seed=config.seed, rel_ridge=config.ridge)
        keep = np.sort(np.concatenate([frozen, np.asarray(picks, dtype=np.int64)]))
        return keep.astype(np.int64), (values[-1] if values else None)
    if config.selector == "random":
        rng = np.random.default_rng([config.seed, abs(hash(info.gid)) % (2 ** 31)])
        picks = rng.choice(cands, size=n_pick, replace=False)
    else:
        s = weightnorm_scores(work, info, width) if config.selector == "weightnorm" \
            else scores[info.gid]
        picks = cands[np.argsort(-s[cands], kind="stable")[:n_pick]]
    return np.sort(np.concatenate([frozen, picks])).astype(np.int64), None


def prune_submodular(model: nn.Module, example_inputs: Sequence[Any] | torch.Tensor,
                     data: torch.Tensor | Iterable[Any],
                     config: SubmodularConfig = SubmodularConfig(), *,
                     graph: ChannelGraph | None = None, progress: bool = False,
                     latency: Any = None,
                     heldout: tuple[torch.Tensor, torch.Tensor] | None = None) -> Result:
    """Prune ``model`` (left untouched) with ``data`` (unlabeled calibration images: a tensor
    or batches; labels in (x, y) batches are ignored). ``latency``: the
    :class:`prunekit.latency.LatencyModel` of ``metric="latency"`` (its graph is used).
    ``heldout``: labelled (images, labels) for ``allocation="accuracy"``."""
    if config.allocation == "accuracy" and heldout is None:
        raise TargetError("allocation accuracy needs a labelled held-out split (heldout=(x, "
                          "y); the context's labelled)")
    if graph is None and latency is not None:
        graph = latency.graph
    graph = graph or ChannelGraph.build(model, example_inputs, ignore=config.ignore)
    batches = as_batches(data, config.calib_batch_size)
    check_batches(example_inputs, batches, "prune_submodular")
    chosen = [g.id for g in graph.prunable_groups
              if not config.groups or any(fnmatch(g.id, p) for p in config.groups)]
    if not chosen:
        raise TargetError(f"no prunable group matches {list(config.groups)}")
    infos_all = analyse(graph, chosen)
    infos = _eligible(graph, infos_all, config, latency)
    if not infos:
        raise TargetError("no selected group can be pruned by this method: "
                          + "; ".join(f"{i.gid}: {i.reason}" for i in infos_all[:3]))
    names = sorted({c.name for i in infos for c in i.consumers})
    original = copy.deepcopy(model).eval()
    st = _State(graph, config, original, copy.deepcopy(model).eval(), batches,
                np.ones(graph.n_units, dtype=bool),
                Intercepts(original, sinks(graph, names) if config.intercept else {}))
    if config.variant == "layer" or config.allocation != "uniform":
        st.layer_grams = grams(st.original, _modules(st.original, names), st.original,
                               batches, None, ones=set(st.ic.sinks))
    if config.variant == "asym":
        st.ref = Reference(st.original, names, batches, config.cache_activations)
    curves = _curves(st, infos, heldout) if config.allocation != "uniform" else None
    counts = _counts(graph, infos, config, curves, latency)
    if config.selector == "actgrad":
        st.scores = actgrad_scores(st.original, infos, {i.gid: graph.group(i.gid).width
                                                        for i in infos}, batches)
    iterator = infos
    if progress:
        from ..progress import bar
        iterator = bar(infos, desc=f"submodular/{config.variant}", unit="group")
    history = [_prune_group(st, info, counts[info.gid]) for info in iterator]
    history += [{"group": i.gid, "width": graph.group(i.gid).width,
                 "kept": graph.group(i.gid).width, "objective": None, "closed": i.closed,
                 "reason": i.reason, "reweighted": False, "skipped": True,
                 "consumers": [c.name for c in i.consumers], "intercept": []}
                for i in infos_all if i not in infos]
    meta = {"method": "submodular", "config": config.to_dict(),
            "achieved": _ratio(graph, st.keep, config, [i.gid for i in infos], latency)}
    plan = _plan(graph, st.keep, meta)
    pruned = graph.apply(st.work, plan)
    return Result(pruned, plan, graph, graph.cost(), graph.cost(plan), history, config=config)


@register
class Submodular(MethodBase):
    """Greedy submodular channel selection with least-squares reweighting."""

    name: ClassVar[str] = "submodular"
    config: ClassVar[type] = SubmodularConfig
    needs: ClassVar[frozenset[str]] = frozenset({"calibration"})
    summary: ClassVar[str] = ("greedy channel selection + least-squares reweighting from a few "
                              "hundred unlabeled images, no fine-tuning")
    metrics: ClassVar[tuple[str, ...]] = ("macs", "params", "latency")

    def needs_for(self, config: SubmodularConfig) -> frozenset[str]:
        """What ``config`` needs beyond ``needs``: labelled held-out images to allocate by
        accuracy."""
        return frozenset({"labelled"}) if config.allocation == "accuracy" else frozenset()

    def run(self, model: nn.Module, config: SubmodularConfig, context: Context) -> Result:
        return prune_submodular(model, context.inputs, context.calibration, config,
                                progress=context.progress, latency=context.latency,
                                heldout=context.labelled)

    def test_config(self, **overrides: Any) -> SubmodularConfig:
        return SubmodularConfig(**{"calib_batch_size": 8, **overrides})


@dataclass
class _State:
    graph: ChannelGraph
    config: SubmodularConfig
    original: nn.Module
    work: nn.Module           # consumer weights reweighted, removed rows of closed groups zero
    batches: list[torch.Tensor]
    keep: np.ndarray          # per unit
    ic: Intercepts            # consumer weight matrices, with offsets where re-solved
    native: bool = True       # work's own forward equals the masked network so far
    ref: Reference | None = None
    layer_grams: dict[str, Gram] | None = None
    scores: dict[str, np.ndarray] | None = None


def _modules(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    return {n: model.get_submodule(n) for n in names}


def _curves(st: _State, infos: list[GroupInfo],
            heldout: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, np.ndarray]:
    """Per group, on the original activations, the loss after each greedy pick: the
    consumers' relative input change 1 - F (``sensitivity``), or, when that group alone
    keeps its first picks and its consumers are reweighted, at ``output_points`` widths,
    the KL divergence of the network's predictions from the original's (``output``) or
    the top-1 points lost on ``heldout`` (``accuracy``)."""
    curves = {}
    if st.config.allocation == "output":
        x = torch.cat(st.batches)[: st.config.output_images]
        with torch.inference_mode():
            ref = F.log_softmax(st.original(x), dim=1)
        loss = lambda out: float(F.kl_div(F.log_softmax(out, dim=1), ref,  # noqa: E731
                                          log_target=True, reduction="batchmean"))
    elif st.config.allocation == "accuracy":
        x, y = (t[: st.config.accuracy_images] for t in heldout)
        with torch.inference_mode():
            ref_out = st.original(x)
        top, ce = _top1(ref_out, y), float(F.cross_entropy(ref_out, y))
        # top-1 points lost; ties (a held-out split scores in steps of 100/n points) broken
        # by the rise in held-out cross-entropy, weighted far below one image's step
        loss = lambda out: top - _top1(out, y) + TIE * (float(F.cross_entropy(out, y)) - ce)  # noqa: E731,E501
    for info in infos:
        g = st.graph.group(info.gid)
        probs = [_problem(c, st.layer_grams[c.name], st.ic.matrix(st.original, c.name),
                          g.width) for c in info.consumers]
        picks, values = greedy(probs, np.nonzero(g.prunable)[0], g.n_prunable,
                               rel_ridge=st.config.ridge)
        if st.config.allocation == "sensitivity":
            curves[info.gid] = 1.0 - np.asarray(values)
        else:
            curves[info.gid] = _output_curve(st, info, np.asarray(picks, dtype=np.int64), x,
                                             loss)
    return curves


def _consumer_weight(c: Consumer, mask: np.ndarray, W: torch.Tensor, gram: Gram | None,
                     ridge: float) -> torch.Tensor:
    """The consumer's weight matrix once the group keeps the units in ``mask``: the
    least-squares reweighting of ``W`` on the kept columns when a ``gram`` is given, else
    ``W`` with the removed channels' rows zeroed (the same function as removing them)."""
    cols = np.nonzero((c.col_unit < 0) | mask[np.maximum(c.col_unit, 0)])[0]
    if len(W) > len(c.col_unit):                  # the intercept row is always kept
        cols = np.append(cols, len(c.col_unit))
    if gram is not None:
        return solve(gram, W, cols, ridge)
    drop = torch.ones(len(W), dtype=torch.bool)
    drop[torch.as_tensor(cols)] = False
    return W.masked_fill(drop[:, None], 0.0)


def _top1(logits: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * float((logits.argmax(1) == y).float().mean())


def _output_curve(st: _State, info: GroupInfo, picks: np.ndarray, x: torch.Tensor,
                  loss: Any) -> np.ndarray:
    """``loss(logits)`` of the network on ``x`` with only this group pruned to its first
    j + 1 ``picks`` (reweighted when ``reweight``), at ``output_points`` evenly spaced j;
    NaN elsewhere."""
    cfg, g = st.config, st.graph.group(info.gid)
    net = copy.deepcopy(st.original)
    frozen = np.nonzero(~g.prunable)[0]
    curve = np.full(len(picks), np.nan)
    points = np.unique(np.clip(np.round(np.linspace(0, 1, cfg.output_points + 1)[1:]
                                        * len(picks)).astype(int), 1, len(picks)))
    for n in points:
        mask = np.zeros(g.width, dtype=bool)
        mask[np.concatenate([frozen, picks[:n]])] = True
        for c in info.consumers:
            gram = st.layer_grams[c.name] if cfg.reweight and info.closed else None
            st.ic.write(net, c.name, _consumer_weight(
                c, mask, st.ic.matrix(st.original, c.name), gram, cfg.ridge))
        with torch.inference_mode():
            curve[n - 1] = loss(net(x))
    return curve


def _currentgrams(st: _State, names: list[str]) -> dict[str, Gram]:
    if st.config.variant == "layer":
        return {n: st.layer_grams[n] for n in names}
    if st.native:
        fwd, hooked = st.work, _modules(st.work, names)
    else:
        fwd = st.graph.masked_reference(_plan(st.graph, st.keep), root=st.work)
        hooked = _modules(fwd.root, names)
    targets = {n: st.ic.matrix(st.original, n) for n in names} if st.ref is not None else None
    return grams(fwd, hooked, st.original, st.batches, st.ref, targets, set(st.ic.sinks),
                  None if st.native else st.graph.replay_batch)


def _prune_group(st: _State, info: GroupInfo, k: int) -> dict[str, Any]:
    cfg, g = st.config, st.graph.group(info.gid)
    names = [c.name for c in info.consumers]
    kept, value, grams = np.arange(g.width), None, None
    if k < g.width:
        if cfg.selector == "greedy" or (cfg.reweight and info.closed):
            grams = _currentgrams(st, names)
        target = st.original if cfg.variant == "asym" else st.work
        kept, value = _select(cfg, info, g.width, g.prunable, k, grams, st.work,
                              {n: st.ic.matrix(target, n) for n in names}, st.scores)
    mask = np.zeros(g.width, dtype=bool)
    mask[kept] = True
    st.keep[g.units[~mask]] = False
    reweighted = bool(cfg.reweight and info.closed and k < g.width)
    for c in info.consumers if k < g.width and info.closed else ():
        src = st.original if reweighted and cfg.variant == "asym" else st.work
        st.ic.write(st.work, c.name, _consumer_weight(c, mask, st.ic.matrix(src, c.name),
                                                     grams[c.name] if reweighted else None,
                                                     cfg.ridge))
    if k < g.width and not info.closed:
        st.native = False
    return {"group": info.gid, "width": g.width, "kept": int(mask.sum()), "objective": value,
            "closed": info.closed, "reason": info.reason, "reweighted": reweighted,
            "consumers": names, "intercept": [n for n in names if n in st.ic.sinks]}


# ------------------------------------------------------------------ helpers
def _problem(c: Consumer, gram: Gram, W: torch.Tensor, width: int) -> Problem:
    fixed = c.fixed if len(W) == len(c.col_unit) else np.append(c.fixed, len(c.col_unit))
    return Problem.of(gram, W, c.unit_cols(width), fixed)


def _plan(graph: ChannelGraph, keep: np.ndarray, meta: dict | None = None) -> Plan:
    return graph.plan_of_mask(keep, meta)


def _ratio(graph: ChannelGraph, keep: np.ndarray, config: SubmodularConfig,
           ids: list[str], latency: Any = None) -> float:
    from .projector import Projector
    budget = Budget(config.target, config.metric, scope=config.scope, latency=latency)
    return round(Projector(graph, budget, group_ids=ids).ratio(keep), 6)
