"""EMO-DIR: evolutionary multi-objective pruning by divide-and-conquer (Shang et al., 2023).

1. **Divide** (:mod:`.split`): the network is cut at single-tensor points into
   ``parts`` sub-networks of about equal MACs (a ResNet's stages); each searches
   the groups local to it.
2. **Per sub-network EMO**: NSGA-II (pymoo, ask/tell) over one keep fraction per
   group (which channels: the ``criterion`` ranking), objectives (cost of the
   sub-network's layers / full, impairment). Impairment is the relative squared
   error of the pruned sub-network's output features against the original's, on
   the original's input features, after re-estimating the sub-network's BN
   statistics on the calibration images. No labels.
3. **Global performance-impairment ranking**: from every sub-network's front,
   whole-network plans are chained from dense to smallest by always taking the
   sub-network step with the least impairment per MAC saved; plans along the chain
   are measured whole (output error after BN recalibration) and the
   non-dominated ones form the returned front.
4. **Cross-network constraints** (``feature_steps`` > 0): before the whole-network
   measurement, each candidate's sub-networks are trained in order for a few steps
   to map the features its (pruned, trained) predecessor produces to the
   original's output features (MSE), so independently pruned parts fit together.

Every generation is a fresh NSGA-II seeded by (seed, sub-network, generation) and
started from the saved population, so a search killed at any point and resumed
from its checkpoint gives the same front as an uninterrupted one; evaluations go
through an executor (in-process or Ray), which does not change the result.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TargetError
from ..graph import ChannelGraph
from ..graph.verify import flat_outputs
from ..importance import CRITERIA
from ..outputs import make_dirs, write_text as atomic_write_text
from ..plan import Plan
from .base import check_batches
from .allocate import metric_value
from .protocol import MethodConfig
from .split import Runner, Segment, features, split
from .widths import WidthPlanner


@dataclass(frozen=True)
class EmoConfig(MethodConfig):
    """The search (``parts`` sub-networks, NSGA-II of ``pop_size`` for ``generations``,
    ``chain_points`` whole-network plans measured) and the budget: the returned plan is
    the front's point closest under ``target``, its widths scaled onto the target (the
    whole front is in ``Result.front``)."""

    parts: int = 3                 # sub-networks; 1 = whole-network NSGA-II
    pop_size: int = 16
    generations: int = 8
    criterion: str = "l1"
    min_keep: float = 0.1          # smallest keep fraction of a group
    chain_points: int = 12         # whole-network plans measured in the global ranking
    feature_steps: int = 0         # cross-network feature-matching steps per sub-network
    feature_lr: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.parts < 1 or self.pop_size < 4 or self.generations < 0 or \
                self.chain_points < 2 or self.feature_steps < 0:
            raise TargetError("parts >= 1, pop_size >= 4, generations >= 0, chain_points >= 2 "
                              "and feature_steps >= 0 are required")
        if not 0 < self.min_keep <= 1:
            raise TargetError(f"min_keep must be in (0, 1], got {self.min_keep}")
        if self.criterion not in CRITERIA:
            raise TargetError(f"criterion must be one of {CRITERIA}, got {self.criterion!r}")


# ------------------------------------------------------------------ evaluation
class Evaluator:
    """Everything an evaluation needs; built once per worker from picklable parts."""

    def __init__(self, model: nn.Module, example: torch.Tensor, batches: list[torch.Tensor],
                 config: EmoConfig) -> None:
        self.model, self.config = model.eval(), config
        self.graph = ChannelGraph.build(self.model, example, ignore=config.ignore)
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
        self.base = self._value(self.graph.cost())
        self.full = {s.index: self._value(self.graph.layers_cost(list(s.groups)))
                     for s in self.segments if s.groups}
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

    def _value(self, cost) -> float:
        return float(metric_value(cost, self.config.metric))

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
        inside = self.full[s] - (self.base - self._value(self.graph.cost_of_mask(keep)))
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


# ------------------------------------------------------------------ pareto utilities
def non_dominated(F_: np.ndarray) -> np.ndarray:
    """Indices of the points no other point dominates (minimisation), via pymoo."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting
    if len(F_) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.asarray(NonDominatedSorting().do(np.asarray(F_, dtype=float),
                                               only_non_dominated_front=True), dtype=np.int64)


