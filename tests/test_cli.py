"""The command line end to end on tiny settings, and every bad input: one line on stderr,
exit code 2, no output folder."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from fixtures import canonical
from prunekit.cli import main
from prunekit.models import create


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    canonical(root, n_train=60, n_test=20)
    return root


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "r20.pt"
    torch.manual_seed(0)
    torch.save(create("resnet20").state_dict(), path)
    return path


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_prune_finetune_eval_export_info(tmp_path, data, ckpt, capsys, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    code = main(["prune", "--model", "resnet20", "--checkpoint", str(ckpt), "--data", str(data),
                 "--target", "0.5", "--finetune-epochs", "1", "--out", str(out),
                 "--set", "batch_size=16", "--set", "max_steps_per_epoch=2"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "top-1" in printed and "MACs" in printed and "latency" in printed
    for f in ("plan.json", "metrics.json", "config.json", "summary.txt", "model/plan.json"):
        assert (out / f).is_file(), f
    metrics = json.loads((out / "metrics.json").read_text())
    assert abs(metrics["after"]["macs"] / metrics["before"]["macs"] - 0.5) <= 0.01
    assert main(["eval", "--model", "resnet20", "--pruned", str(out / "model"),
                 "--data", str(data)]) == 0
    assert "top1" in capsys.readouterr().out
    assert main(["export", "--model", "resnet20", "--pruned", str(out / "model"),
                 "--out", str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.onnx").is_file()
    # never onto an input, never over an existing file unless asked
    weights = next(p for p in (out / "model").iterdir() if p.is_file() and p.name != "plan.json")
    before = {p: p.read_bytes() for p in [weights, tmp_path / "m.onnx", ckpt]}
    capsys.readouterr()
    for target, needle in ((weights, "is an input of this export"), (ckpt, "is an input"),
                           (tmp_path / "m.onnx", "exists; pass --overwrite")):
        argv = ["export", "--model", "resnet20", "--pruned", str(out / "model"),
                "--checkpoint", str(ckpt), "--out", str(target)]
        if target == tmp_path / "m.onnx":
            argv.remove("--checkpoint"); argv.remove(str(ckpt))
        assert main(argv) == 2
        assert needle in _err_line(capsys)
    assert {p: p.read_bytes() for p in before} == before
    assert main(["export", "--model", "resnet20", "--pruned", str(out / "model"),
                 "--out", str(tmp_path / "m.onnx"), "--overwrite"]) == 0
    assert main(["info", "--model", "resnet20", "--pruned", str(out / "model")]) == 0
    text = capsys.readouterr().out
    assert "layer1.0.conv1" in text and "groups" in text
    ft = tmp_path / "ft"
    assert main(["finetune", "--model", "resnet20", "--checkpoint", str(ckpt), "--pruned",
                 str(out / "model"), "--data", str(data), "--epochs", "1", "--distill",
                 "--out", str(ft), "--set", "batch_size=16",
                 "--set", "max_steps_per_epoch=1"]) == 0
    assert (ft / "model" / "plan.json").is_file()


def test_train_resume_and_config_file(tmp_path, data, capsys, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 1\nbatch_size: 16\nmax_steps_per_epoch: 2\nchannels_last: false\n"
                   "label_smoothing: 0.1\ncutout: 8\n")
    out = tmp_path / "t"
    args = ["train", "--model", "resnet20", "--data", str(data), "--config", str(cfg),
            "--out", str(out)]
    assert main(args) == 0
    assert (out / "model.pt").is_file() and (out / "log.jsonl").is_file()
    saved = json.loads((out / "config.json").read_text())
    assert saved["label_smoothing"] == 0.1 and saved["cutout"] == 8
    capsys.readouterr()
    assert main(args) == 2 and "not empty" in _err_line(capsys)
    assert main(args + ["--resume", "--set", "epochs=2"]) == 0
    assert len((out / "log.jsonl").read_text().splitlines()) == 2
    # resume compares the settings: a changed config file is refused, nothing touched
    changed = tmp_path / "c2.yaml"
    changed.write_text(cfg.read_text().replace("cutout: 8", "cutout: 4"))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main(["train", "--model", "resnet20", "--data", str(data), "--config", str(changed),
                 "--out", str(out), "--resume", "--set", "epochs=2"]) == 2
    line = _err_line(capsys)
    assert "--resume" in line and "cutout 8 -> 4" in line, line
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    # given on the command line it is an override: the run continues and says so
    assert main(args + ["--resume", "--set", "epochs=3", "--set", "seed=7"]) == 0
    assert "note: resuming with seed = 7 (the saved run had 0)" in capsys.readouterr().err


@pytest.mark.parametrize("argv,needle", [
    (["prune", "--model", "resnet99", "--target", "0.5"], "unknown model"),
    (["prune", "--model", "resnet20", "--target", "1.5"], "(0, 1]"),
    (["prune", "--model", "resnet20", "--target", "0.5", "--method", "magic"], "unknown method"),
    (["prune", "--model", "resnet20", "--target", "0.5", "--finetune-epochs", "1",
      "--data", "/nonexistent/data"], "no CIFAR-10"),
    (["prune", "--model", "resnet20", "--checkpoint", "/nonexistent.pt"], "does not exist"),
    (["prune", "--model", "resnet20", "--set", "bogus=1"], "unknown option"),
    (["train", "--model", "resnet20", "--data", "/nonexistent/data", "--set",
      "label_smoothing=1.5"], "label_smoothing"),
    (["prune", "--model", "resnet20", "--config", "/nonexistent.yaml"], "does not exist"),
    (["prune", "--model", "resnet20", "--method", "lapp", "--target", "0.5", "--set",
      "temperature=abc"], "temperature must be a number"),
    (["prune", "--model", "resnet20", "--method", "lapp", "--target", "0.5", "--set",
      "threshold_lr=3"], "threshold_lr in (0, 1]"),
    (["prune", "--model", "resnet20", "--method", "lapp", "--target", "0.5", "--set",
      "bypass=False!"], "bypass must be true or false"),
    (["prune", "--model", "resnet20", "--method", "lapp", "--target", "0.5", "--set",
      "hold=maybe"], "hold must be true or false"),
    (["prune", "--model", "resnet20", "--method", "lapp", "--target", "0.5", "--set",
      "score=magnitude"], "score must be one of"),
    (["train", "--model", "resnet20", "--data", "/nonexistent/data", "--set",
      "channels_last=maybe"], "channels_last must be true or false"),
    (["train", "--model", "resnet20", "--data", "/nonexistent/data", "--set",
      "precision=fp16"], "precision must be one of fp32, bf16"),
])
def test_bad_input(tmp_path, capsys, argv, needle):
    out = tmp_path / "out"
    assert main(argv + ["--out", str(out)]) == 2
    line = _err_line(capsys)
    assert needle in line and line.startswith(f"prunekit {argv[0]}: error:")
    assert not out.exists() and not list(tmp_path.iterdir())


def test_corrupt_and_mismatched_checkpoints(tmp_path, capsys):
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    torch.save(create("resnet32").state_dict(), tmp_path / "r32.pt")
    for f, needle in (("bad.pt", "cannot read"), ("r32.pt", "does not fit")):
        assert main(["prune", "--model", "resnet20", "--checkpoint", str(tmp_path / f),
                     "--out", str(tmp_path / "o")]) == 2
        assert needle in _err_line(capsys)
    assert not (tmp_path / "o").exists()


def test_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["prune", "--model", "resnet20", "--out", str(blocker / "sub")]) == 2
    assert "is a file, not a folder" in _err_line(capsys)


def test_exit_code_from_a_real_process(tmp_path):
    res = subprocess.run([sys.executable, "-m", "prunekit.cli", "prune", "--model", "nope",
                          "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "unknown model" in res.stderr


def test_submodular_prune_and_reweight(tmp_path, data, ckpt, capsys, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "sub"
    assert main(["prune", "--model", "resnet20", "--checkpoint", str(ckpt), "--data", str(data),
                 "--method", "submodular", "--target", "0.5", "--groups", "layer*.conv1",
                 "--calib", "32", "--set", "scope=groups", "--set", "intercept=yes",
                 "--set", "reweight=False", "--out", str(out)]) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert plan["meta"]["method"] == "submodular"
    assert plan["meta"]["config"]["intercept"] is True
    assert plan["meta"]["config"]["reweight"] is False
    assert set(plan["keep"]) and all(g.endswith("conv1") for g in plan["keep"])
    assert abs(plan["meta"]["achieved"] - 0.5) < 0.02
    one = tmp_path / "one"
    assert main(["prune", "--model", "resnet20", "--checkpoint", str(ckpt), "--target", "0.5",
                 "--out", str(one)]) == 0
    capsys.readouterr()
    rew = tmp_path / "rew"
    assert main(["reweight", "--model", "resnet20", "--checkpoint", str(ckpt), "--data",
                 str(data), "--pruned", str(one / "model"), "--calib", "32",
                 "--out", str(rew)]) == 0
    printed = capsys.readouterr().out
    assert "relative output error" in printed and (rew / "model" / "plan.json").is_file()


@pytest.mark.parametrize("extra,needle", [
    (["--set", "selector=magic"], "selector must be one of"),
    (["--set", "variant=sideways"], "variant must be one of"),
    (["--set", "intercept=perhaps"], "intercept must be true or false"),
    (["--calib", "0"], "calib must be an integer >= 1, got 0"),
    (["--calib", "100000"], "calibration images"),
    (["--groups", "nothing*", "--calib", "16"], "no prunable group matches"),
])
def test_submodular_bad_input(tmp_path, data, capsys, monkeypatch, extra, needle):
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert main(["prune", "--model", "resnet20", "--method", "submodular", "--data", str(data),
                 "--out", str(out)] + extra) == 2
    assert needle in _err_line(capsys)
    assert not out.exists()


def test_train_with_a_teacher(tmp_path, data, ckpt, capsys, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(1)
    t_ckpt = tmp_path / "r32.pt"
    torch.save(create("resnet32").state_dict(), t_ckpt)
    base = ["train", "--model", "resnet20", "--checkpoint", str(ckpt), "--data", str(data),
            "--epochs", "1", "--set", "batch_size=16", "--set", "max_steps_per_epoch=2"]
    out = tmp_path / "kd"
    assert main(base + ["--teacher", "resnet32", "--teacher-checkpoint", str(t_ckpt),
                        "--set", "distill_alpha=0.5", "--out", str(out)]) == 0
    assert (out / "model.pt").is_file()
    capsys.readouterr()
    for extra, needle in ((["--teacher", "resnet32"], "needs --teacher-checkpoint"),
                          (["--set", "distill_alpha=0.5"], "needs --teacher"),
                          (["--teacher", "resnet32", "--teacher-checkpoint", str(t_ckpt)],
                           "distill_alpha")):
        assert main(base + extra + ["--out", str(tmp_path / "bad")]) == 2
        assert needle in _err_line(capsys)
        assert not (tmp_path / "bad").exists()


def test_lapp_from_scratch_end_to_end(tmp_path, data, capsys, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "lapp"
    assert main(["prune", "--model", "resnet20", "--data", str(data), "--method", "lapp",
                 "--target", "0.6", "--epochs", "2", "--set", "prune_epochs=1",
                 "--set", "threshold_lr=0.5", "--set", "batch_size=16",
                 "--set", "max_steps_per_epoch=3", "--set", "bypass=true",
                 "--set", "hold=on", "--set", "score=taylor", "--set", "leak=0.01",
                 "--out", str(out)]) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert plan["meta"]["method"] == "lapp" and plan["meta"]["bypass"] is True
    assert plan["meta"]["config"]["hold"] is True
    assert plan["meta"]["config"]["score"] == "taylor" and plan["meta"]["config"]["leak"] == 0.01
    assert plan["meta"]["achieved"] <= 0.6
    for f in ("lapp/prune/log.jsonl", "lapp/train/log.jsonl", "lapp/thresholds.png",
              "metrics.json", "model/plan.json"):
        assert (out / f).is_file(), f
    assert not list(tmp_path.glob(".lapp.lapp-work"))
    capsys.readouterr()
    assert main(["eval", "--model", "resnet20", "--pruned", str(out / "model"),
                 "--data", str(data)]) == 0       # the bypass is rebuilt before replay
    assert "top1" in capsys.readouterr().out
    bad = tmp_path / "bad"
    assert main(["prune", "--model", "resnet20", "--data", str(data), "--method", "lapp",
                 "--epochs", "2", "--set", "prune_epochs=5", "--out", str(bad)]) == 2
    assert "exceeds epochs" in _err_line(capsys) and not bad.exists()


def test_emo_search_end_to_end(tmp_path, data, ckpt, capsys, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "emo"
    assert main(["prune", "--model", "resnet20", "--checkpoint", str(ckpt), "--data", str(data),
                 "--method", "emo", "--target", "0.9", "--calib", "16", "--set", "pop_size=4",
                 "--set", "generations=1", "--set", "chain_points=4", "--out", str(out)]) == 0
    for f in ("emo/front.json", "emo/front.csv", "emo/hypervolume.json", "emo/front.png",
              "plan.json", "model/plan.json", "metrics.json"):
        assert (out / f).is_file(), f
    plan = json.loads((out / "plan.json").read_text())
    assert plan["meta"]["method"] == "emo" and plan["meta"]["cost_ratio"] <= 0.9
    capsys.readouterr()
    bad = tmp_path / "bad"
    assert main(["prune", "--model", "resnet20", "--data", str(data), "--method", "emo",
                 "--set", "executor=mpi", "--out", str(bad)]) == 2
    assert "executor must be" in _err_line(capsys) and not bad.exists()


def test_space_end_to_end(tmp_path, data, ckpt, capsys, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "space"
    assert main(["space", "--model", "resnet20", "--checkpoint", str(ckpt), "--data", str(data),
                 "--samples", "8", "--set", "steps=1", "--set", "held=20", "--set", "pool=40",
                 "--set", "regime=[0.3,0.7]", "--out", str(out)]) == 0
    doc = json.loads((out / "space" / "analysis.json").read_text())
    assert doc["refined_space"]["rho_band"] == doc["ratio"]["interval"]
    for f in ("space/initial.jsonl", "space/refined.jsonl", "space/spaces.png", "plan.json",
              "model/plan.json"):
        assert (out / f).is_file(), f
    assert len((out / "space" / "initial.jsonl").read_text().splitlines()) == 8
    capsys.readouterr()
    bad = tmp_path / "bad"
    assert main(["space", "--model", "resnet20", "--checkpoint", str(ckpt), "--data", str(data),
                 "--set", "regime=0.5", "--out", str(bad)]) == 2
    assert "regime must be" in _err_line(capsys) and not bad.exists()


@pytest.mark.parametrize("setting,needle", [
    ("epochs=ten", "epochs must be an integer >= 1, got 'ten'"),
    ("epochs=0", "epochs must be an integer >= 1, got 0"),
    ("epochs=2.5", "epochs must be an integer >= 1, got 2.5"),
    ("batch_size=0", "batch_size must be an integer >= 1, got 0"),
    ("batch_size=-4", "batch_size must be an integer >= 1, got -4"),
    ("max_steps_per_epoch=-1", "max_steps_per_epoch must be an integer >= 0"),
    ("subset=-3", "subset must be an integer >= 0"),
    ("target=true", "target must be a number in (0, 1], got True"),
    ("target=0", "target must be a number in (0, 1], got 0"),
    ("target=1.5", "target must be a number in (0, 1], got 1.5"),
    ("lr=[0.1]", "lr must be a number > 0, got [0.1]"),
    ("lr=nan", "lr must be a finite number"),
    ("seed=true", "seed must be an integer >= 0, got True"),
    ("channels_last=1", "channels_last must be true or false, got 1"),
    ("workers=0", "workers must be an integer >= 1"),
    ("regime=[0.6,0.4]", "regime must be two numbers lo < hi in (0, 1]"),
    ("groups=7", "groups must be a list of names, got 7"),
])
def test_options_have_declared_types_and_ranges(tmp_path, capsys, setting, needle):
    """Checked before any work: one line naming the option, exit 2, nothing written."""
    out = tmp_path / "out"
    assert main(["prune", "--model", "resnet20", "--set", setting, "--out", str(out)]) == 2
    line = _err_line(capsys)
    assert needle in line and line.startswith("prunekit prune: error:"), line
    assert not out.exists() and not list(tmp_path.iterdir())


def test_whole_floats_are_integers():
    from prunekit.options import check_options
    assert check_options({"epochs": 3.0, "target": 1})["epochs"] == 3
    assert check_options({"prune_epochs": None, "regime": [0.4, 0.6]})["regime"] == [0.4, 0.6]


def test_unreachable_target_names_the_closest(tmp_path, capsys):
    """0.001 of the MACs cannot be met (the minimum widths keep ~0.0025): an error with
    the closest reachable value, not a silent 2.5x miss."""
    out = tmp_path / "out"
    assert main(["prune", "--model", "resnet20", "--target", "0.001", "--out", str(out)]) == 2
    line = _err_line(capsys)
    assert "unreachable" in line and "closest reachable" in line, line
    assert not out.exists()


def test_oneshot_prunes_only_the_groups_asked_for(tmp_path):
    out = tmp_path / "out"
    assert main(["prune", "--model", "resnet20", "--target", "0.9", "--groups", "layer1*",
                 "--out", str(out)]) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert plan["keep"] and all(g.startswith("layer1") for g in plan["keep"])


@pytest.mark.parametrize("method,setting", [("oneshot", "pop_size=4"),
                                            ("lapp", "variant=seq"),
                                            ("submodular", "executor=ray")])
def test_an_option_the_method_does_not_use_is_refused(tmp_path, capsys, method, setting):
    out = tmp_path / "out"
    assert main(["prune", "--model", "resnet20", "--method", method, "--target", "0.5",
                 "--set", setting, "--out", str(out)]) == 2
    key = setting.split("=")[0]
    assert f"{key} is not used by method {method}" in _err_line(capsys)
    assert not out.exists()
