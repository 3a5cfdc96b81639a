"""Network pruning spaces under the method protocol: initial space, evaluate, analyse,
refine, evaluate, winner (resumable in the context's folder)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch import nn

from ..errors import TargetError
from ..importance import CRITERIA
from .base import FrontPoint, Result, require_classifier
from .projector import Projector
from .protocol import Context, MethodBase, MethodConfig, register
from .spaces import (PARAMS, Sampler, Space, best_rho, evaluate_samples, held_out, refine,
                     search)


@dataclass(frozen=True)
class SpacesConfig(MethodConfig):
    """``regime``: the MACs band (fractions of the dense model; with ``metric="latency"``
    the band of predicted latency) the populations are drawn
    from; None: ``target`` +- ``band``. ``samples`` subnetworks per space, each fine-tuned
    ``steps`` SGD steps (``step_lr``, batches of ``step_batch``) on the labelled data less
    ``held`` held-out images, which score it. The returned plan is the refined space's
    winner, its widths scaled onto the target; ``Result.front`` holds every refined
    sample with its error."""

    param: str = "auto"
    regime: tuple[float, float] | None = None
    band: float = 0.05
    min_ratio: float = 0.1
    criterion: str = "l1"
    parts: int = 3
    samples: int = 64
    steps: int = 50
    step_lr: float = 0.01
    step_batch: int = 64
    held: int = 2000
    VERSION: ClassVar[int] = 2      # 2: ``batch`` renamed ``step_batch``

    @classmethod
    def migrate(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        if version < 2 and "batch" in data:
            data = {**data, "step_batch": data["batch"]}
            del data["batch"]
        return data

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.param not in PARAMS or self.criterion not in CRITERIA:
            raise TargetError(f"param must be one of {PARAMS} and criterion one of {CRITERIA}")
        if self.samples < 8:
            raise TargetError(f"samples must be >= 8, got {self.samples}")
        if self.steps < 0 or self.step_batch < 1 or self.held < 1 or not 0 < self.band < 1 \
                or self.step_lr <= 0:
            raise TargetError("steps >= 0, step_batch >= 1, held >= 1, band in (0, 1) and "
                              "step_lr > 0 are required")
        self.space()   # validates the regime

    def space(self) -> Space:
        lo, hi = self.regime or (max(0.01, self.target - self.band),
                                 min(1.0, self.target + self.band))
        return Space(param=self.param, regime=(lo, hi), min_ratio=self.min_ratio,
                     criterion=self.criterion, parts=self.parts,
                     metric="latency" if self.metric == "latency" else "macs")


@register
class Spaces(MethodBase):
    """Populations of subnetworks in a cost regime; the refined space's winner."""

    name: ClassVar[str] = "space"
    metrics: ClassVar[tuple[str, ...]] = ("macs", "params", "latency")
    config: ClassVar[type] = SpacesConfig
    needs: ClassVar[frozenset[str]] = frozenset({"labelled"})
    resumable: ClassVar[bool] = True
    parallel: ClassVar[bool] = True
    summary: ClassVar[str] = ("network pruning spaces: sample and evaluate subnetworks in a cost "
                              "regime, refine by the MACs-per-parameter ratio, take the winner")

    def check(self, config: SpacesConfig, context: Context, model: nn.Module | None = None
              ) -> None:
        if model is not None:
            require_classifier(model, context.example, self.name)

    def run(self, model: nn.Module, config: SpacesConfig, context: Context) -> Result:
        x, y = context.labelled
        n_held = min(config.held, max(1, len(x) // 2))
        fit_part, held = held_out(x, y, n_held, config.seed)
        space = config.space()
        example = context.inputs[0]
        args = (model, example, space, fit_part, held, config.steps, config.step_lr,
                config.step_batch, config.seed)
        folder = Path(context.folder) if context.folder is not None else None
        pop = _Population(folder, config, context)
        sampler = Sampler(model, example, space, latency=context.latency)  # one graph
        graph, planner = sampler.graph, sampler.planner
        initial = pop.evaluate("initial", sampler, args)
        analysis = best_rho(initial, seed=config.seed)
        refined_space = refine(space, analysis)
        refined = pop.evaluate("refined", Sampler(model, example, refined_space, graph=graph,
                                                  latency=context.latency),
                               (model, example, refined_space, *args[3:]))
        winner = search(refined)
        if folder is not None:
            _report(folder, space, refined_space, analysis, winner, initial, refined)
        pj = Projector(graph, config.budget(latency=context.latency), planner.scores,
                       group_ids=set(winner["widths"]))
        keep = pj.scale_widths(winner["widths"], planner.keep)
        plan = graph.plan_of_mask(np.asarray(keep, dtype=bool), {
            "method": "space", "config": config.to_dict(), "winner": winner,
            "achieved": round(pj.ratio(keep), 6)})
        front = [FrontPoint(planner.plan(r["widths"]), float(r.get("cost_ratio",
                                                                   r["macs_ratio"])),
                            {"error": float(r["error"]), "rho": float(r["rho"])})
                 for r in refined]
        history = [{"space": name, **r} for name, rows in (("initial", initial),
                                                           ("refined", refined))
                   for r in rows]
        return Result(graph.apply(model, plan), plan, graph, graph.cost(), graph.cost(plan),
                      history, front, config)

    def test_config(self, **overrides: Any) -> SpacesConfig:
        return SpacesConfig(**{"samples": 8, "steps": 1, "step_batch": 4, "held": 8, "band": 0.2,
                               "param": "group", **overrides})


class _Population:
    """Samples a space and evaluates the samples, eight at a time, appending each batch
    to ``folder/NAME.jsonl`` (rewritten atomically), so a killed run resumes."""

    def __init__(self, folder: Path | None, config: SpacesConfig, context: Context) -> None:
        self.folder, self.config, self.context = folder, config, context

    def evaluate(self, name: str, sampler: Sampler, args: tuple) -> list[dict[str, Any]]:
        from ..inputs import read_jsonl
        from ..outputs import write_text
        from ..progress import bar as progress_bar
        path = self.folder / f"{name}.jsonl" if self.folder is not None else None
        done = read_jsonl(path, "evaluated subnetworks") if path and path.is_file() else []
        n = self.config.samples
        samples = sampler.sample(n, seed=self.config.seed)
        todo = samples[len(done):]
        with progress_bar(total=n, initial=len(done), desc=name, unit="subnet",
                          disable=not self.context.progress) as bar:
            for i in range(0, len(todo), 8):
                part = evaluate_samples(todo[i:i + 8], args, self.context.executor,
                                        self.context.workers)
                done += part
                if path is not None:
                    write_text(path, "".join(json.dumps(r) + "\n" for r in done))
                bar.update(len(part))
        return done


def _report(folder: Path, space: Space, refined_space: Space, analysis: dict, winner: dict,
            initial: list[dict], refined: list[dict]) -> None:
    from ..outputs import write_json
    from ..reporting import plot_spaces
    write_json(folder / "analysis.json", {
        "initial_space": json.loads(space.to_json()),
        "refined_space": json.loads(refined_space.to_json()),
        "ratio": analysis, "winner": winner})
    plot_spaces(initial, refined, analysis, folder / "spaces.png")
