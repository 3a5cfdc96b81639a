"""Weight averaging (model soup): the mean of the state_dicts, BN re-estimation, and the
``prunekit average`` command with its bad input."""

from __future__ import annotations

import json

import pytest
import torch

from fixtures import canonical, images
from prunekit.cli import main
from prunekit.data import CIFAR_NORM, Batches
from prunekit.models import create
from prunekit.train import average_state_dicts, recalibrate_bn


def _copies(n: int) -> list[torch.nn.Module]:
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        model = create("resnet20", widths=(4, 8, 8))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.num_batches_tracked.fill_(10 + seed)
        out.append(model)
    return out


def test_average_is_the_elementwise_mean():
    states = [m.state_dict() for m in _copies(3)]
    avg = average_state_dicts(states)
    assert avg.keys() == states[0].keys()
    for k, v in avg.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, (states[0][k] + states[1][k] + states[2][k]) / 3)
        else:
            assert torch.equal(v, states[0][k]) and v.dtype == states[0][k].dtype
    assert not torch.equal(avg["conv1.weight"], states[0]["conv1.weight"])


def test_average_refuses_mismatched_states():
    a, b = (m.state_dict() for m in _copies(2))
    with pytest.raises(ValueError, match="at least two"):
        average_state_dicts([a])
    with pytest.raises(ValueError, match="other keys"):
        average_state_dicts([a, {k: v for k, v in b.items() if k != "conv1.weight"}])
    with pytest.raises(ValueError, match="conv1.weight"):
        average_state_dicts([a, {**b, "conv1.weight": torch.zeros(5, 3, 3, 3)}])


def test_recalibrate_bn_is_the_mean_over_the_batches():
    model = _copies(1)[0]
    x, y = images(64, 0)
    batches = list(Batches(x, y, 16, CIFAR_NORM))
    assert recalibrate_bn(model, batches, steps=3) == sum(
        isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert not model.training
    estimated = model.bn1.running_mean.clone()
    # the first BN's running mean is the mean of its per-batch means over exactly 3 batches
    seen = []
    handle = model.bn1.register_forward_hook(lambda m, i, o: seen.append(i[0].mean((0, 2, 3))))
    with torch.no_grad():
        model.train()
        for xb, _ in batches[:3]:
            model(xb)
    handle.remove()
    torch.testing.assert_close(estimated, torch.stack(seen).mean(0),
                               rtol=1e-4, atol=1e-5)
    assert model.bn1.momentum == 0.1     # restored


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_cli_average_end_to_end_and_bad_input(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    canonical(data, n_train=40, n_test=20)
    paths = []
    for i, seed in enumerate((0, 1)):
        torch.manual_seed(seed)
        paths.append(tmp_path / f"c{i}.pt")
        torch.save(create("resnet20").state_dict(), paths[-1])
    out = tmp_path / "soup"
    assert main(["average", "--model", "resnet20", "--checkpoints", *map(str, paths),
                 "--data", str(data), "--set", "bn_batches=1", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["checkpoint"] for r in metrics["rows"]] == [*map(str, paths), "average"]
    assert all(0 <= r["top1"] <= 100 for r in metrics["rows"]) and metrics["bn_batches"] == 1
    state = torch.load(out / "model.pt", weights_only=True)
    a, b = (torch.load(p, weights_only=True) for p in paths)
    torch.testing.assert_close(state["conv1.weight"], (a["conv1.weight"] + b["conv1.weight"]) / 2)
    assert "average" in capsys.readouterr().out
    torch.save(create("resnet32").state_dict(), tmp_path / "r32.pt")
    bad = tmp_path / "bad"
    for extra, needle in (([str(paths[0])], "at least two"),
                          ([str(paths[0]), str(tmp_path / "r32.pt")], "does not fit"),
                          ([str(paths[0]), str(tmp_path / "missing.pt")], "does not exist"),
                          ([*map(str, paths), "--set", "bn_batches=-1"], "bn_batches"),
                          ([*map(str, paths), "--data", str(tmp_path / "nodata")], "CIFAR-10"),
                          ([*map(str, paths), "--checkpoint", str(paths[0])], "not --checkpoint")):
        assert main(["average", "--model", "resnet20", "--checkpoints", *extra,
                     "--out", str(bad)]) == 2
        assert needle in _err(capsys)
        assert not bad.exists()
