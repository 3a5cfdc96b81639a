"""``compress``: from a trained model to a smaller, faster one that keeps its accuracy, in
one call. Select channels (submodular selection with reweighting on calibration images,
one-shot L1 without), re-estimate the BatchNorm statistics, recover by distillation from
the unpruned model on a schedule sized to a time budget, keep the checkpoint that scores
best on a held-out split of the training set, and measure before and after.

Every stage's output is saved in the work folder as it completes, so a killed run resumed
on the same folder (``resume=True``) skips the stages done and continues the recovery
from its last round: it ends where an uninterrupted run ends."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch import nn

from ..errors import TargetError
from .config import CompressConfig
from .schedule import Schedule, plan_schedule, time_step
from .stages import (CompressData, copy_of, load_best, method_for, recalibrate, recover,
                     select, train_config)

__all__ = ["CompressResult", "compress", "recovery_curve"]


@dataclass
class CompressResult:
    """The compressed model and its plan; ``stages``: per stage, what ran, its seconds and
    its held-out top-1; ``curve``: the recovery's rounds (minutes of training, held-out
    top-1); ``schedule``: the recovery's schedule (None: no recovery)."""

    model: nn.Module
    plan: Any
    method: str
    stages: dict[str, dict] = field(default_factory=dict)
    curve: list[dict] = field(default_factory=list)
    schedule: Schedule | None = None


def compress(model: nn.Module, example: Any, config: CompressConfig,
             data: CompressData | None, work: str | Path, *, resume: bool = False,
             latency: Any = None, progress: bool = True,
             say: Callable[[str], None] = print) -> CompressResult:
    """Compress ``model`` (left untouched) to ``config.target`` of its ``config.metric``;
    ``example``: its example inputs; ``work``: the folder the stages are saved in;
    ``latency``: the calibrated :class:`prunekit.latency.LatencyModel` of a latency
    budget. Refused before any work: a recovery without training data, a method that
    needs data without it."""
    check(config, data, latency)
    work = Path(work)
    stages = _prepare(work, config, resume)
    teacher = copy_of(model)
    pruned, plan = _selected(model, example, config, data, latency, work, stages, progress, say)
    if "bn" in stages:
        pruned, plan = _load_stage(work / "bn", model, example)
    elif data is not None and data.train is not None and config.bn_batches:
        pruned, plan = _bn_stage(model, example, config, data, work, stages, pruned, plan,
                                 say)
    result = CompressResult(pruned, plan, stages["select"]["method"], stages)
    if config.recovers:
        result.schedule = _schedule(work, config, pruned, teacher, data, stages, resume, say)
        t = time.perf_counter()
        rounds = recover(pruned, teacher, data, config, result.schedule, work / "recover",
                         resume=resume and (work / "recover").is_dir(), progress=progress,
                         on_round=lambda r: say(_round_line(r, result.schedule)))
        best = load_best(pruned, work / "recover")
        stages["recover"] = {"seconds": sum(r["seconds"] for r in rounds),
                             "wall_s": time.perf_counter() - t, "best_round": best and
                             best["epoch"], "heldout_top1": best and best["heldout_top1"],
                             "rounds": len(rounds)}
        from ..outputs import write_json
        write_json(work / "stages.json", stages)
        result.curve = recovery_curve(stages, rounds)
    return result


def _prepare(work: Path, config: CompressConfig, resume: bool) -> dict:
    """The work folder ready for this run; the stages done before (resumed)."""
    from ..outputs import make_dirs, write_json
    make_dirs(work)
    if resume:
        _same_settings(work / "compress.json", config)
    else:                           # an earlier run's stages and rounds are not this one's
        import shutil
        for old in ("select", "bn", "recover", "stages.json", "schedule.json"):
            p = work / old
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    write_json(work / "compress.json", config.to_dict())
    return _read(work / "stages.json") if resume else {}


def _bn_stage(model, example, config, data, work, stages, pruned, plan, say):
    """Batch-norm statistics re-estimated on training batches, kept only if they score no
    worse on the held-out split than the selection's own."""
    t = time.perf_counter()
    reset = recalibrate(pruned, data.train, config.bn_batches)
    record = {"norms": reset, "batches": config.bn_batches, **_score(pruned, data)}
    before = stages["select"].get("heldout_top1")
    record["kept"] = before is None or record.get("heldout_top1", before) >= before
    note = _fmt(record)
    if not record["kept"]:
        pruned, plan = _load_stage(work / "select", model, example)
        record["heldout_top1_reestimated"] = record.pop("heldout_top1")
        record["heldout_top1"] = before
        note = (f"; held-out top-1 {record['heldout_top1_reestimated']:.2f}% < {before:.2f}% "
                "before, the selection's statistics kept")
    record["seconds"] = time.perf_counter() - t
    _save_stage(work, "bn", pruned, plan, example, stages, record)
    say(f"batch-norm statistics re-estimated over {config.bn_batches} batches ({reset} "
        f"norms){note}")
    return pruned, plan


