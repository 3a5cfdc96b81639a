"""The work behind each ``prunekit`` subcommand. Validation first, then work, then output."""

from __future__ import annotations

import contextlib
import copy
import json
import sys
import os
import shutil
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from .errors import CliError, PrunekitError

# PRUNEKIT_THREADS lets two jobs share a small machine (one thread each) without
# oversubscribing it; the default uses up to 2 cores.
torch.set_num_threads(int(os.environ.get("PRUNEKIT_THREADS") or min(2, os.cpu_count() or 1)))


# ------------------------------------------------------------------ validation
def _model(cfg: dict) -> tuple[torch.nn.Module, Any]:
    from .models import ModelError, create, load_checkpoint, spec
    if not cfg.get("model"):
        raise CliError("--model is required")
    try:
        s = spec(cfg["model"])
        model = create(cfg["model"])
        if cfg.get("checkpoint"):
            load_checkpoint(model, cfg["checkpoint"])
    except ModelError as exc:
        raise CliError(str(exc)) from exc
    return model.eval(), s


def _example(s) -> torch.Tensor:
    return torch.zeros(1, *s.input_size)


def _pruned(cfg: dict, base: torch.nn.Module, s) -> tuple[torch.nn.Module, Any]:
    from .io import load_pruned
    folder = Path(cfg["pruned"])
    if not (folder / "plan.json").is_file():
        raise CliError(f"{folder} is not a saved pruned model (no plan.json)")
    try:
        meta = json.loads((folder / "plan.json").read_text()).get("meta", {})
    except (OSError, ValueError, AttributeError) as exc:
        raise CliError(f"cannot read {folder / 'plan.json'}: {exc}") from exc
    if meta.get("bypass"):  # LAPP kept its bypass branches: rebuild them before replay
        from .methods.lapp import add_bypass
        add_bypass(base)
    return load_pruned(folder, base, (_example(s),))


def _model_or_pruned(cfg: dict) -> tuple[torch.nn.Module, Any]:
    """The model of --model/--checkpoint, or the saved pruned model of --pruned."""
    model, s = _model(cfg)
    if cfg.get("pruned"):
        model, _ = _pruned(cfg, model, s)
    return model, s


def _data(cfg: dict, required: bool = True):
    from .data import DataError, load_cifar10
    try:
        tx, ty, vx, vy = load_cifar10(cfg.get("data"))
    except DataError as exc:
        if required:
            raise CliError(str(exc)) from exc
        return None
    if cfg.get("subset"):
        from .data import calibration_set
        tx, ty = calibration_set(tx, ty, int(cfg["subset"]), cfg["seed"], balanced=True)
    return tx, ty, vx, vy


def _out(cfg: dict, resume: bool = False) -> Path:
    """The output folder, checked before any work: not a file, not holding an input of
    the run, empty unless ``--overwrite`` (or ``--resume``, for a run to continue), and
    in a writable place."""
    if not cfg.get("out"):
        raise CliError("--out is required")
    out = Path(cfg["out"])
    if cfg.get("resume") and cfg.get("overwrite"):
        raise CliError("--resume continues the run in --out and --overwrite replaces it; "
                       "give one of them")
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} is a file; give a folder")
    _not_an_input(cfg, out)
    if out.is_dir() and any(out.iterdir()) and not (resume or cfg.get("overwrite")):
        raise CliError(f"output folder {out} exists and is not empty; pass --overwrite to "
                       "replace it (once the new one is complete)"
                       + (", --resume to continue it" if "resume" in cfg else "")
                       + " or choose another --out")
    parent = out.parent if not out.exists() else out
    parent_existing = next((p for p in [parent, *parent.parents] if p.exists()), None)
    if parent_existing is None or not parent_existing.is_dir() or \
            not os.access(parent_existing, os.W_OK):
        raise CliError(f"output folder {out} is not writable")
    return out


_INPUTS = ("checkpoint", "teacher_checkpoint", "pruned", "config", "data")


def _not_an_input(cfg: dict, out: Path) -> None:
    """Refuse an ``--out`` that is, or holds, a file or folder the run reads."""
    paths = [(k, cfg.get(k)) for k in _INPUTS] + [("checkpoints", p)
                                                  for p in cfg.get("checkpoints") or ()]
    target = out.resolve()
    for key, given in paths:
        if not given or not Path(given).exists():
            continue
        src = Path(given).resolve()
        if src == target or target in src.parents:
            raise CliError(f"--out {out} holds an input of this run (--{key.replace('_', '-')}"
                           f" {given}); choose another --out")


