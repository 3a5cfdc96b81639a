"""Training: resume after a kill ends where an uninterrupted run ends; DDP with 2 processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fixtures import images
from prunekit.data import CIFAR_NORM, Batches
from prunekit.models import create
from prunekit.train import TrainConfig, evaluate, fit, lr_at


def _run(out, resume=False, stop_after=None):
    torch.manual_seed(123)
    model = create("resnet20", widths=(4, 8, 8))
    x, y = images(96, 0)
    cfg = TrainConfig(epochs=3, lr=0.05, channels_last=False, max_steps_per_epoch=3, seed=5)

    def kill(row):
        if stop_after is not None and row["epoch"] == stop_after:
            raise KeyboardInterrupt
    try:
        fit(model, Batches(x, y, 16, CIFAR_NORM, train=True, seed=5),
            Batches(x, y, 48, CIFAR_NORM), cfg, out, resume=resume, progress=False,
            on_epoch=kill)
    except KeyboardInterrupt:
        return None
    return model


def test_resume_after_kill_matches_uninterrupted(tmp_path):
    full = _run(tmp_path / "a")
    assert _run(tmp_path / "b", stop_after=1) is None
    resumed = _run(tmp_path / "b", resume=True)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    log_a = (tmp_path / "a" / "log.jsonl").read_text().splitlines()
    log_b = (tmp_path / "b" / "log.jsonl").read_text().splitlines()
    assert len(log_a) == len(log_b) == 3


def test_training_learns_and_evaluates(tmp_path):
    x, y = images(200, 0)
    model = create("resnet20", widths=(8, 8, 8))
    cfg = TrainConfig(epochs=4, lr=0.05, channels_last=True)
    hist = fit(model, Batches(x, y, 32, CIFAR_NORM, train=True), Batches(x, y, 100, CIFAR_NORM),
               cfg, tmp_path, progress=False)
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    res = evaluate(model, Batches(x, y, 100, CIFAR_NORM))
    assert 0 <= res["top1"] <= res["top5"] <= 100
    assert (tmp_path / "checkpoint.pt").is_file()
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 3


def test_distillation_needs_teacher(tmp_path):
    x, y = images(32, 0)
    with pytest.raises(ValueError, match="teacher"):
        fit(create("resnet20"), Batches(x, y, 16, CIFAR_NORM, train=True), None,
            TrainConfig(epochs=1, distill_alpha=0.5), tmp_path, progress=False)
    teacher = create("resnet20", widths=(4, 8, 8)).eval()
    hist = fit(create("resnet20", widths=(4, 8, 8)), Batches(x, y, 16, CIFAR_NORM, train=True),
               None, TrainConfig(epochs=1, distill_alpha=0.5, channels_last=False), tmp_path,
               teacher=teacher, progress=False)
    assert hist[0]["train_loss"] > 0


def test_bf16_autocast_trains_fp32_weights(tmp_path):
    """precision="bf16" runs the training forward (student and teacher) in bfloat16,
    evaluates in float32, and keeps the weights and the saved checkpoint in float32."""
    x, y = images(128, 0)
    torch.manual_seed(0)
    model = create("resnet20", widths=(8, 8, 8))
    teacher = create("resnet20", widths=(4, 8, 8)).eval()
    seen: dict[str, set] = {"student": set(), "teacher": set()}
    model.conv1.register_forward_hook(lambda m, i, o: seen["student"].add(o.dtype))
    teacher.conv1.register_forward_hook(lambda m, i, o: seen["teacher"].add(o.dtype))
    cfg = TrainConfig(epochs=3, lr=0.05, precision="bf16", distill_alpha=0.3)
    hist = fit(model, Batches(x, y, 32, CIFAR_NORM, train=True), Batches(x, y, 64, CIFAR_NORM),
               cfg, tmp_path, teacher=teacher, progress=False)
    assert seen["student"] == {torch.bfloat16, torch.float32}   # trains in bf16, evaluates in fp32
    assert seen["teacher"] == {torch.bfloat16}
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert all(v.dtype in (torch.float32, torch.int64) for v in state["model"].values())
    assert state["config"]["precision"] == "bf16"
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp16")


def test_schedules():
    cfg = TrainConfig(epochs=10, lr=0.1, warmup_epochs=1)
    assert lr_at(cfg, 0, 100) == 0 and abs(lr_at(cfg, 10, 100) - 0.1) < 1e-9
    assert lr_at(cfg, 100, 100) < 1e-9
    one = TrainConfig(epochs=10, lr=0.1, schedule="onecycle")
    assert lr_at(one, 30, 100) == pytest.approx(0.1) and lr_at(one, 0, 100) < 0.01


def test_ddp_two_processes(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_port=29531", str(Path(__file__).parent / "ddp_worker.py"), str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    text = "".join((tmp_path / f"rank{r}.txt").read_text() for r in (0, 1))
    sums = re.findall(r"rank (\d) epochs 2 weightsum (\S+)", text)
    assert sorted(r for r, _ in sums) == ["0", "1"]
    assert sums[0][1] == sums[1][1], "DDP keeps replicas identical"
    assert (tmp_path / "checkpoint.pt").is_file()