def check(config: CompressConfig, data: CompressData | None, latency: Any) -> None:
    """What a run needs, checked before any work."""
    method_for(config, data)
    if config.recovers and (data is None or data.train is None):
        raise TargetError("a recovery (budget_minutes or epochs) needs training data")
    if config.metric == "latency" and latency is None:
        raise TargetError("metric latency needs a calibrated latency model (latency=...)")


def _same_settings(path: Path, config: CompressConfig) -> None:
    """A resumed run continues the settings it was started with."""
    if not path.is_file():
        return
    saved = CompressConfig.from_dict(json.loads(path.read_text())).to_dict()
    now = config.to_dict()
    changed = [f"{k} {saved[k]!r} -> {now[k]!r}" for k in now if k != "onnx" and saved[k] != now[k]]
    if changed:
        raise TargetError(f"the run in {path.parent} was started with other settings "
                          f"({', '.join(changed)}); resume it with its own, or start over")


def _selected(model, example, config, data, latency, work, stages, progress, say):
    if "select" in stages:
        say("selection: done before, reloaded")
        return _load_stage(work / "select", model, example)
    t = time.perf_counter()
    result, record = select(model, example, config, data, latency, progress)
    pruned = result.model.eval()
    record.update(seconds=time.perf_counter() - t, **_score(pruned, data))
    _save_stage(work, "select", pruned, result.plan, example, stages, record)
    say(f"selection ({record['method']}): {record['seconds']:.0f} s{_fmt(record)}")
    return pruned, result.plan


def _schedule(work, config, pruned, teacher, data, stages, resume, say) -> Schedule:
    """The recovery's schedule: sized once (timed on this machine for a time budget) and
    saved, so a resumed run keeps it."""
    path = work / "schedule.json"
    if resume and path.is_file():
        return Schedule.from_dict(json.loads(path.read_text()))
    passes = len(data.train)
    if config.epochs is not None:
        sched = plan_schedule(passes, config.evals, epochs=config.epochs)
    else:
        probe = Schedule(1, 0, passes)
        step_s = time_step(pruned, data.train, train_config(config, probe), teacher)
        eval_s = _eval_seconds(pruned, data)
        sched = plan_schedule(passes, config.evals, budget_s=60 * config.budget_minutes,
                              step_s=step_s, eval_s=eval_s)
        say(f"recovery: {config.budget_minutes:g} min at {1e3 * step_s:.0f} ms/step -> "
            f"{sched.total_steps} steps in {sched.epochs} rounds")
    from ..outputs import write_json
    write_json(path, sched.to_dict())
    return sched


def _eval_seconds(model: nn.Module, data: CompressData) -> float:
    if data.heldout is None:
        return 0.0
    from ..train import evaluate
    t = time.perf_counter()
    evaluate(model, data.heldout)
    return time.perf_counter() - t


def _score(model: nn.Module, data: CompressData | None) -> dict:
    if data is None or data.heldout is None:
        return {}
    from ..train import evaluate
    return {"heldout_top1": evaluate(model, data.heldout)["top1"]}


def _save_stage(work: Path, name: str, model, plan, example, stages: dict, record: dict) -> None:
    from ..io import save_pruned
    from ..outputs import write_json
    save_pruned(work / name, model, plan, example)
    stages[name] = record
    write_json(work / "stages.json", stages)


def _load_stage(folder: Path, model: nn.Module, example: Any):
    from ..io import load_pruned
    pruned, plan = load_pruned(folder, copy_of(model), example)
    return pruned.eval(), plan


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def recovery_curve(stages: dict, rounds: list[dict]) -> list[dict]:
    """Held-out top-1 against minutes of recovery training: round 0 is the model as it
    entered the recovery (after the batch-norm stage, else the selection)."""
    start = stages.get("bn", stages["select"]).get("heldout_top1")
    curve = [{"round": 0, "minutes": 0.0, "heldout_top1": start}]
    minutes = 0.0
    for r in rounds:
        minutes += r["seconds"] / 60
        curve.append({"round": r["epoch"], "minutes": minutes,
                      "heldout_top1": r.get("test_top1"), "train_loss": r["train_loss"]})
    return curve


def _fmt(record: dict) -> str:
    top = record.get("heldout_top1")
    return "" if top is None else f"; held-out top-1 {top:.2f}%"


def _round_line(row: dict, sched: Schedule) -> str:
    top = row.get("test_top1")
    return (f"recovery round {row['epoch']}/{sched.epochs}: train loss "
            f"{row['train_loss']:.3f}" + ("" if top is None else f", held-out top-1 {top:.2f}%"))