def hypervolume(F_: np.ndarray, ref: Sequence[float]) -> float:
    from pymoo.indicators.hv import HV
    F_ = np.asarray(F_, dtype=float)
    F_ = F_[(F_ < np.asarray(ref)).all(axis=1)] if len(F_) else F_
    return float(HV(ref_point=np.asarray(ref, dtype=float))(F_)) if len(F_) else 0.0


def _cheaper(front: list[dict]) -> list[dict]:
    """A sub-network's front (most expensive first) without the points that save nothing
    over the one before them (the dense candidate itself, ties): every step of the
    global ranking then saves cost."""
    out, last = [], 1.0
    for p in front:
        if p["cost_ratio"] < last:
            out.append(p)
            last = p["cost_ratio"]
    return out


HV_REF = (1.05, 1.05)   # (cost ratio, impairment): a point must beat both to count


def _archive_hv(cache: dict[str, list[float]]) -> float:
    """Hypervolume of everything evaluated so far (so it never decreases)."""
    return round(hypervolume(np.array(list(cache.values())), HV_REF), 6)


# ------------------------------------------------------------------ search
@dataclass
class EmoResult:
    front: list[dict[str, Any]]             # whole-network plans: widths, cost, impairment
    subnet_fronts: list[list[dict[str, Any]]]
    hypervolume: list[list[float]]          # per sub-network, per generation
    evaluations: int
    plans: list[Plan] = field(default_factory=list)

    def save(self, folder: str | os.PathLike[str]) -> None:
        """front.json (with each plan), front.csv, hypervolume.json."""
        folder = Path(folder)
        make_dirs(folder)
        doc = [{**row, "plan": json.loads(p.to_json())} for row, p in zip(self.front, self.plans)]
        atomic_write_text(folder / "front.json", json.dumps(doc, indent=1))
        lines = ["cost_ratio,macs,params,impairment"] + [
            f"{r['cost_ratio']},{r['macs']},{r['params']},{r['impairment']}" for r in self.front]
        atomic_write_text(folder / "front.csv", "\n".join(lines) + "\n")
        atomic_write_text(folder / "hypervolume.json", json.dumps(
            {"per_subnet_per_generation": self.hypervolume, "evaluations": self.evaluations}))


