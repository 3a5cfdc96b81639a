"""Train, evaluate, fine-tune and distill, with atomic per-epoch checkpoints and resume.

Resumability: the data order and augmentation of epoch e depend only on (seed, e),
the learning rate only on the global step, and the checkpoint holds the model,
optimizer and torch RNG state; so a run killed at any moment and resumed ends
exactly where an uninterrupted run ends (losing at most the current epoch).

Distributed: under ``torchrun`` (WORLD_SIZE > 1) the model is wrapped in
DistributedDataParallel (gloo on CPU), each process takes its slice of every
epoch's permutation, and rank 0 evaluates, logs and checkpoints.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..data.pipeline import Batches
from ..outputs import save_torch, write_text


PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"          # "cosine" or "onecycle"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    distill_alpha: float = 0.0        # weight of the KD loss (needs a teacher)
    distill_temperature: float = 4.0
    channels_last: bool = True        # the team measured 1.3x faster ResNet training on CPU
    seed: int = 0
    max_steps_per_epoch: int = 0      # 0 = whole epoch (small values for smoke tests)
    precision: str = "fp32"           # "bf16": autocast forward (losses, weights, step stay fp32)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.lr <= 0 or not 0 <= self.distill_alpha <= 1:
            raise ValueError("epochs >= 1, lr > 0 and 0 <= distill_alpha <= 1 are required")
        if not 0 <= self.label_smoothing < 1 or not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError("0 <= label_smoothing < 1 and 0 <= warmup_epochs < epochs are "
                             f"required, got {self.label_smoothing} and {self.warmup_epochs}")
        if self.schedule not in ("cosine", "onecycle"):
            raise ValueError(f"schedule must be 'cosine' or 'onecycle', got {self.schedule!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, "
                             f"got {self.precision!r}")


def lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    frac = step / max(total, 1)
    warm = cfg.warmup_epochs / cfg.epochs
    if cfg.schedule == "onecycle":
        peak = 0.3 if warm == 0 else warm
        if frac < peak:
            return cfg.lr * (0.04 + 0.96 * frac / peak)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * (frac - peak) / (1 - peak)))
    if frac < warm:
        return cfg.lr * frac / warm
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (frac - warm) / max(1e-12, 1 - warm)))


def evaluate(model: nn.Module, data: Batches, channels_last: bool = False) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean loss."""
    was = model.training
    model.eval()
    n = correct1 = correct5 = 0
    loss = 0.0
    with torch.inference_mode():
        for x, y in data:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out = logits_of(model(x))
            loss += F.cross_entropy(out, y, reduction="sum").item()
            top = out.topk(min(5, out.shape[1]), dim=1).indices
            correct1 += (top[:, 0] == y).sum().item()
            correct5 += (top == y[:, None]).any(1).sum().item()
            n += len(y)
    model.train(was)
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "loss": loss / n}


def _dist() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    if world > 1:
        return torch.distributed.get_rank(), world
    return 0, 1


def _restore(ckpt: Path, model: nn.Module, opt: torch.optim.Optimizer) -> tuple[list, int]:
    """Load a training checkpoint to resume from; the epoch log and the next epoch. A
    corrupt file, or one another model or run saved, is a CheckpointError naming it."""
    from ..errors import CheckpointError
    from ..inputs import torch_load
    state = torch_load(ckpt)
    again = "delete it to start over, or give another --out"
    if not isinstance(state, dict) or not {"model", "optimizer", "rng", "history",
                                           "epoch"} <= set(state):
        raise CheckpointError(f"{ckpt} is not a prunekit training checkpoint; {again}")
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{ckpt} was saved by another model than the one being trained "
                              f"({str(exc).splitlines()[0][:160]}); {again}") from None
    try:
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{ckpt} holds an optimizer or random state this run cannot "
                              f"use ({exc}); {again}") from None
    return list(state["history"]), int(state["epoch"]) + 1


class Callback:
    """Hooks a method can put into the training loop (LAPP's penalty and threshold step)."""

    def penalty(self, progress: float) -> torch.Tensor | None:
        """Added to the loss; ``progress`` = global step / total steps, in [0, 1)."""
        return None

    def after_step(self) -> None:
        """Called after every optimizer step."""

    def log(self) -> dict[str, Any]:
        """Extra entries for the epoch's log row."""
        return {}


def logits_of(out: Any) -> torch.Tensor:
    """A classifier's logits: its output when that is one tensor, else the ``logits`` of
    an output record (Hugging Face's ``ModelOutput``, a dict). Anything else is refused:
    training here is classification by cross-entropy."""
    if isinstance(out, torch.Tensor):
        return out
    logits = out.get("logits") if isinstance(out, dict) else getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise TypeError(f"training needs a classifier's logits, but the model returns "
                    f"{type(out).__name__}; train it with your own loop")


class _Listed:
    """A re-iterable sequence of (inputs, labels) batches (a list, a DataLoader) in the
    shape ``fit`` reads :class:`~prunekit.data.Batches`: same batches every epoch, no
    sharding across processes."""

    def __init__(self, data: Any) -> None:
        self.data, self.shard = data, (0, 1)
        self.batch_size = getattr(data, "batch_size", None)

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self):
        return iter(self.data)


