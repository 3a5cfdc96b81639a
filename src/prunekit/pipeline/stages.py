"""The stages of a compress run, each a function of what the previous one produced:
select channels, re-estimate BatchNorm statistics, recover by distillation (keeping the
checkpoint that scores best on the held-out split)."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import TargetError
from .config import CompressConfig
from .schedule import Schedule

__all__ = ["CompressData", "method_for", "select", "recalibrate", "recover"]


@dataclass
class CompressData:
    """What a compress run reads. ``train``: labelled training batches (with their
    augmentation; re-iterable, ``set_epoch`` for a new order per epoch), the held-out
    images excluded; ``heldout``: labelled batches, no augmentation, that pick the best
    checkpoint; ``test``: labelled batches only reported on; ``calibration``: unlabeled
    inputs for the selection (a tensor)."""

    train: Any = None
    heldout: Any = None
    test: Any = None
    calibration: torch.Tensor | None = None


def method_for(config: CompressConfig, data: CompressData | None) -> str:
    """The selection method: ``config.method``, with ``auto`` resolved by the data (submodular
    selection with reweighting on calibration images; one-shot L1 without)."""
    has_calib = data is not None and data.calibration is not None
    if config.method == "auto":
        return "submodular" if has_calib else "oneshot"
    if config.method == "submodular" and not has_calib:
        raise TargetError("method submodular needs unlabeled calibration images (give "
                          "training data, or method oneshot)")
    return config.method


def select(model: nn.Module, example: Any, config: CompressConfig, data: CompressData | None,
           latency: Any = None, progress: bool = True) -> tuple[Any, dict]:
    """The selected channels: the method's Result, and a record of what ran. Under a latency
    budget a method cheap enough to re-run meets the target as measured
    (:func:`prunekit.latency.meet_measured`)."""
    from ..methods.protocol import Context, get_method, needs_of, prepare
    name = method_for(config, data)
    method = get_method(name)
    fields = {"target": config.target, "metric": config.metric, "round_to": config.round_to,
              "seed": config.seed}
    if config.allocation is not None:
        fields["allocation"] = config.allocation
    elif name == "submodular" and data.heldout is not None:
        fields["allocation"] = "accuracy"       # the measured default (benchmarks/compress.md)
    elif name == "oneshot" and config.metric == "latency":
        fields["allocation"] = "marginal"       # importance per second saved
    mcfg = method.config.from_dict(fields)
    ctx = Context(example, calibration=None if data is None else data.calibration,
                  latency=latency, progress=progress)
    if "labelled" in needs_of(method, mcfg):     # scored on the held-out split, never the test set
        if data is None or data.heldout is None:
            raise TargetError(f"allocation {config.allocation} needs the held-out split")
        ctx.labelled = labelled(data.heldout)
    prepare(method, mcfg, ctx, model)
    record: dict[str, Any] = {"method": name, "config": mcfg.to_dict()}
    if latency is not None and getattr(method, "rerun", False):
        from ..latency import meet_measured
        result, rounds = meet_measured(latency, model, lambda c: method.run(model, c, ctx), mcfg)
        record["rounds"] = rounds
    else:
        result = method.run(model, mcfg, ctx)
    return result, record


def labelled(batches: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """All of ``batches`` as one (inputs, labels) pair."""
    xs, ys = zip(*batches)
    return torch.cat(xs), torch.cat(ys)


def recalibrate(model: nn.Module, train: Any, batches: int) -> int:
    """BatchNorm statistics of ``model`` re-estimated over ``batches`` training batches (the
    pruned network's own, not the unpruned one's); returns the norms reset."""
    from ..train import recalibrate_bn
    if batches == 0 or not any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                               for m in model.modules()):
        return 0
    if hasattr(train, "set_epoch"):
        train.set_epoch(0)
    return recalibrate_bn(model, train, batches)


def precision(config: CompressConfig) -> str:
    """The recovery's precision: ``auto`` resolved on this machine (bf16 where the CPU
    runs it natively, else fp32)."""
    if config.precision != "auto":
        return config.precision
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    return "bf16" if native else "fp32"


def train_config(config: CompressConfig, schedule: Schedule) -> Any:
    from ..train import TrainConfig
    return TrainConfig(epochs=schedule.epochs, lr=config.lr, weight_decay=config.weight_decay,
                       distill_alpha=config.distill_alpha,
                       distill_temperature=config.distill_temperature, seed=config.seed,
                       max_steps_per_epoch=schedule.steps, precision=precision(config))


def recover(student: nn.Module, teacher: nn.Module, data: CompressData, config: CompressConfig,
            schedule: Schedule, folder: Path, resume: bool, progress: bool = True,
            on_round: Callable[[dict], None] | None = None) -> list[dict]:
    """Distil ``teacher`` into ``student`` (in place) on ``schedule``, evaluating on the
    held-out split after each round; ``folder/best.pt`` holds the weights of the round
    with the highest held-out top-1 and ``folder/best.json`` which round that was. A
    resumed run continues from ``folder/checkpoint.pt``. Returns the rounds' log."""
    from ..outputs import save_torch, write_json
    from ..train import fit
    best_json = folder / "best.json"
    if resume:
        _mend_best(folder)
    if not best_json.is_file():         # round 0: the model as it enters the recovery
        from ..outputs import make_dirs
        from ..train import evaluate
        make_dirs(folder)
        start = evaluate(student, data.heldout)["top1"] if data.heldout is not None else None
        save_torch(student.state_dict(), folder / "best.pt")
        write_json(best_json, {"epoch": 0, "heldout_top1": start})

    def keep_best(row: dict) -> None:
        score = row.get("test_top1")
        best = json.loads(best_json.read_text()) if best_json.is_file() else None
        if best is None or best["heldout_top1"] is None or \
                (score is not None and score > best["heldout_top1"]):
            save_torch(student.state_dict(), folder / "best.pt")
            write_json(best_json, {"epoch": row["epoch"], "heldout_top1": score})
        if on_round is not None:
            on_round(row)
    return fit(student, data.train, data.heldout, train_config(config, schedule), folder,
               teacher=teacher, resume=resume, progress=progress, on_epoch=keep_best)


def _mend_best(folder: Path) -> None:
    """A run killed after a round's checkpoint but before its best weights were written:
    that round's weights are the checkpoint's, kept as the best if they score higher."""
    from ..inputs import torch_load
    from ..outputs import save_torch, write_json
    ckpt, best_json = folder / "checkpoint.pt", folder / "best.json"
    if not ckpt.is_file():
        return
    state = torch_load(ckpt)
    last = state["history"][-1] if state.get("history") else None
    best = json.loads(best_json.read_text()) if best_json.is_file() else None
    if last is not None and (best is None or last["epoch"] > best["epoch"] and (
            best["heldout_top1"] is None or (last.get("test_top1") or -1) > best["heldout_top1"])):
        save_torch(state["model"], folder / "best.pt")
        write_json(best_json, {"epoch": last["epoch"], "heldout_top1": last.get("test_top1")})


def load_best(student: nn.Module, folder: Path) -> dict | None:
    """``student`` given the best round's weights; that round's record (None: no round)."""
    from ..inputs import torch_load
    if not (folder / "best.pt").is_file():
        return None
    student.load_state_dict(torch_load(folder / "best.pt"))
    return json.loads((folder / "best.json").read_text())


def copy_of(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).eval()
