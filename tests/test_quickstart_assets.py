"""The quick start's embedded data and checkpoint ship with the repository and work."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from prunekit.cli import main
from prunekit.data import load_cifar10
from prunekit.models import create, load_checkpoint

ROOT = Path(__file__).parents[1]


def test_embedded_subset_and_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    tx, ty, vx, vy = load_cifar10(ROOT / "assets" / "cifar10-mini")
    assert tx.shape == (3000, 32, 32, 3) and vx.shape == (1000, 32, 32, 3)
    assert np.bincount(ty).tolist() == [300] * 10 and np.bincount(vy).tolist() == [100] * 10
    model = create("resnet20")
    load_checkpoint(model, ROOT / "checkpoints" / "resnet20-jpeg" / "model.pt")
    out = tmp_path / "qs"
    assert main(["prune", "--model", "resnet20", "--checkpoint",
                 str(ROOT / "checkpoints" / "resnet20-jpeg" / "model.pt"), "--data",
                 str(ROOT / "assets" / "cifar10-mini"), "--target", "0.5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "top-1" in printed and (out / "model" / "plan.json").is_file()
    before = float(printed.split("top-1 (%)")[1].split()[0])
    assert before > 80.0, "the shipped checkpoint is a trained CIFAR-10 model"


def test_the_quick_start_command_runs_the_default_pipeline(tmp_path, monkeypatch, capsys):
    """quickstart.sh's compress command, with one recovery epoch instead of its minutes:
    submodular selection with reweighting keeps most of the accuracy before any training."""
    script = (ROOT / "quickstart.sh").read_text()
    assert "prunekit compress --model resnet20" in script and "--budget-minutes" in script
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "qs"
    assert main(["compress", "--model", "resnet20", "--checkpoint",
                 str(ROOT / "checkpoints" / "resnet20-jpeg" / "model.pt"), "--data",
                 str(ROOT / "assets" / "cifar10-mini"), "--target", "0.5", "--epochs", "1",
                 "--batch", "8", "--out", str(out)]) == 0
    import json
    m = json.loads((out / "metrics.json").read_text())
    assert m["stages"]["select"]["method"] == "submodular"
    assert m["stages"]["select"]["heldout_top1"] > 70.0     # one-shot L1 keeps ~16% here
    assert m["after"]["macs"] <= 0.5 * 1.02 * m["before"]["macs"]
    assert "top-1 (test)" in capsys.readouterr().out
