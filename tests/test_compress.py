"""prunekit compress / prunekit.pipeline.compress: the whole road from a trained model to a
smaller one that keeps its accuracy, on tiny settings. Every stage runs, the run folder
holds what the report names, a killed run resumed ends where an uninterrupted one does,
the held-out split never meets the test set, bad input is refused before any work."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures import canonical, images
from prunekit.cli import main
from prunekit.data import CIFAR_NORM, Batches, holdout_split
from prunekit.errors import TargetError
from prunekit.models import CifarResNet
from prunekit.pipeline import CompressConfig, CompressData, compress, plan_schedule

X = torch.randn(1, 3, 32, 32)


# ------------------------------------------------------------------ pieces
def test_the_held_out_split_is_disjoint_stratified_and_seeded():
    y = np.repeat(np.arange(10), [30, 30, 30, 30, 30, 20, 20, 20, 20, 20])
    kept, held = holdout_split(y, 50, seed=3)
    assert len(held) == 50 and len(np.intersect1d(kept, held)) == 0
    assert sorted(np.concatenate([kept, held])) == list(range(len(y)))
    counts = np.bincount(y[held], minlength=10)
    assert counts[:5].tolist() == [6] * 5 and counts[5:].tolist() == [4] * 5   # 50/250 each
    assert np.array_equal(held, holdout_split(y, 50, seed=3)[1])
    assert not np.array_equal(held, holdout_split(y, 50, seed=4)[1])
    with pytest.raises(ValueError, match="held-out"):
        holdout_split(y, len(y), 0)


def test_a_time_budget_is_spent_on_steps_and_evaluations_that_fit_it():
    s = plan_schedule(passes=100, evals=10, budget_s=300.0, step_s=0.5, eval_s=3.0)
    assert s.epochs * 3.0 + s.total_steps * 0.5 <= 300.0 * 1.02
    assert s.total_steps >= 0.9 * (300.0 - 30.0) / 0.5 and s.epochs == 10
    long = plan_schedule(passes=10, evals=4, budget_s=300.0, step_s=0.5, eval_s=1.0)
    assert long.steps == 0 and long.epochs == int(300.0 / (1.0 + 10 * 0.5))  # whole passes
    costly = plan_schedule(passes=1000, evals=10, budget_s=60.0, step_s=0.1, eval_s=6.0)
    assert costly.epochs * 6.0 <= 0.2 * 60.0             # evaluations capped to a fifth
    for sched in (long, costly):
        assert sched.epochs * sched.eval_s + sched.total_steps * sched.step_s <= \
            sched.budget_s * 1.02
    assert plan_schedule(passes=7, evals=10, epochs=3).total_steps == 21


def test_the_config_round_trips_and_refuses_bad_settings():
    c = CompressConfig(target=0.3, metric="params", budget_minutes=2.5, lr=0.01)
    assert CompressConfig.from_json(c.to_json()) == c
    assert CompressConfig.from_dict({"target": "0.4", "onnx": "false"}).onnx is False
    for bad in ({"budget_minutes": 0}, {"epochs": 0}, {"metric": "flops"}, {"target": 0},
                {"budget_minutes": 1, "epochs": 1}, {"method": "magic"}, {"evals": 0},
                {"colour": "red"}):
        with pytest.raises(TargetError):
            CompressConfig.from_dict(bad)


# ------------------------------------------------------------------ the pipeline
def _data(n_train: int = 96, n_held: int = 24) -> CompressData:
    x, y = images(n_train + n_held, 0)
    kept, held = holdout_split(y, n_held, 0)
    tx, ty = images(20, 1)
    return CompressData(train=Batches(x[kept], y[kept], 16, CIFAR_NORM, train=True, seed=0,
                                      drop_last=True),
                        heldout=Batches(x[held], y[held], 50, CIFAR_NORM),
                        test=Batches(tx, ty, 50, CIFAR_NORM),
                        calibration=torch.cat([b for b, _ in Batches(x[kept][:32], y[kept][:32],
                                                                    32, CIFAR_NORM)]))


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return CifarResNet(8, widths=(8, 16, 32)).eval()


CFG = CompressConfig(target=0.5, epochs=3, bn_batches=2, calib=32, lr=0.05, evals=3)


def test_every_stage_runs_and_the_best_held_out_round_is_kept(tmp_path):
    model, data = _model(), _data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lines = []
    res = compress(model, X, CFG, data, tmp_path / "w", progress=False, say=lines.append)
    assert res.method == "submodular" and set(res.stages) == {"select", "bn", "recover"}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert res.schedule.epochs == 3 and [c["round"] for c in res.curve] == [0, 1, 2, 3]
    best = json.loads((tmp_path / "w" / "recover" / "best.json").read_text())
    tops = [c["heldout_top1"] for c in res.curve]
    assert best["heldout_top1"] == max(tops) and tops[best["epoch"]] == max(tops)
    assert res.stages["recover"]["best_round"] == best["epoch"]
    from prunekit.train import evaluate
    assert evaluate(res.model, data.heldout)["top1"] == pytest.approx(max(tops))
    assert res.model(X).shape == (1, 10)
    assert any("selection (submodular)" in ln for ln in lines)


def test_without_data_the_selection_is_one_shot_and_a_recovery_is_refused(tmp_path):
    res = compress(_model(), X, CompressConfig(target=0.5), None, tmp_path / "w",
                   progress=False, say=lambda s: None)
    assert res.method == "oneshot" and res.schedule is None and "bn" not in res.stages
    for cfg in (CompressConfig(epochs=1), CompressConfig(method="submodular")):
        with pytest.raises(TargetError):
            compress(_model(), X, cfg, None, tmp_path / "v", progress=False)
        assert not (tmp_path / "v").exists()          # refused before any work


class _Killed(KeyboardInterrupt):
    pass


def test_a_run_killed_during_recovery_resumes_to_the_same_model(tmp_path):
    data = _data()
    whole = compress(_model(), X, CFG, data, tmp_path / "a", progress=False, say=lambda s: None)

    def kill_after_round_2(line: str) -> None:
        if line.startswith("recovery round 2/"):
            raise _Killed()
    with pytest.raises(_Killed):
        compress(_model(), X, CFG, data, tmp_path / "b", progress=False,
                 say=kill_after_round_2)
    log = tmp_path / "b" / "recover" / "log.jsonl"
    assert len(log.read_text().splitlines()) == 2
    seen = []
    resumed = compress(_model(), X, CFG, data, tmp_path / "b", resume=True, progress=False,
                       say=seen.append)
    assert "selection: done before, reloaded" in seen
    assert [ln for ln in seen if ln.startswith("recovery round")] == \
        [ln for ln in seen if ln.startswith("recovery round 3/")]   # only the rest ran
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    assert [c["heldout_top1"] for c in resumed.curve] == \
        [c["heldout_top1"] for c in whole.curve]
    with pytest.raises(TargetError, match="other settings"):
        compress(_model(), X, CompressConfig(target=0.4, epochs=3), data, tmp_path / "b",
                 resume=True, progress=False)


# ------------------------------------------------------------------ the command
@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("compress")
    canonical(root / "data", n_train=200, n_test=40)
    torch.manual_seed(0)
    torch.save(CifarResNet(20).state_dict(), root / "r20.pt")
    return root


def _argv(cifar: Path, out: Path, *extra: str) -> list[str]:
    return ["compress", "--model", "resnet20", "--checkpoint", str(cifar / "r20.pt"),
            "--data", str(cifar / "data"), "--out", str(out), "--calib", "32", "--set",
            "batch_size=16", "--set", "holdout=20", "--set", "bn_batches=2", "--batch", "2",
            "--threads", "1", *extra]


def test_the_run_folder_holds_what_the_report_names(cifar, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(_argv(cifar, out, "--epochs", "2")) == 0
    report = (out / "report.md").read_text()
    for name in re.findall(r"\]\(([^)]+)\)", report):      # every linked file exists
        assert (out / name).is_file(), name
    for name in ("model/plan.json", "plan.json", "metrics.json", "model.onnx",
                 "stages/recover/log.jsonl"):
        assert (out / name).is_file(), name
    m = json.loads((out / "metrics.json").read_text())
    assert {"test_top1", "heldout_top1", "params", "macs", "latency_ms"} <= set(m["after"])
    assert m["after"]["macs"] <= 0.5 * m["before"]["macs"] * 1.05
    assert len(m["curve"]) == 3 and m["widths"]
    from prunekit.io import load_pruned
    from prunekit.models import create
    pruned, _ = load_pruned(out / "model", create("resnet20"), (torch.zeros(1, 3, 32, 32),))
    assert sum(p.numel() for p in pruned.parameters()) == m["after"]["params"]
    assert "outputs:" in capsys.readouterr().out
    assert not list(tmp_path.glob(".run.*"))             # the work folder moved into the run


def test_the_held_out_split_never_meets_the_test_set(cifar, tmp_path):
    from prunekit.cli_compress import data_for
    from prunekit.data import load_cifar10
    from prunekit.models import spec
    cfg = {"data": str(cifar / "data"), "subset": 0, "seed": 0, "cutout": 0}
    data = data_for(cfg, CompressConfig(holdout=20, batch_size=16, calib=16, epochs=1),
                    spec("resnet20"))
    tx, _, vx, _ = load_cifar10(str(cifar / "data"))
    rows = {r.tobytes() for r in vx}
    held = {r.tobytes() for r in data.heldout.x}
    train = {r.tobytes() for r in data.train.x}
    assert len(held) == 20 and not held & rows and not held & train
    assert held | train == {r.tobytes() for r in tx}


@pytest.mark.parametrize("extra,needle", [
    (["--epochs", "1", "--data", "/nonexistent/folder"], "/nonexistent/folder"),
    (["--budget-minutes", "0"], "budget_minutes"),
    (["--set", "metric=flops"], "metric"),
    (["--method", "submodular", "--set", "data=null"], "calibration"),
])
def test_bad_input_is_refused_before_any_work(cifar, tmp_path, monkeypatch, capsys, extra,
                                              needle):
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PRUNEKIT_DATA", raising=False)
    argv = _argv(cifar, tmp_path / "run")
    if "--data" in extra or "data=null" in extra:
        i = argv.index("--data")
        argv = argv[:i] + argv[i + 2:]
        extra = [e for e in extra if e not in ("--set", "data=null")]
    assert main(argv + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["cache"])


def test_re_estimated_batch_norms_that_score_worse_are_not_kept(tmp_path, monkeypatch):
    import sys
    compress_mod = sys.modules["prunekit.pipeline.compress"]     # the module, not the function

    def spoil(model, train, batches):             # statistics that wreck the held-out score
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.fill_(50.0)
        return 1
    monkeypatch.setattr(compress_mod, "recalibrate", spoil)
    cfg = CompressConfig(target=0.5, bn_batches=1, calib=32)
    model, data = _model(), _data()
    with torch.no_grad():                          # labels the unpruned model gets right
        data.heldout.y = np.concatenate([model(b).argmax(1).numpy() for b, _ in data.heldout])
    res = compress(model, X, cfg, data, tmp_path / "w", progress=False, say=lambda s: None)
    bn = res.stages["bn"]
    assert bn["kept"] is False and bn["heldout_top1_reestimated"] < bn["heldout_top1"]
    assert bn["heldout_top1"] == res.stages["select"]["heldout_top1"]
    assert all(float(m.running_mean.abs().max()) < 50 for m in res.model.modules()
               if isinstance(m, torch.nn.BatchNorm2d))


def test_the_command_resumes_a_killed_run(cifar, tmp_path, monkeypatch, capsys):
    import sys
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    mod = sys.modules["prunekit.pipeline.compress"]
    real = mod.recover

    def killed(*a, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(mod, "recover", killed)
    out = tmp_path / "run"
    assert main(_argv(cifar, out, "--epochs", "1")) == 130
    err = capsys.readouterr().err
    work = tmp_path / ".run.compress-work"
    assert "--resume" in err and str(work) in err and not out.exists()
    assert (work / "select" / "plan.json").is_file()
    monkeypatch.setattr(mod, "recover", real)
    assert main(_argv(cifar, out, "--epochs", "1", "--resume")) == 0
    assert "selection: done before, reloaded" in capsys.readouterr().out
    assert (out / "report.md").is_file() and not work.exists()
