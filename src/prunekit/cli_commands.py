"""The work behind each ``prunekit`` subcommand. Validation first (:mod:`.cli_inputs`),
then work, then output."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch

from .cli_inputs import (batches_of, calibration_of, check_resume, data_of, example_of,
                         labelled_of, model_of, model_or_pruned, out_folder, plot_training,
                         pruned_job, teacher_of, train_config_of, work_folder, write_json)
from .cli_compress import cmd_compress  # noqa: F401
from .cli_latency import LATENCY_OPTIONS, cmd_latency, latency_model, speedups  # noqa: F401
from .errors import CliError, PrunekitError

# PRUNEKIT_THREADS lets two jobs share a small machine (one thread each) without
# oversubscribing it; the default uses up to 2 cores.
torch.set_num_threads(int(os.environ.get("PRUNEKIT_THREADS") or min(2, os.cpu_count() or 1)))


def cmd_train(cfg: dict) -> int:
    model, s = model_of(cfg)
    teacher = teacher_of(cfg, s)
    resume = bool(cfg.get("resume"))
    out = out_folder(cfg, resume=resume)
    if resume:
        check_resume(out / "config.json", cfg)
    tcfg = train_config_of(cfg, int(cfg["epochs"]), float(cfg["lr"]))
    arrays = data_of(cfg)
    from .outputs import resumable, save_torch, staged_folder
    from .train import fit
    train, test = batches_of(arrays, s, cfg)
    # a fresh run trains in --out (resumable after a kill); --overwrite trains beside it
    # and replaces it only when complete
    replacing = bool(cfg.get("overwrite")) and out.is_dir() and any(out.iterdir())
    with (staged_folder(out, overwrite=True) if replacing else
          resumable(out, state="checkpoint.pt", fresh=not resume)) as folder:
        if not resume:      # a resumed run keeps the saved config until it completes
            write_json(folder / "config.json", cfg)
        history = fit(model, train, test, tcfg, folder, resume=resume, teacher=teacher,
                      on_epoch=lambda r: print(json.dumps({
                          k: round(v, 4) if isinstance(v, float) else v
                          for k, v in r.items()}), flush=True))
        save_torch(model.state_dict(), folder / "model.pt")
        write_json(folder / "metrics.json", history[-1] if history else {})
        if resume:          # the settings the completed run ended with
            write_json(folder / "config.json", cfg)
        plot_training(history, folder / "training.png")
    print(f"done: {out} (model.pt, checkpoint.pt, log.jsonl, metrics.json)")
    return 0


def cmd_average(cfg: dict) -> int:
    """Average the weights of ``--checkpoints`` (a uniform model soup), optionally re-estimate
    the BatchNorm statistics, and evaluate every input and the average when data is given."""
    from .outputs import save_torch, staged_folder
    from .train import average_state_dicts, evaluate, recalibrate_bn
    paths = cfg.get("checkpoints") or []
    if cfg.get("checkpoint") or cfg.get("pruned"):
        raise CliError("average takes --checkpoints A B ..., not --checkpoint or --pruned")
    if len(paths) < 2:
        raise CliError("--checkpoints needs at least two checkpoint files")
    bn = cfg["bn_batches"]
    if isinstance(bn, bool) or not isinstance(bn, int) or bn < 0:
        raise CliError(f"bn_batches must be a whole number >= 0, got {bn!r}")
    loaded = [model_of({"model": cfg.get("model"), "checkpoint": p}) for p in paths]
    models, s = [m for m, _ in loaded], loaded[0][1]
    out = out_folder(cfg)
    arrays = data_of(cfg, required=bool(cfg.get("data")) or bn > 0)
    avg = copy.deepcopy(models[0])
    avg.load_state_dict(average_state_dicts([m.state_dict() for m in models]))
    train, test = batches_of(arrays, s, cfg) if arrays else (None, None)
    if bn:
        train.set_epoch(0)
        recalibrate_bn(avg, train, bn)
    rows = [{"checkpoint": str(p), **(evaluate(m, test) if test else {})}
            for p, m in zip(paths, models)]
    rows.append({"checkpoint": "average", **(evaluate(avg, test) if test else {})})
    if test:
        print(f"{'checkpoint':<60} {'top-1 (%)':>9}")
        for r in rows:
            print(f"{r['checkpoint']:<60} {r['top1']:>9.2f}")
    with staged_folder(out, overwrite=bool(cfg.get("overwrite"))) as folder:
        write_json(folder / "config.json", cfg)
        save_torch(avg.state_dict(), folder / "model.pt")
        write_json(folder / "metrics.json", {"bn_batches": bn, "rows": rows})
    print(f"done: {out} (model.pt, metrics.json)")
    return 0


def cmd_eval(cfg: dict) -> int:
    model, s = model_or_pruned(cfg)
    arrays = data_of(cfg)
    from .train import evaluate
    _, test = batches_of(arrays, s, cfg)
    print(json.dumps(evaluate(model, test)))
    return 0


def cmd_prune(cfg: dict) -> int:
    """Any registered method: its config from the options, its context from what its
    ``needs`` ask (calibration images, training batches, labelled images), its work
    folder beside --out (resumable) for methods that keep one; then :func:`_finish`."""
    from .methods.protocol import Context, get_method, needs_of, prepare
    try:
        method = get_method(cfg["method"])
    except PrunekitError as exc:
        raise CliError(str(exc)) from None
    model, s = model_of(cfg)
    config = _method_config(method, cfg)
    metrics = getattr(method, "metrics", ("macs", "params"))
    if config.metric not in metrics:      # before any data is read
        raise CliError(f"method {method.name} does not take metric {config.metric!r} (it "
                       f"takes {', '.join(metrics)})")
    needs = needs_of(method, config)
    trains = "train" in needs
    if trains and cfg["finetune_epochs"]:
        raise CliError(f"finetune_epochs is not used by method {method.name} (it trains the "
                       "pruned model to the end of --epochs); remove it")
    out = out_folder(cfg)
    arrays = data_of(cfg, required=bool(needs) or bool(cfg["finetune_epochs"])
                   or bool(cfg.get("data")))
    ctx = Context(example_of(s), progress=True, executor=cfg["executor"],
                  workers=int(cfg["workers"]))
    if "calibration" in needs:
        ctx.calibration = calibration_of(arrays, s, cfg)
    if trains:
        ctx.train, ctx.test = batches_of(arrays, s, cfg)
        ctx.train_config = train_config_of(cfg, int(cfg["epochs"]), float(cfg["lr"]))
    if "labelled" in needs:
        ctx.labelled = labelled_of(arrays, s, cfg)
    if config.metric == "latency" and config.metric in getattr(method, "metrics", ()):
        ctx.latency = latency_model(cfg, model, s, config.ignore)
    elif any(cfg.get(k) is not None for k in LATENCY_OPTIONS):
        raise CliError(f"{', '.join(k for k in LATENCY_OPTIONS if cfg.get(k) is not None)} "
                       "only apply with --metric latency")
    prepare(method, config, ctx, model)
    if not getattr(method, "resumable", False):
        rounds = None
        if ctx.latency is not None and getattr(method, "rerun", False):
            from .latency import meet_measured
            result, rounds = meet_measured(ctx.latency, model,
                                           lambda c: method.run(model, c, ctx), config)
        else:
            result = method.run(model, config, ctx)
        extra = speedups(ctx.latency, model, result, config.target, rounds) \
            if ctx.latency else None
        if extra is not None and rounds:
            extra["rounds"] = rounds
        return _finish(cfg, out, model, result.model, result.plan, arrays, s, report=extra)
    resume, block = work_folder(out, method.name, cfg)
    with block as work:
        ctx.folder, ctx.resume = work, resume
        result = method.run(model, config, ctx)
        return _finish({**cfg, "finetune_epochs": 0} if trains else cfg, out, model,
                       result.model, result.plan, arrays, s, extra={method.name: work})


def _method_config(method, cfg: dict):
    """The method's config from the resolved options: the shared budget fields and the
    method's own fields the user set (the rest keep the config's defaults)."""
    from dataclasses import fields
    names = {f.name for f in fields(method.config)}
    given = {k: cfg[k] for k in names if cfg.get(k) is not None}
    for k in ("groups", "ignore"):     # an empty list: the config's default (all, none)
        if not given.get(k):
            given.pop(k, None)
    try:
        return method.config.from_dict(given)
    except (TypeError, ValueError) as exc:
        raise CliError(str(exc)) from None


def cmd_reweight(cfg: dict) -> int:
    base, s, pruned, plan, out, arrays = pruned_job(cfg)
    from .graph import ChannelGraph
    from .methods import reweight
    graph = ChannelGraph.build(base, example_of(s))
    fixed, report = reweight(base, pruned, plan, graph, calibration_of(arrays, s, cfg),
                             progress=True)
    for r in report:
        print(f"{r['layer']:<28} relative output error {r['rel_err_before']:.4f} -> "
              f"{r['rel_err_after']:.4f}")
    return _finish(cfg, out, base, fixed, plan, arrays, s)


def _finish(cfg, out: Path, original, pruned, plan, arrays, s,
            extra: dict[str, Path] | None = None, report: dict | None = None) -> int:
    """Optionally fine-tune, measure before/after, write the run folder atomically
    (``extra``: folders to move into it under the given names)."""
    from .io import save_pruned
    from .outputs import staged_folder, write_text
    from .reporting import before_after, plot_widths
    with staged_folder(out, overwrite=bool(cfg.get("overwrite"))) as tmp:
        if arrays is not None and cfg["finetune_epochs"]:
            from .train import fit
            train, test = batches_of(arrays, s, cfg)
            tcfg = train_config_of(cfg, int(cfg["finetune_epochs"]), float(cfg["finetune_lr"]))
            history = fit(pruned, train, test, tcfg, tmp / "finetune")
            plot_training(history, tmp / "training.png")
        pruned.eval()
        test = batches_of(arrays, s, cfg)[1] if arrays is not None else None
        table, metrics = before_after(original, pruned, example_of(s), test)
        save_pruned(tmp / "model", pruned, plan, (example_of(s),))
        plan.save(tmp / "plan.json")
        write_json(tmp / "metrics.json", {**metrics, **({"latency": report} if report else {})})
        write_json(tmp / "config.json", cfg)
        plot_widths(original, pruned, tmp / "widths.png")
        write_text(tmp / "summary.txt", table + "\n")
    # the method's work folders (beside --out, same file system) move in by rename once
    # the output is complete; until then a failure leaves them where --resume finds them
    for name, folder in (extra or {}).items():
        os.replace(folder, out / name)
    print(table)
    if report:
        print(f"speed-up on {report['target']['backend']}/{report['target']['device']}, batch "
              f"{report['target']['batch']}, {report['target']['threads']} threads: requested "
              f"{report['requested']:.2f}x, predicted {report['predicted']:.2f}x, measured "
              f"{report['measured']:.2f}x")
    print(f"outputs: {out}/ (model/, plan.json, metrics.json, summary.txt, widths.png)")
    return 0


def cmd_space(cfg: dict) -> int:
    """``prune --method space``: subnetworks inherit the weights of --checkpoint."""
    if not cfg.get("checkpoint"):
        raise CliError("--checkpoint is required (subnetworks inherit its weights)")
    return cmd_prune({**cfg, "method": "space"})


def cmd_finetune(cfg: dict) -> int:
    base, s, pruned, plan, out, arrays = pruned_job(cfg)
    from .train import fit
    train, test = batches_of(arrays, s, cfg)
    alpha = cfg["distill_alpha"] or (0.5 if cfg.get("distill") else 0.0)
    tcfg = train_config_of({**cfg, "distill_alpha": alpha}, int(cfg["epochs"]),
                         float(cfg["finetune_lr"]))
    from .io import save_pruned
    from .outputs import staged_folder
    with staged_folder(out, overwrite=bool(cfg.get("overwrite"))) as folder:
        fit(pruned, train, test, tcfg, folder / "train", teacher=base if alpha else None)
        save_pruned(folder / "model", pruned.eval(), plan, (example_of(s),))
    print(f"done: {out}/model")
    return 0


def _export_target(cfg: dict) -> Path:
    """The ONNX file to write: never one of the inputs, never an existing file unless
    ``--overwrite``, in a writable folder; checked before any work."""
    if not cfg.get("out"):
        raise CliError("--out FILE.onnx is required")
    out = Path(cfg["out"])
    inputs = [Path(cfg[k]) for k in ("checkpoint", "config") if cfg.get(k)]
    if cfg.get("pruned") and Path(cfg["pruned"]).is_dir():
        inputs += [p for p in Path(cfg["pruned"]).rglob("*") if p.is_file()]
    for src in inputs:
        if src.exists() and out.exists() and os.path.samefile(src, out):
            raise CliError(f"--out {out} is an input of this export ({src}); choose another "
                           "file, e.g. model.onnx")
    if out.is_dir():
        raise CliError(f"--out {out} is a folder; give a file name such as {out}/model.onnx")
    if out.exists() and not cfg.get("overwrite"):
        raise CliError(f"--out {out} exists; pass --overwrite to replace it or choose another "
                       "file")
    parent = next((p for p in [out.parent, *out.parent.parents] if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK):
        raise CliError(f"cannot write {out}: {out.parent} is not a writable folder")
    return out


def cmd_export(cfg: dict) -> int:
    _export_target(cfg)
    model, s = model_or_pruned(cfg)
    from .io import export_onnx
    err = export_onnx(model, (example_of(s),), cfg["out"])
    print(f"wrote {cfg['out']} (onnxruntime vs PyTorch max abs difference {err:.2e})")
    return 0


def cmd_info(cfg: dict) -> int:
    from .models import REGISTRY
    if cfg.get("list"):
        print("\n".join(sorted(REGISTRY)) + "\n(and tv:<any torchvision classifier>)")
        return 0
    model, s = model_or_pruned(cfg)
    from .graph import ChannelGraph
    from .reporting import layer_table
    graph = ChannelGraph.build(model, example_of(s))
    print(layer_table(model, example_of(s)))
    print()
    print(graph.explain(show_frozen=bool(cfg.get("all"))))
    return 0
