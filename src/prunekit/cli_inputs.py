"""What the ``prunekit`` subcommands read and check before any work: the model, the
saved pruned model, the data, the output folder, training options, resumable work
folders; and the small outputs they share."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from .errors import CliError


def model_of(cfg: dict) -> tuple[torch.nn.Module, Any]:
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


def example_of(s) -> torch.Tensor:
    return torch.zeros(1, *s.input_size)


def pruned_of(cfg: dict, base: torch.nn.Module, s) -> tuple[torch.nn.Module, Any]:
    from .io import load_pruned
    folder = Path(cfg["pruned"])
    if not (folder / "plan.json").is_file():
        raise CliError(f"{folder} is not a saved pruned model (no plan.json)")
    return load_pruned(folder, base, (example_of(s),))


def model_or_pruned(cfg: dict) -> tuple[torch.nn.Module, Any]:
    """The model of --model/--checkpoint, or the saved pruned model of --pruned."""
    model, s = model_of(cfg)
    if cfg.get("pruned"):
        model, _ = pruned_of(cfg, model, s)
    return model, s


def data_of(cfg: dict, required: bool = True):
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


def out_folder(cfg: dict, resume: bool = False) -> Path:
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
    not_an_input(cfg, out)
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


def not_an_input(cfg: dict, out: Path) -> None:
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


def train_config_of(cfg: dict, epochs: int, lr: float):
    from .train import TrainConfig
    names = {f.name for f in fields(TrainConfig)}
    flags = {f.name for f in fields(TrainConfig) if f.type in (bool, "bool")}
    kw = {k: (flag(cfg, k) if k in flags else v) for k, v in cfg.items() if k in names}
    kw.update(epochs=epochs, lr=lr)
    if not isinstance(cfg["cutout"], int) or cfg["cutout"] < 0:
        raise CliError(f"cutout must be a whole number of pixels >= 0, got {cfg['cutout']!r}")
    try:
        return TrainConfig(**kw)
    except (TypeError, ValueError) as exc:
        raise CliError(f"invalid training options: {exc}") from exc


def batches_of(arrays, s, cfg):
    from .data import Batches
    tx, ty, vx, vy = arrays
    return (Batches(tx, ty, int(cfg["batch_size"]), s.norm, train=True, seed=cfg["seed"],
                    drop_last=True, cutout=int(cfg["cutout"])),
            Batches(vx, vy, 500, s.norm))


def write_json(path: Path, obj: Any) -> None:
    from .outputs import write_json
    write_json(path, obj)


def teacher_of(cfg: dict, s) -> torch.nn.Module | None:
    """The distillation teacher of ``train`` (same input size and classes as the student)."""
    if not cfg.get("teacher"):
        if cfg["distill_alpha"]:
            raise CliError("distill_alpha > 0 needs --teacher and --teacher-checkpoint")
        return None
    if not cfg.get("teacher_checkpoint"):
        raise CliError("--teacher needs --teacher-checkpoint")
    if not cfg["distill_alpha"]:
        raise CliError("--teacher needs --set distill_alpha=A with 0 < A <= 1")
    teacher, ts = model_of({"model": cfg["teacher"], "checkpoint": cfg["teacher_checkpoint"]})
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


def work_folder(out: Path, kind: str, cfg: dict):
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
    return resume, with_config(resumable(work, fresh=not resume), cfg, resume)


@contextlib.contextmanager
def with_config(block, cfg: dict, resume: bool):
    """A new run records its settings at the start; a resumed one leaves the saved
    config as it is (the finished run's folder gets the settings it ended with)."""
    with block as work:
        if not resume:
            write_json(work / "config.json", cfg)
        yield work


def labelled_of(arrays, s, cfg: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``pool`` training images (seeded draw) with their labels, normalised, no
    augmentation: what methods that score candidates by their error evaluate on."""
    from .data import Batches
    import numpy as np
    tx, ty = arrays[0], arrays[1]
    pool = np.random.default_rng(int(cfg["seed"])).permutation(len(tx))
    pool = pool[: min(len(tx), int(cfg["pool"]))]
    xs = torch.cat([b for b, _ in Batches(tx[pool], ty[pool], 500, s.norm)])
    return xs, torch.as_tensor(ty[pool])


def flag(cfg: dict, key: str) -> bool:
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


def calibration_of(arrays, s, cfg: dict) -> torch.Tensor:
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


def pruned_job(cfg: dict):
    """The base model, the saved pruned model, its plan, the output folder and the data."""
    base, s = model_of(cfg)
    if not cfg.get("pruned"):
        raise CliError("--pruned is required")
    pruned, plan = pruned_of(cfg, base, s)
    return base, s, pruned, plan, out_folder(cfg), data_of(cfg)


def plot_training(history: list[dict], path: Path) -> None:
    from .reporting import plot_curves
    plot_curves(history, path)