def _train_config(cfg: dict, epochs: int, lr: float):
    from .train import TrainConfig
    names = {f.name for f in fields(TrainConfig)}
    flags = {f.name for f in fields(TrainConfig) if f.type in (bool, "bool")}
    kw = {k: (_flag(cfg, k) if k in flags else v) for k, v in cfg.items() if k in names}
    kw.update(epochs=epochs, lr=lr)
    if not isinstance(cfg["cutout"], int) or cfg["cutout"] < 0:
        raise CliError(f"cutout must be a whole number of pixels >= 0, got {cfg['cutout']!r}")
    try:
        return TrainConfig(**kw)
    except (TypeError, ValueError) as exc:
        raise CliError(f"invalid training options: {exc}") from exc


def _batches(arrays, s, cfg):
    from .data import Batches
    tx, ty, vx, vy = arrays
    return (Batches(tx, ty, int(cfg["batch_size"]), s.norm, train=True, seed=cfg["seed"],
                    drop_last=True, cutout=int(cfg["cutout"])),
            Batches(vx, vy, 500, s.norm))


def _write_json(path: Path, obj: Any) -> None:
    from .outputs import write_json
    write_json(path, obj)


# -------------------------------------------------------------------- commands
def _teacher(cfg: dict, s) -> torch.nn.Module | None:
    """The distillation teacher of ``train`` (same input size and classes as the student)."""
    if not cfg.get("teacher"):
        if cfg["distill_alpha"]:
            raise CliError("distill_alpha > 0 needs --teacher and --teacher-checkpoint")
        return None
    if not cfg.get("teacher_checkpoint"):
        raise CliError("--teacher needs --teacher-checkpoint")
    if not cfg["distill_alpha"]:
        raise CliError("--teacher needs --set distill_alpha=A with 0 < A <= 1")
    teacher, ts = _model({"model": cfg["teacher"], "checkpoint": cfg["teacher_checkpoint"]})
    if ts.input_size != s.input_size or ts.num_classes != s.num_classes or ts.norm != s.norm:
        raise CliError(f"teacher {cfg['teacher']} does not take the student's inputs or "
                       "predict its classes")
    return teacher


# options a resumed run may differ in without changing what it computes
_RESUME_FREE = {"resume", "out", "data", "checkpoint", "epochs"}


def check_resume(saved_path: Path, cfg: dict) -> None:
    """A resumed run continues what was saved: a setting that differs from the saved
    config is refused, unless given on this command line (then a note says so)."""
    from .cli import RESOLVED_OVERRIDES
    if not saved_path.is_file():
        return
    try:
        saved = json.loads(saved_path.read_text())
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {saved_path} to resume: {exc}; start a new run in "
                       "another --out") from exc
    changed = sorted(k for k in cfg if k not in _RESUME_FREE and k in saved
                     and json.loads(json.dumps(cfg[k], default=str)) != saved[k])
    refused = [k for k in changed if k not in RESOLVED_OVERRIDES]
    if refused:
        diff = ", ".join(f"{k} {saved[k]!r} -> {cfg[k]!r}" for k in refused)
        raise CliError(f"--resume: the settings differ from the saved run ({saved_path}): "
                       f"{diff}; give them on the command line to override, or start a new "
                       "run in another --out")
    for k in changed:
        print(f"note: resuming with {k} = {cfg[k]!r} (the saved run had {saved[k]!r})",
              file=sys.stderr)


def _work(out: Path, kind: str, cfg: dict):
    """The hidden work folder beside ``--out`` that ``--resume`` continues (with the
    settings it was started with), as a :func:`prunekit.outputs.resumable` block. A new
    run (no ``--resume``) replaces an earlier run's leftover work, with a note."""
    from .outputs import resumable
    work = out.parent / f".{out.name}.{kind}-work"
    resume = bool(cfg.get("resume")) and work.is_dir()
    if resume:
        check_resume(work / "config.json", cfg)
    elif work.exists():
        print(f"note: starting over; removing the earlier run's work in {work} (--resume "
              "continues it instead)", file=sys.stderr)
        shutil.rmtree(work)
    return resume, _with_config(resumable(work, fresh=not resume), cfg, resume)


@contextlib.contextmanager
def _with_config(block, cfg: dict, resume: bool):
    """A new run records its settings at the start; a resumed one leaves the saved
    config as it is (the finished run's folder gets the settings it ended with)."""
    with block as work:
        if not resume:
            _write_json(work / "config.json", cfg)
        yield work