def _as_batches(data: Any) -> Any:
    return data if hasattr(data, "set_epoch") else _Listed(data)


def fit(model: nn.Module, train: Batches, test: Batches | None, cfg: TrainConfig,
        out_dir: str | os.PathLike[str], teacher: nn.Module | None = None,
        resume: bool = False, progress: bool = True,
        on_epoch: Callable[[dict], None] | None = None,
        callback: Callback | None = None, epochs: tuple[int, int] | None = None) -> list[dict]:
    """Train ``model`` in place; returns the per-epoch log (also in ``out_dir/log.jsonl``).

    ``epochs=(first, stop)`` runs only those epochs of the ``cfg.epochs``-long schedule
    (the learning rate continues where a previous phase stopped)."""
    out = Path(out_dir)
    rank, world = _dist()
    torch.manual_seed(cfg.seed)
    if cfg.distill_alpha > 0 and teacher is None:
        raise ValueError("distill_alpha > 0 needs a teacher model")
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    history: list[dict] = []
    start, stop = epochs or (0, cfg.epochs)
    ckpt = out / "checkpoint.pt"
    if resume and ckpt.is_file():
        history, start = _restore(ckpt, model, opt)
    if teacher is not None:
        teacher.eval()
    train = _as_batches(train)
    train.shard = (rank, world)
    steps = len(train) if not cfg.max_steps_per_epoch else min(len(train), cfg.max_steps_per_epoch)
    if steps == 0:
        raise ValueError("no training step per epoch: the training data makes no full batch "
                         f"of batch_size {getattr(train, 'batch_size', '?')}; lower batch_size "
                         "or give more images")
    total = steps * cfg.epochs
    for epoch in range(start, stop):
        train.set_epoch(epoch)
        row = _epoch(net, opt, train, cfg, epoch, steps, total, teacher, progress and rank == 0,
                     callback)
        if test is not None and rank == 0:
            row.update({f"test_{k}": v for k, v in evaluate(model, test, cfg.channels_last).items()})
        history.append(row)
        if rank == 0:
            # atomic (a full disk is one OutputError; the previous checkpoint stays intact)
            write_text(out / "log.jsonl", "".join(json.dumps(r) + "\n" for r in history))
            save_torch({"model": model.state_dict(), "optimizer": opt.state_dict(),
                         "rng": torch.get_rng_state(), "history": history, "epoch": epoch,
                         "config": asdict(cfg)}, ckpt)
            if on_epoch:
                on_epoch(row)
    if world > 1:
        torch.distributed.barrier()
    if cfg.channels_last:
        model.to(memory_format=torch.contiguous_format)
    return history


def _epoch(net: nn.Module, opt: torch.optim.Optimizer, data: Batches, cfg: TrainConfig,
           epoch: int, steps: int, total: int, teacher: nn.Module | None,
           progress: bool, callback: Callback | None = None) -> dict:
    net.train()
    bar = _bar(steps, f"epoch {epoch + 1}/{cfg.epochs}", progress)
    seen = correct = 0
    loss_sum = 0.0
    t0 = time.perf_counter()
    for i, (x, y) in enumerate(data):
        if i >= steps:
            break
        lr = lr_at(cfg, epoch * steps + i, total)
        for g in opt.param_groups:
            g["lr"] = lr
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16,
                            enabled=cfg.precision == "bf16"):
            out = logits_of(net(x))
            t_out = None
            if teacher is not None and cfg.distill_alpha > 0:
                with torch.no_grad():
                    t_out = logits_of(teacher(x))
        out = out.float()   # the losses in fp32 whatever the forward ran in
        loss = F.cross_entropy(out, y, label_smoothing=cfg.label_smoothing)
        if t_out is not None:
            T = cfg.distill_temperature
            kd = F.kl_div(F.log_softmax(out / T, 1), F.softmax(t_out.float() / T, 1),
                          reduction="batchmean") * T * T
            loss = (1 - cfg.distill_alpha) * loss + cfg.distill_alpha * kd
        if callback is not None:
            extra = callback.penalty((epoch * steps + i) / total)
            if extra is not None:
                loss = loss + extra
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if callback is not None:
            callback.after_step()
        seen += len(y)
        correct += (out.argmax(1) == y).sum().item()
        loss_sum += loss.item() * len(y)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}",
                            img_s=f"{seen / (time.perf_counter() - t0):.0f}")
    if bar is not None:
        bar.close()
    secs = time.perf_counter() - t0
    row = {"epoch": epoch + 1, "lr": lr, "train_loss": loss_sum / max(seen, 1),
           "train_top1": 100.0 * correct / max(seen, 1), "images_per_s": seen / secs,
           "seconds": secs}
    if callback is not None:
        row.update(callback.log())
    return row


def _bar(total: int, desc: str, enabled: bool):
    from ..progress import bar, enabled as on_terminal
    if not enabled or not on_terminal():
        return None
    return bar(total=total, desc=desc, leave=False, dynamic_ncols=True)
