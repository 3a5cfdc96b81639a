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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import TargetError
from ..outputs import make_dirs, write_text as atomic_write_text
from ..plan import Plan
from .base import check_batches
from .emo_config import EmoConfig
from .emo_eval import Evaluator
from .pareto import archive_hv, hypervolume, non_dominated
from .split import Segment

__all__ = ["EmoConfig", "EmoResult", "EmoSearch", "hypervolume", "non_dominated"]


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
                 checkpoint: str | os.PathLike[str] | None = None, latency: Any = None) -> None:
        from .executor import InProcess, RayExecutor
        batches = list(data.split(128)) if isinstance(data, torch.Tensor) else list(data)
        check_batches(example, batches, "EmoSearch")
        if config.metric == "latency" and executor != "inprocess":
            raise TargetError("a latency objective runs in-process (the latency model is "
                              "measured here); use executor='inprocess'")
        self.config = config
        args = (model, example, batches, config)
        self.local = Evaluator(*args, latency=latency)
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
                st["hv"].append(archive_hv(cache))
                state["evaluations"] = self.evaluations
                self._save(state)
            if bar:
                bar.update(st["gen"] + 1)
            while st["gen"] < self.config.generations:
                X, F_ = self._generation(seg.index, np.array(st["X"]), np.array(st["F"]),
                                         st["gen"] + 1, cache)
                st.update(gen=st["gen"] + 1, X=X.tolist(), F=F_.tolist())
                st["hv"].append(archive_hv(cache))
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
                         "cost_ratio": round(self.local.cost_value(keep) / self.local.base, 6),
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