def cmd_train(cfg: dict) -> int:
    model, s = _model(cfg)
    teacher = _teacher(cfg, s)
    resume = bool(cfg.get("resume"))
    out = _out(cfg, resume=resume)
    if resume:
        check_resume(out / "config.json", cfg)
    tcfg = _train_config(cfg, int(cfg["epochs"]), float(cfg["lr"]))
    arrays = _data(cfg)
    from .outputs import resumable, save_torch, staged_folder
    from .train import fit
    train, test = _batches(arrays, s, cfg)
    # a fresh run trains in --out (resumable after a kill); --overwrite trains beside it
    # and replaces it only when complete
    replacing = bool(cfg.get("overwrite")) and out.is_dir() and any(out.iterdir())
    with (staged_folder(out, overwrite=True) if replacing else
          resumable(out, state="checkpoint.pt", fresh=not resume)) as folder:
        if not resume:      # a resumed run keeps the saved config until it completes
            _write_json(folder / "config.json", cfg)
        history = fit(model, train, test, tcfg, folder, resume=resume, teacher=teacher,
                      on_epoch=lambda r: print(json.dumps({
                          k: round(v, 4) if isinstance(v, float) else v
                          for k, v in r.items()}), flush=True))
        save_torch(model.state_dict(), folder / "model.pt")
        _write_json(folder / "metrics.json", history[-1] if history else {})
        if resume:          # the settings the completed run ended with
            _write_json(folder / "config.json", cfg)
        _plot_curves(history, folder / "training.png")
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
    loaded = [_model({"model": cfg.get("model"), "checkpoint": p}) for p in paths]
    models, s = [m for m, _ in loaded], loaded[0][1]
    out = _out(cfg)
    arrays = _data(cfg, required=bool(cfg.get("data")) or bn > 0)
    avg = copy.deepcopy(models[0])
    avg.load_state_dict(average_state_dicts([m.state_dict() for m in models]))
    train, test = _batches(arrays, s, cfg) if arrays else (None, None)
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
        _write_json(folder / "config.json", cfg)
        save_torch(avg.state_dict(), folder / "model.pt")
        _write_json(folder / "metrics.json", {"bn_batches": bn, "rows": rows})
    print(f"done: {out} (model.pt, metrics.json)")
    return 0


def cmd_eval(cfg: dict) -> int:
    model, s = _model_or_pruned(cfg)
    arrays = _data(cfg)
    from .train import evaluate
    _, test = _batches(arrays, s, cfg)
    print(json.dumps(evaluate(model, test)))
    return 0


def cmd_prune(cfg: dict) -> int:
    """Any registered method: its config from the options, its context from what its
    ``needs`` ask (calibration images, training batches, labelled images), its work
    folder beside --out (resumable) for methods that keep one; then :func:`_finish`."""
    from .methods.protocol import Context, get_method, prepare
    try:
        method = get_method(cfg["method"])
    except PrunekitError as exc:
        raise CliError(str(exc)) from None
    model, s = _model(cfg)
    config = _method_config(method, cfg)
    trains = "train" in method.needs
    if trains and cfg["finetune_epochs"]:
        raise CliError(f"finetune_epochs is not used by method {method.name} (it trains the "
                       "pruned model to the end of --epochs); remove it")
    out = _out(cfg)
    arrays = _data(cfg, required=bool(method.needs) or bool(cfg["finetune_epochs"])
                   or bool(cfg.get("data")))
    ctx = Context(_example(s), progress=True, executor=cfg["executor"],
                  workers=int(cfg["workers"]))
    if "calibration" in method.needs:
        ctx.calibration = _calibration(arrays, s, cfg)
    if trains:
        ctx.train, ctx.test = _batches(arrays, s, cfg)
        ctx.train_config = _train_config(cfg, int(cfg["epochs"]), float(cfg["lr"]))
    if "labelled" in method.needs:
        ctx.labelled = _labelled(arrays, s, cfg)
    prepare(method, config, ctx, model)
    if not getattr(method, "resumable", False):
        result = method.run(model, config, ctx)
        return _finish(cfg, out, model, result.model, result.plan, arrays, s)
    resume, block = _work(out, method.name, cfg)
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