class EmoSearch:
    """Run with :meth:`run`; ``checkpoint`` (a folder) makes it resumable."""

    def __init__(self, model: nn.Module, example: torch.Tensor,
                 data: torch.Tensor | list[torch.Tensor], config: EmoConfig = EmoConfig(), *,
                 executor: str = "inprocess", workers: int = 2,
                 checkpoint: str | os.PathLike[str] | None = None) -> None:
        from .executor import InProcess, RayExecutor
        batches = list(data.split(128)) if isinstance(data, torch.Tensor) else list(data)
        check_batches(example, batches, "EmoSearch")
        self.config = config
        args = (model, example, batches, config)
        self.local = Evaluator(*args)
        self.exec = InProcess(lambda: self.local) if executor == "inprocess" else \
            RayExecutor(Evaluator, args, workers=workers)
        self.ckpt = Path(checkpoint) if checkpoint else None
        self.evaluations = 0

    # ---------------------------------------------------------------- state
    def _load(self) -> dict[str, Any]:
        if self.ckpt and (self.ckpt / "state.json").is_file():
            from ..inputs import read_json
            state = read_json(self.ckpt / "state.json", "search state")
            if not isinstance(state, dict) or not isinstance(state.get("subnets"), dict):
                raise TargetError(f"{self.ckpt / 'state.json'} is not an EMO-DIR search "
                                  "state; delete the folder to start over")
            if state.get("config") != self._searched():
                raise TargetError(f"checkpoint {self.ckpt} was made with another config")
            return state
        return {"config": self._searched(), "subnets": {}, "evaluations": 0}

    def _searched(self) -> dict[str, Any]:
        """The settings the search depends on (the target only chooses from its front)."""
        return {k: v for k, v in json.loads(json.dumps(asdict(self.config))).items()
                if k != "target"}

    def _save(self, state: dict[str, Any]) -> None:
        if self.ckpt:
            atomic_write_text(self.ckpt / "state.json", json.dumps(state))

    # ---------------------------------------------------------------- evaluation
    def _evaluate(self, s: int, X: np.ndarray, cache: dict[str, list[float]]) -> np.ndarray:
        seg = self.local.segments[s]
        keys = [tuple(self.local.widths(seg, x).values()) for x in X]
        todo = sorted({k for k in keys if repr(k) not in cache})
        if todo:
            for k, f in zip(todo, self.exec.map("subnet", [(s, k) for k in todo])):
                cache[repr(k)] = list(f)
            self.evaluations += len(todo)
        return np.array([cache[repr(k)] for k in keys], dtype=float)

    def _problem(self, seg: Segment):
        from pymoo.core.problem import Problem
        n = len(seg.groups)
        return Problem(n_var=n, n_obj=2, xl=np.full(n, self.config.min_keep), xu=np.ones(n))

    def _generation(self, s: int, X: np.ndarray, F_: np.ndarray, gen: int,
                    cache: dict) -> tuple[np.ndarray, np.ndarray]:
        from pymoo.algorithms.moo.nsga2 import NSGA2
        from pymoo.core.evaluator import Evaluator as PymooEvaluator
        from pymoo.problems.static import StaticProblem
        problem = self._problem(self.local.segments[s])
        algo = NSGA2(pop_size=self.config.pop_size, sampling=X, eliminate_duplicates=True)
        algo.setup(problem, seed=self.config.seed, termination=("n_gen", 10 ** 9))
        pop = algo.ask()   # the saved population (initialisation may drop duplicates)
        known = {tuple(x): f for x, f in zip(np.asarray(X).tolist(), np.asarray(F_).tolist())}
        F_pop = np.array([known[tuple(x)] for x in pop.get("X").tolist()], dtype=float)
        PymooEvaluator().eval(StaticProblem(problem, F=F_pop), pop)
        algo.tell(infills=pop)
        algo.random_state = np.random.default_rng([self.config.seed, s, gen])
        off = algo.ask()
        F_off = self._evaluate(s, off.get("X"), cache)
        PymooEvaluator().eval(StaticProblem(problem, F=F_off), off)
        algo.tell(infills=off)
        return algo.pop.get("X"), algo.pop.get("F")

    def _initial(self, s: int) -> np.ndarray:
        n = len(self.local.segments[s].groups)
        rng = np.random.default_rng([self.config.seed, s, 10 ** 6])
        X = rng.uniform(self.config.min_keep, 1.0, size=(self.config.pop_size, n))
        X[0] = 1.0                     # the dense sub-network and the smallest one anchor
        X[1] = self.config.min_keep    # both ends of the front
        return X

    # ---------------------------------------------------------------- run
    def run(self, progress: bool = False) -> EmoResult:
        state = self._load()
        self.evaluations = state["evaluations"]
        segs = [s for s in self.local.segments if s.groups]
        total = len(segs) * (self.config.generations + 1)
        bar = None
        if progress:
            from ..progress import bar as progress_bar
            bar = progress_bar(total=total, desc="emo", unit="gen")
        hv_all, fronts = [], []
        for seg in segs:
            key = str(seg.index)
            st = state["subnets"].setdefault(key, {"gen": -1, "cache": {}, "hv": []})
            cache = st["cache"]
            if st["gen"] < 0:
                X = self._initial(seg.index)
                F_ = self._evaluate(seg.index, X, cache)
                st.update(gen=0, X=X.tolist(), F=F_.tolist())
                st["hv"].append(_archive_hv(cache))
                state["evaluations"] = self.evaluations
                self._save(state)
            if bar:
                bar.update(st["gen"] + 1)
            while st["gen"] < self.config.generations:
                X, F_ = self._generation(seg.index, np.array(st["X"]), np.array(st["F"]),
                                         st["gen"] + 1, cache)
                st.update(gen=st["gen"] + 1, X=X.tolist(), F=F_.tolist())
                st["hv"].append(_archive_hv(cache))
                state["evaluations"] = self.evaluations
                self._save(state)
                if bar:
                    bar.update(1)
            F_ = np.array(st["F"])
            X = np.array(st["X"])
            nd = non_dominated(F_)
            pts = sorted({tuple(self.local.widths(seg, X[i]).values()): tuple(F_[i])
                          for i in nd}.items(), key=lambda kv: -kv[1][0])
            fronts.append([{"widths": dict(zip(seg.groups, w)), "cost_ratio": f[0],
                            "impairment": f[1]} for w, f in pts])
            hv_all.append(st["hv"])
        if bar:
            bar.close()
        front, plans = self._rank(segs, fronts, state)
        return EmoResult(front, fronts, hv_all, self.evaluations, plans)

    def _rank(self, segs: list[Segment], fronts: list[list[dict]],
              state: dict) -> tuple[list[dict], list[Plan]]:
        """Chain whole-network plans by least impairment per MAC saved, measure them whole,
        keep the non-dominated ones."""
        pos = [0] * len(segs)
        full = [self.local.full[s.index] for s in segs]
        opts = [[{"widths": {g: self.local.graph.group(g).width for g in s.groups},
                  "cost_ratio": 1.0, "impairment": 0.0}] + _cheaper(f)
                for s, f in zip(segs, fronts)]
        chain = [self._merge(opts, pos)]
        while True:
            best, rate = None, np.inf
            for i, o in enumerate(opts):
                if pos[i] + 1 >= len(o):
                    continue
                a, b = o[pos[i]], o[pos[i] + 1]
                saved = (a["cost_ratio"] - b["cost_ratio"]) * full[i]
                r = (b["impairment"] - a["impairment"]) / max(saved, 1e-12)
                if saved > 0 and r < rate:
                    best, rate = i, r
            if best is None:
                break
            pos[best] += 1
            chain.append(self._merge(opts, pos))
        pick = np.unique(np.linspace(0, len(chain) - 1, self.config.chain_points).round()
                         .astype(int))
        chosen = [chain[i] for i in pick]
        measured = state.setdefault("whole", {})
        todo = [w for w in chosen if repr(sorted(w.items())) not in measured]
        for w, imp in zip(todo, self.exec.map("whole", todo)):
            measured[repr(sorted(w.items()))] = imp
        self.evaluations += len(todo)
        state["evaluations"] = self.evaluations
        self._save(state)
        rows = []
        for w in chosen:
            keep = self.local.keep(w)
            cost = self.local.graph.cost_of_mask(keep)
            rows.append({"widths": w, "macs": cost.macs, "params": cost.params,
                         "cost_ratio": round(self.local._value(cost) / self.local.base, 6),
                         "impairment": measured[repr(sorted(w.items()))]})
        F_ = np.array([[r["cost_ratio"], r["impairment"]] for r in rows])
        keep_idx = sorted(non_dominated(F_).tolist(), key=lambda i: -rows[i]["cost_ratio"])
        front = [rows[i] for i in keep_idx]
        plans = [self.plan(r["widths"], {"cost_ratio": r["cost_ratio"],
                                         "impairment": r["impairment"]}) for r in front]
        return front, plans

    @staticmethod
    def _merge(opts: list[list[dict]], pos: list[int]) -> dict[str, int]:
        out: dict[str, int] = {}
        for o, p in zip(opts, pos):
            out.update(o[p]["widths"])
        return out

    def plan(self, widths: dict[str, int], meta: dict | None = None) -> Plan:
        return self.local.planner.plan(widths, {"method": "emo", "config": self.config.to_dict(),
                                                **(meta or {})})

    def close(self) -> None:
        self.exec.close()
