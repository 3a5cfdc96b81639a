"""``prunekit compress``: the whole job in one command (:func:`prunekit.pipeline.compress`):
select, re-estimate BatchNorm, recover by distillation within a time budget, keep the
best held-out checkpoint, evaluate, export ONNX, and write one run folder with a report."""

from __future__ import annotations

import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from .cli_inputs import example_of, model_of, out_folder, work_folder
from .errors import CliError, PrunekitError

def config_of(cfg: dict) -> Any:
    """The CompressConfig of the options the user gave (the others keep its defaults)."""
    from .cli import RESOLVED_GIVEN
    from .pipeline import CompressConfig
    names = {f.name for f in fields(CompressConfig)}
    given = {k: cfg[k] for k in names if k in RESOLVED_GIVEN and cfg.get(k) is not None}
    try:
        return CompressConfig.from_dict(given)
    except PrunekitError as exc:
        raise CliError(str(exc)) from None


def data_for(cfg: dict, config: Any, s: Any) -> Any:
    """The CompressData of ``--data``: the training images split into training and held-out
    (class-stratified, seeded; a tenth of them at most), calibration images drawn from the
    training part, the test set for the report only. None without data."""
    from .cli_inputs import calibration_of, data_of
    from .data import Batches, holdout_split
    from .pipeline import CompressData
    needs = "a recovery (--budget-minutes or --epochs)" if config.recovers else \
        "method submodular (unlabeled calibration images)" \
        if config.method == "submodular" else None
    try:
        arrays = data_of(cfg)
    except CliError as exc:
        if needs:
            raise CliError(f"{needs} needs training data; {exc}") from None
        if cfg.get("data"):
            raise
        return None
    tx, ty, vx, vy = arrays
    n = min(config.holdout, len(tx) // 10)
    if n < 1:
        raise CliError(f"{len(tx)} training images are too few to hold out a split")
    kept, held = holdout_split(ty, n, config.seed)
    train = Batches(tx[kept], ty[kept], config.batch_size, s.norm, train=True,
                    seed=config.seed, drop_last=True, cutout=int(cfg["cutout"]))
    if len(train) == 0:
        raise CliError(f"{len(kept)} training images make no batch of {config.batch_size}; "
                       "lower batch_size")
    calib = calibration_of((tx[kept],), s, {"calib": min(config.calib, len(kept)),
                                            "seed": config.seed})
    return CompressData(train=train, heldout=Batches(tx[held], ty[held], 500, s.norm),
                        test=Batches(vx, vy, 500, s.norm), calibration=calib)


def report_target(cfg: dict, config: Any) -> Any:
    """Where the report's latency is measured: the latency options; under a latency budget
    the very target the budget was met on, else batch 64 unless given."""
    from .cli_latency import target_of
    if config.metric == "latency":
        return target_of(cfg)
    return target_of({**cfg, "batch": cfg.get("batch") or 64})


def cmd_compress(cfg: dict) -> int:
    from .pipeline import compress
    from .pipeline.compress import check
    config = config_of(cfg)
    model, s = model_of(cfg)
    out = out_folder(cfg, resume=False)
    target = report_target(cfg, config)
    data = data_for(cfg, config, s)
    try:
        check(config, data, latency=True if config.metric == "latency" else None)
    except PrunekitError as exc:
        raise CliError(str(exc)) from None
    from .cli_latency import latency_model
    latency = latency_model(cfg, model, s) if config.metric == "latency" else None
    resume, block = work_folder(out, "compress", cfg)
    with block as work:
        result = compress(model, example_of(s), config, data, work, resume=resume,
                          latency=latency, say=lambda line: print(line, flush=True))
        metrics = _finish(cfg, out, model, s, config, data, result, target, work)
    os.replace(work, out / "stages")
    _print(metrics, out)
    return 0


def _finish(cfg: dict, out: Path, model, s, config, data, result, target, work: Path) -> dict:
    """The run folder, written whole or not at all."""
    from .io import save_pruned
    from .outputs import staged_folder, write_json
    from .pipeline.report import measure, widths, write_report
    from .reporting import plot_widths
    example = example_of(s)
    metrics = measure(model, result.model, example, data, target)
    notes = []
    if data is None:
        notes.append("no data: one-shot selection, no BatchNorm re-estimation or recovery, "
                     "no accuracy measured")
    with staged_folder(out, overwrite=bool(cfg.get("overwrite"))) as tmp:
        save_pruned(tmp / "model", result.model, result.plan, (example,))
        result.plan.save(tmp / "plan.json")
        if config.onnx:
            notes.append(_export(result.model, example, tmp / "model.onnx"))
        layer_widths = widths(model, result.model)
        write_json(tmp / "metrics.json", {"config": config.to_dict(), **metrics,
                                          "stages": result.stages, "curve": result.curve,
                                          "schedule": result.schedule and
                                          result.schedule.to_dict(), "widths": layer_widths})
        write_json(tmp / "config.json", cfg)
        plot_widths(model, result.model, tmp / "widths.png")
        write_report(tmp, config, result, metrics, layer_widths, notes)
    return metrics


def _export(model, example, path: Path) -> str:
    try:
        from .io import export_onnx
        err = export_onnx(model, (example,), path)
    except ImportError as exc:
        return f"ONNX export skipped: {exc} (pip install 'prunekit[onnx]')"
    except Exception as exc:      # the exporters raise many kinds; the run's model is kept
        print(f"prunekit compress: warning: ONNX export failed: {exc}", file=sys.stderr)
        return f"ONNX export failed: {type(exc).__name__}: {str(exc)[:200]}"
    return f"model.onnx: onnxruntime against PyTorch, max abs difference {err:.2e}"


def _print(metrics: dict, out: Path) -> None:
    b, a = metrics["before"], metrics["after"]
    for key, label in (("test_top1", "top-1 (test)"), ("heldout_top1", "top-1 (held-out)")):
        if key in b:
            print(f"{label}: {b[key]:.2f}% -> {a[key]:.2f}% ({a[key] - b[key]:+.2f})")
    print(f"params {b['params']:,} -> {a['params']:,}; MACs {b['macs']:,} -> {a['macs']:,}; "
          f"latency {b['latency_ms']:.2f} -> {a['latency_ms']:.2f} ms "
          f"({b['latency_ms'] / a['latency_ms']:.2f}x faster)")
    print(f"outputs: {out}/ (report.md, model/, model.onnx, plan.json, metrics.json, "
          "recovery.png, widths.png, stages/)")