def _labelled(arrays, s, cfg: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``pool`` training images (seeded draw) with their labels, normalised, no
    augmentation: what methods that score candidates by their error evaluate on."""
    from .data import Batches
    import numpy as np
    tx, ty = arrays[0], arrays[1]
    pool = np.random.default_rng(int(cfg["seed"])).permutation(len(tx))
    pool = pool[: min(len(tx), int(cfg["pool"]))]
    xs = torch.cat([b for b, _ in Batches(tx[pool], ty[pool], 500, s.norm)])
    return xs, torch.as_tensor(ty[pool])


def _flag(cfg: dict, key: str) -> bool:
    """A yes/no option: a boolean, or true/false, yes/no, on/off, 1/0 as text."""
    v = cfg[key]
    if isinstance(v, bool):
        return v
    text = str(v).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise CliError(f"{key} must be true or false, got {v!r}")


def _calibration(arrays, s, cfg: dict) -> torch.Tensor:
    """``calib`` unlabeled training images with one draw of train-time augmentation."""
    from .data import Batches, calibration_set
    n = int(cfg["calib"])
    if n < 1:
        raise CliError(f"--calib must be >= 1, got {n}")
    try:
        x, _ = calibration_set(arrays[0], None, n, int(cfg["seed"]))
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    import numpy as np
    batches = Batches(x, np.zeros(len(x), dtype=np.int64), 256, s.norm, train=True,
                      seed=int(cfg["seed"]))
    return torch.cat([b for b, _ in batches])


def _pruned_job(cfg: dict):
    """The base model, the saved pruned model, its plan, the output folder and the data."""
    base, s = _model(cfg)
    if not cfg.get("pruned"):
        raise CliError("--pruned is required")
    pruned, plan = _pruned(cfg, base, s)
    return base, s, pruned, plan, _out(cfg), _data(cfg)


def cmd_reweight(cfg: dict) -> int:
    base, s, pruned, plan, out, arrays = _pruned_job(cfg)
    from .graph import ChannelGraph
    from .methods import reweight
    graph = ChannelGraph.build(base, _example(s))
    fixed, report = reweight(base, pruned, plan, graph, _calibration(arrays, s, cfg),
                             progress=True)
    for r in report:
        print(f"{r['layer']:<28} relative output error {r['rel_err_before']:.4f} -> "
              f"{r['rel_err_after']:.4f}")
    return _finish(cfg, out, base, fixed, plan, arrays, s)


def _finish(cfg, out: Path, original, pruned, plan, arrays, s,
            extra: dict[str, Path] | None = None) -> int:
    """Optionally fine-tune, measure before/after, write the run folder atomically
    (``extra``: folders to move into it under the given names)."""
    from .io import save_pruned
    from .outputs import staged_folder, write_text
    from .reporting import before_after, plot_widths
    with staged_folder(out, overwrite=bool(cfg.get("overwrite"))) as tmp:
        if arrays is not None and cfg["finetune_epochs"]:
            from .train import fit
            train, test = _batches(arrays, s, cfg)
            tcfg = _train_config(cfg, int(cfg["finetune_epochs"]), float(cfg["finetune_lr"]))
            history = fit(pruned, train, test, tcfg, tmp / "finetune")
            _plot_curves(history, tmp / "training.png")
        pruned.eval()
        test = _batches(arrays, s, cfg)[1] if arrays is not None else None
        table, metrics = before_after(original, pruned, _example(s), test)
        save_pruned(tmp / "model", pruned, plan, (_example(s),))
        plan.save(tmp / "plan.json")
        _write_json(tmp / "metrics.json", metrics)
        _write_json(tmp / "config.json", cfg)
        plot_widths(original, pruned, tmp / "widths.png")
        write_text(tmp / "summary.txt", table + "\n")
    # the method's work folders (beside --out, same file system) move in by rename once
    # the output is complete; until then a failure leaves them where --resume finds them
    for name, folder in (extra or {}).items():
        os.replace(folder, out / name)
    print(table)
    print(f"outputs: {out}/ (model/, plan.json, metrics.json, summary.txt, widths.png)")
    return 0


def cmd_space(cfg: dict) -> int:
    """``prune --method space``: subnetworks inherit the weights of --checkpoint."""
    if not cfg.get("checkpoint"):
        raise CliError("--checkpoint is required (subnetworks inherit its weights)")
    return cmd_prune({**cfg, "method": "space"})


def cmd_finetune(cfg: dict) -> int:
    base, s, pruned, plan, out, arrays = _pruned_job(cfg)
    from .train import fit
    train, test = _batches(arrays, s, cfg)
    alpha = cfg["distill_alpha"] or (0.5 if cfg.get("distill") else 0.0)
    tcfg = _train_config({**cfg, "distill_alpha": alpha}, int(cfg["epochs"]),
                         float(cfg["finetune_lr"]))
    from .io import save_pruned
    from .outputs import staged_folder
    with staged_folder(out, overwrite=bool(cfg.get("overwrite"))) as folder:
        fit(pruned, train, test, tcfg, folder / "train", teacher=base if alpha else None)
        save_pruned(folder / "model", pruned.eval(), plan, (_example(s),))
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
    model, s = _model_or_pruned(cfg)
    from .io import export_onnx
    err = export_onnx(model, (_example(s),), cfg["out"])
    print(f"wrote {cfg['out']} (onnxruntime vs PyTorch max abs difference {err:.2e})")
    return 0


def cmd_info(cfg: dict) -> int:
    from .models import REGISTRY
    if cfg.get("list"):
        print("\n".join(sorted(REGISTRY)) + "\n(and tv:<any torchvision classifier>)")
        return 0
    model, s = _model_or_pruned(cfg)
    from .graph import ChannelGraph
    from .reporting import layer_table
    graph = ChannelGraph.build(model, _example(s))
    print(layer_table(model, _example(s)))
    print()
    print(graph.explain(show_frozen=bool(cfg.get("all"))))
    return 0


def _plot_curves(history: list[dict], path: Path) -> None:
    from .reporting import plot_curves
    plot_curves(history, path)
