"""Hostile inputs and machine faults through the command line (issue 22's battery).

Every case runs a real ``prunekit`` command (in-process, or as a real process where a
signal or a second process is the point) and asserts the same five things:

- the exit code (2 for an error, 130 for Ctrl-C, 143 for SIGTERM, 0 where the run
  may go on, such as an unwritable cache);
- one line on stderr, with no traceback;
- that the line names the option or the file at fault;
- that no file is left behind that was not there before (a run that kept its work
  for ``--resume`` says so in that line, and only that folder may remain);
- that no input changed (every input file hashed before and after).

Settings are tiny (ResNet-20, 60 training images, one step per epoch) so the battery
runs in CI. Full-disk and read-only cases mount a small tmpfs where the machine lets
this process mount (root); elsewhere they skip, and the injected full disk (the one
low-level write function failing with ENOSPC) still runs everywhere.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

from fixtures import canonical, jpeg
from prunekit import outputs
from prunekit.cli import main
from prunekit.models import create
from prunekit.options import COMMAND_OPTIONS, SPECS

TINY = ["--set", "max_steps_per_epoch=1", "--set", "batch_size=8"]


# ------------------------------------------------------------------ workspace
@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """Inputs shared by every case: data in both layouts, a checkpoint, a saved pruned
    model, a training run folder and a config file."""
    root = tmp_path_factory.mktemp("inputs")
    canonical(root / "data", n_train=60, n_test=20)
    jpeg(root / "jpeg", n_train=20, n_test=10)
    torch.manual_seed(0)
    torch.save(create("resnet20").state_dict(), root / "r20.pt")
    torch.save(create("resnet32").state_dict(), root / "r32.pt")
    (root / "cfg.yaml").write_text("target: 0.5\n")
    env = {"PRUNEKIT_CACHE": str(root / "cache")}
    with _env(env):
        assert main(["prune", "--model", "resnet20", "--checkpoint", str(root / "r20.pt"),
                     "--out", str(root / "pr")]) == 0
        assert main(["train", "--model", "resnet20", "--data", str(root / "data"), "--out",
                     str(root / "run"), "--epochs", "3", *TINY]) == 0
    return root


@contextlib.contextmanager
def _env(values: dict[str, str]):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _tree(*roots: Path) -> set[str]:
    return {str(p) for r in roots if r.exists() for p in r.rglob("*")}


def _hashes(*roots: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for r in roots if r.exists() for p in ([r] if r.is_file() else r.rglob("*"))
            if p.is_file()}


class Case:
    """Run one command and assert the five things (see the module docstring)."""

    def __init__(self, ws: Path, tmp: Path, capsys) -> None:
        self.ws, self.tmp, self.capsys = ws, tmp, capsys
        self.cache = tmp / "cache"

    def __call__(self, argv: list[str], needle: str, rc: int = 2, kept: str | None = None,
                 inputs: tuple[Path, ...] = ()) -> str:
        watched = (self.ws, self.tmp)
        before, hashes = _tree(*watched), _hashes(self.ws, *inputs)
        self.capsys.readouterr()
        with _env({"PRUNEKIT_CACHE": str(self.cache)}):
            got = main([str(a) for a in argv])
        err = [ln for ln in self.capsys.readouterr().err.splitlines() if ln.strip()]
        assert got == rc, (got, err)
        assert len(err) == 1, err
        assert "Traceback" not in err[0]
        assert needle in err[0], err[0]
        after = _tree(*watched) - before
        if kept:
            assert kept in err[0] and "--resume" in err[0], err[0]
            after = {p for p in after if not p.startswith(kept)}
        assert not after, sorted(after)[:5]
        assert _hashes(self.ws, *inputs) == hashes, "an input was modified"
        return err[0]


@pytest.fixture
def case(ws, tmp_path, capsys):
    return Case(ws, tmp_path, capsys)


def _base(cmd: str, ws: Path, out: Path) -> list:
    """A valid command line for ``cmd`` (what each case then spoils)."""
    model = ["--model", "resnet20"]
    return {
        "train": ["train", *model, "--data", ws / "data", "--out", out],
        "average": ["average", *model, "--checkpoints", ws / "r20.pt", ws / "run" / "model.pt",
                    "--out", out],
        "eval": ["eval", *model, "--checkpoint", ws / "r20.pt", "--data", ws / "data"],
        "prune": ["prune", *model, "--checkpoint", ws / "r20.pt", "--out", out],
        "reweight": ["reweight", *model, "--checkpoint", ws / "r20.pt", "--pruned", ws / "pr" / "model",
                     "--data", ws / "data", "--out", out, "--calib", "16"],
        "space": ["space", *model, "--checkpoint", ws / "r20.pt", "--data", ws / "data",
                  "--out", out],
        "finetune": ["finetune", *model, "--checkpoint", ws / "r20.pt", "--pruned", ws / "pr" / "model",
                     "--data", ws / "data", "--out", out],
        "export": ["export", *model, "--checkpoint", ws / "r20.pt", "--out", out],
        "info": ["info", *model, "--checkpoint", ws / "r20.pt"],
        "latency": ["latency", *model, "--checkpoint", ws / "r20.pt", "--out", out,
                    "--batch", "1", "--threads", "1"],
        "compress": ["compress", *model, "--checkpoint", ws / "r20.pt", "--data", ws / "data",
                     "--out", out, "--calib", "8", "--set", "holdout=6", "--set",
                     "batch_size=8", "--set", "bn_batches=1", "--batch", "1", "--threads", "1"],
    }[cmd]


# ------------------------------------------------------------------ 1. bad values
_BAD = {"int": ["ten", True, 1.5, [1], None], "float": ["fast", True, [0.1], "nan"],
        "bool": [2, "maybe", 0.5], "range": [[0.6, 0.4], "x", [0.2]], "strs": [[1], 5, [""]],
        "str": [5, "", [1]]}


def _bad_values() -> list[tuple[str, str, object]]:
    cases, turn = [], 0
    for cmd, keys in COMMAND_OPTIONS.items():
        for key in sorted(keys):
            spec = SPECS.get(key)
            if spec is None:
                continue
            bad = list(_BAD[spec.kind])
            if spec.nullable:
                bad = [b for b in bad if b is not None]
            if spec.kind in ("int", "float") and spec.lo is not None:
                bad.append(spec.lo - 1)      # below the range
            cases.append((cmd, key, bad[turn % len(bad)]))
            turn += 1
    return cases


@pytest.mark.parametrize("cmd,key,value", _bad_values(),
                         ids=lambda v: str(v) if not isinstance(v, list) else "list")
def test_a_bad_value_of_any_option_is_refused_before_work(case, ws, tmp_path, cmd, key, value):
    argv = _without(_base(cmd, ws, tmp_path / "out"), key)   # a flag would win over --set
    case([*argv, "--set", f"{key}={json.dumps(value)}"], key)


def _without(argv: list, key: str) -> list:
    flag, out, skip = "--" + key.replace("_", "-"), [], False
    for a in argv:
        if isinstance(a, str) and a.startswith("--"):
            skip = a == flag
        if not skip:
            out.append(a)
    return out


@pytest.mark.parametrize("cmd,setting", [("eval", "lr=0.1"), ("export", "epochs=2"),
                                         ("info", "target=0.5"), ("average", "lr=0.1"),
                                         ("reweight", "target=0.3"), ("finetune", "calib=8"),
                                         ("train", "target=0.5"), ("space", "variant=asym")])
def test_an_option_the_command_does_not_read_is_refused(case, ws, tmp_path, cmd, setting):
    case([*_base(cmd, ws, tmp_path / "out"), "--set", setting], setting.split("=")[0])


def test_a_usage_error_is_one_line(case, ws, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["prune", "--model", "resnet20", "--target", "half"])
    assert exc.value.code == 2
    err = case.capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--target" in err[0] and "half" in err[0]


# ------------------------------------------------------------------ 2. corrupt files
def _unsafe_pickle(path: Path) -> None:
    torch.save({"model": {"w": torch.zeros(1)}, "hook": contextlib.ExitStack}, path)


@pytest.mark.parametrize("kind,needle", [
    ("garbage", "corrupt or not a PyTorch file"), ("truncated", "corrupt or not a PyTorch file"),
    ("unsafe", "only unsafe loading"), ("other_arch", "does not fit"),
    ("folder", "does not exist"), ("empty", "corrupt or not a PyTorch file")])
def test_a_corrupt_or_foreign_checkpoint_is_named(case, ws, tmp_path, kind, needle):
    bad = tmp_path / "bad.pt"
    if kind == "garbage":
        bad.write_bytes(os.urandom(4096))
    elif kind == "truncated":
        bad.write_bytes((ws / "r20.pt").read_bytes()[:5000])
    elif kind == "unsafe":
        _unsafe_pickle(bad)
    elif kind == "other_arch":
        shutil.copy(ws / "r32.pt", bad)
    elif kind == "folder":
        bad.mkdir()
    else:
        bad.write_bytes(b"")
    msg = case(["eval", "--model", "resnet20", "--checkpoint", bad, "--data", ws / "data"],
               needle)
    assert str(bad) in msg


@pytest.mark.parametrize("text,needle", [("a: [1, 2", "cannot parse config"),
                                         ("- 1\n- 2\n", "must be a mapping"),
                                         (b"\xff\xfe\x00bin", "cannot parse config"),
                                         (None, "does not exist")])
def test_a_corrupt_config_file_is_named(case, ws, tmp_path, text, needle):
    cfg = tmp_path / "c.yaml"
    if isinstance(text, bytes):
        cfg.write_bytes(text)
    elif text is not None:
        cfg.write_text(text)
    msg = case(["prune", "--model", "resnet20", "--config", cfg, "--out", tmp_path / "o"],
               needle)
    assert str(cfg) in msg


def _spoil_canonical(folder: Path, kind: str) -> Path:
    batch = folder / "data_batch_2"
    if kind == "truncated_pickle":
        batch.write_bytes(batch.read_bytes()[:700])
    elif kind == "unsafe_pickle":
        batch.write_bytes(pickle.dumps({b"data": contextlib.ExitStack, b"labels": []}))
    elif kind == "no_labels":
        batch.write_bytes(pickle.dumps({b"data": b""}))
    elif kind == "missing_batch":
        batch.unlink()
    elif kind == "random_pickle":
        batch.write_bytes(os.urandom(2048))
    return batch


def _spoil_jpeg(folder: Path, kind: str) -> Path:
    arc = folder / "train.tar.gz"
    if kind == "truncated_archive":
        arc.write_bytes(arc.read_bytes()[:3000])
    elif kind == "random_archive":
        arc.write_bytes(os.urandom(3000))
    elif kind == "bad_image":
        with tarfile.open(arc, "w:gz") as tar:
            p = folder / "x.jpg"
            p.write_bytes(b"\xff\xd8 not really a jpeg")
            tar.add(p, arcname="train/cat/0001.jpg")
            p.unlink()
    return arc


@pytest.mark.parametrize("kind,needle", [
    ("truncated_pickle", "not a readable CIFAR-10 batch"),
    ("unsafe_pickle", "refusing to unpickle"), ("no_labels", "not a readable CIFAR-10 batch"),
    ("missing_batch", "missing CIFAR-10 batch"), ("random_pickle", "not a readable"),
    ("truncated_archive", "not a readable .tar.gz archive"),
    ("random_archive", "not a readable .tar.gz archive"),
    ("bad_image", "is not a readable image")])
def test_corrupt_data_is_named(case, ws, tmp_path, kind, needle):
    layout = "data" if "pickle" in kind or "batch" in kind or "labels" in kind else "jpeg"
    data = tmp_path / "d"
    shutil.copytree(ws / layout, data)
    spoiled = (_spoil_canonical(data / "cifar-10-batches-py", kind) if layout == "data"
               else _spoil_jpeg(data, kind))
    msg = case(["eval", "--model", "resnet20", "--checkpoint", ws / "r20.pt", "--data", data],
               needle, inputs=(data,))
    assert spoiled.name in msg


@pytest.mark.parametrize("kind,needle", [
    ("no_plan", "no plan.json"), ("plan_not_json", "plan.json"),
    ("string_widths", "list of ints"), ("graph_not_object", "\"graph\" must be an object"),
    ("weights_garbage", "weights"), ("weights_other_plan", "do not match"),
    ("no_weights", "no weights")])
def test_a_corrupt_pruned_model_folder_is_named(case, ws, tmp_path, kind, needle):
    root = tmp_path / "pr"
    shutil.copytree(ws / "pr" / "model", root)
    pr = root
    doc = json.loads((pr / "plan.json").read_text())
    if kind == "no_plan":
        (pr / "plan.json").unlink()
    elif kind == "plan_not_json":
        (pr / "plan.json").write_text("{\"format\": ")
    elif kind == "string_widths":
        doc["keep"][next(iter(doc["keep"]))] = ["a", "b"]
        (pr / "plan.json").write_text(json.dumps(doc))
    elif kind == "graph_not_object":
        doc["graph"] = 5
        (pr / "plan.json").write_text(json.dumps(doc))
    elif kind == "weights_garbage":
        (pr / "weights.safetensors").write_bytes(os.urandom(100))
    elif kind == "weights_other_plan":
        from safetensors.torch import save_file
        save_file({"conv1.weight": torch.zeros(3, 3, 3, 3)}, str(pr / "weights.safetensors"))
    else:
        (pr / "weights.safetensors").unlink()
    msg = case(["eval", "--model", "resnet20", "--pruned", pr, "--data", ws / "data"], needle,
               inputs=(pr,))
    assert str(pr) in msg


@pytest.mark.parametrize("kind,needle", [
    ("garbage", "corrupt or not a PyTorch file"), ("other_arch", "saved by another model"),
    ("not_a_training_checkpoint", "not a prunekit training checkpoint"),
    ("config_corrupt", "cannot read")])
def test_a_corrupt_run_to_resume_is_named(case, ws, tmp_path, kind, needle):
    run = tmp_path / "run"
    shutil.copytree(ws / "run", run)
    ck = run / "checkpoint.pt"
    if kind == "garbage":
        ck.write_bytes(os.urandom(1000))
    elif kind == "other_arch":
        state = torch.load(ck, weights_only=True)
        state["model"] = create("resnet32").state_dict()
        torch.save(state, ck)
    elif kind == "not_a_training_checkpoint":
        torch.save(create("resnet20").state_dict(), ck)
    else:
        (run / "config.json").write_text("{oops")
    msg = case(["train", "--model", "resnet20", "--data", ws / "data", "--out", run, "--epochs",
                "4", "--resume", *TINY], needle, inputs=(run,))
    assert str(run) in msg


def test_a_corrupt_search_state_to_resume_is_named(case, ws, tmp_path):
    out = tmp_path / "o"
    work = tmp_path / ".o.emo-work"
    argv = ["prune", "--method", "emo", "--model", "resnet20", "--checkpoint", ws / "r20.pt",
            "--data", ws / "data", "--out", out, "--set", "pop_size=4", "--set",
            "generations=1", "--set", "chain_points=2", "--set", "parts=1", "--calib", "8"]
    # a run whose budget cannot be met after the search keeps the search for --resume, and
    # says so (every group keeps at least 16 channels: 1% of the MACs is out of reach)
    argv += ["--target", "0.01", "--set", "min_width=16"]
    case(argv, "unreachable", kept=str(work))
    (work / "checkpoint" / "state.json").write_text("[1, 2")
    case([*argv, "--resume"], "state.json", inputs=(work,))


# ------------------------------------------------------------------ 3. writes that collide
def test_export_never_writes_onto_its_input(case, ws):
    case(["export", "--model", "resnet20", "--checkpoint", ws / "r20.pt", "--out",
          ws / "r20.pt", "--overwrite"], "is an input")


@pytest.mark.parametrize("cmd", ["train", "average", "prune", "reweight", "space", "finetune",
                                 "export", "compress"])
def test_an_existing_output_is_kept_without_overwrite(case, ws, tmp_path, cmd):
    out = tmp_path / ("o.onnx" if cmd == "export" else "o")
    if cmd == "export":
        out.write_bytes(b"an older export")
    else:
        out.mkdir()
        (out / "results.txt").write_text("keep me")
    case(_base(cmd, ws, out), "--overwrite", inputs=(out,))


@pytest.mark.parametrize("cmd,extra,needle", [
    ("reweight", [], "holds an input"), ("prune", ["--overwrite"], "holds an input"),
    ("prune", ["--method", "emo", "--resume", "--overwrite"], "give one of them"),
    ("prune", ["--resume"], "resume is not used by method oneshot"),
    ("train", ["--overwrite", "--resume"], "give one of them")])
def test_an_output_that_is_or_holds_an_input_is_refused(case, ws, tmp_path, cmd, extra, needle):
    if cmd == "reweight":
        argv = [*_base(cmd, ws, ws / "pr" / "model"), "--overwrite"]
    else:
        argv = [*_base(cmd, ws, ws if cmd == "prune" else tmp_path / "o"), *extra]
    case(argv, needle)


def test_an_output_under_a_file_is_refused(case, ws, tmp_path):
    (tmp_path / "f").write_text("x")
    case(_base("prune", ws, tmp_path / "f" / "o"), "is a file, not a folder")


@pytest.mark.parametrize("cmd", ["train", "average", "prune", "reweight", "space", "finetune",
                                 "export", "compress"])
def test_a_second_run_on_the_same_output_is_refused(case, ws, tmp_path, cmd):
    out = tmp_path / ("o.onnx" if cmd == "export" else "o")
    with outputs.OutputLock(out):
        lock = tmp_path / f".{out.name}.lock"
        msg = case(_base(cmd, ws, out), f"in use by pid {os.getpid()}", inputs=(lock,))
    assert str(out) in msg and not lock.exists()


def test_overwrite_replaces_only_a_complete_output(case, ws, tmp_path, monkeypatch):
    out = tmp_path / "o"
    out.mkdir()
    (out / "results.txt").write_text("the earlier run")
    monkeypatch.setattr(outputs, "_write_all", _full_after(20_000))
    case([*_base("prune", ws, out), "--overwrite"], "no space left on device",
         inputs=(out,))
    monkeypatch.undo()
    case.capsys.readouterr()
    assert main([str(a) for a in _base("prune", ws, out)] + ["--overwrite"]) == 0
    assert (out / "plan.json").is_file() and not (out / "results.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["o"]


# ------------------------------------------------------------------ 4. faults of the machine
def _full_after(budget: int):
    """A ``_write_all`` whose disk fills after ``budget`` bytes in all."""
    left = [budget]

    def write(f, data: bytes) -> None:
        if len(data) > left[0]:
            f.write(data[: left[0]])
            left[0] = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        left[0] -= len(data)
        f.write(data)
    return write


@pytest.mark.parametrize("cmd,budget", [
    ("prune", 0), ("prune", 20_000), ("prune", 150_000), ("train", 0), ("train", 50_000),
    ("average", 100), ("reweight", 2_000), ("finetune", 1_000), ("export", 0),
    ("space", 0), ("compress", 0)])
def test_a_full_disk_is_one_line_and_leaves_nothing(case, ws, tmp_path, monkeypatch, cmd,
                                                    budget):
    monkeypatch.setattr(outputs, "_write_all", _full_after(budget))
    out = tmp_path / ("o.onnx" if cmd == "export" else "o")
    extra = {"train": ["--epochs", "2", *TINY], "finetune": ["--epochs", "1", *TINY],
             "space": ["--samples", "8", "--set", "steps=1", "--set", "held=10",
                       "--set", "pool=20"]}.get(cmd, [])
    case([*_base(cmd, ws, out), *extra], "no space left on device while writing")


def test_a_full_disk_never_damages_a_completed_checkpoint(case, ws, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(ws / "run", run)
    monkeypatch.setattr(outputs, "_write_all", _full_after(10))
    msg = case(["train", "--model", "resnet20", "--data", ws / "data", "--out", run,
                "--epochs", "4", "--resume", *TINY], "no space left", inputs=(run,),
               kept=str(run))
    assert f"no space left on device while writing {run}" in msg
    torch.load(run / "checkpoint.pt", weights_only=True)   # still the complete epoch 3


def test_an_unwritable_cache_is_skipped_with_a_warning(case, ws, tmp_path):
    case.cache = tmp_path / "cache-is-a-file"
    case.cache.write_text("not a folder")
    case(["eval", "--model", "resnet20", "--checkpoint", ws / "r20.pt", "--data", ws / "jpeg"],
         "not caching the decoded images", rc=0)


def _can_mount() -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"prunekit-mount-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                        capture_output=True).returncode == 0
    if ok:
        subprocess.run(["umount", str(probe)], check=True)
    probe.rmdir()
    return ok


MOUNT = pytest.mark.skipif(not _can_mount(), reason="this process cannot mount a tmpfs "
                           "(needs root and mount permission)")


@contextlib.contextmanager
def _tmpfs(where: Path, size: str, read_only: bool = False):
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                   check=True)
    try:
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)
        where.rmdir()


@MOUNT
@pytest.mark.parametrize("cmd", ["prune", "train", "export", "average"])
def test_a_really_full_disk(case, ws, tmp_path, cmd):
    with _tmpfs(tmp_path / "disk", "256k") as disk:
        (disk / "filler").write_bytes(b"\0" * (200 * 1024))
        out = disk / ("o.onnx" if cmd == "export" else "o")
        extra = ["--epochs", "1", *TINY] if cmd == "train" else []
        case([*_base(cmd, ws, out), *extra], "no space left on device while writing")
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]


@MOUNT
def test_a_really_full_disk_under_the_cache(case, ws, tmp_path):
    with _tmpfs(tmp_path / "disk", "64k") as disk:
        case.cache = disk / "cache"
        case(["eval", "--model", "resnet20", "--checkpoint", ws / "r20.pt", "--data",
              ws / "jpeg"], "not caching the decoded images", rc=0)
        assert list(disk.rglob("*.npy")) == [] and not any(disk.rglob("*.tmp"))


@MOUNT
@pytest.mark.parametrize("cmd", ["prune", "train", "export", "finetune"])
def test_a_read_only_target(case, ws, tmp_path, cmd):
    with _tmpfs(tmp_path / "ro", "64k", read_only=True) as ro:
        out = ro / ("o.onnx" if cmd == "export" else "o")
        msg = case(_base(cmd, ws, out), str(out))
        assert "read-only" in msg or "not writable" in msg


def test_an_unwritable_folder(ws, tmp_path):
    """As a user without write permission. Root is never denied, so as root the command
    runs in a forked child that has given up root for 'nobody'."""
    import tempfile
    base = Path(tempfile.mkdtemp(prefix="prunekit-unwritable-"))  # one 'nobody' can enter
    base.chmod(0o755)
    folder = base / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    out = folder / "o"
    argv = [str(a) for a in _base("prune", ws, out)]
    if os.geteuid() != 0 and os.access(folder, os.W_OK):
        pytest.skip("this user can write a 0555 folder")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:    # the child: nobody, stderr into the pipe; never returns to pytest
        code = 70
        try:
            os.close(read)
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            sys.stderr = os.fdopen(write, "w")
            code = main(argv)
            sys.stderr.flush()
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as f:
        err = [ln for ln in f.read().splitlines() if ln.strip()]
    _, status = os.waitpid(pid, 0)
    left = list(folder.iterdir())
    shutil.rmtree(base)
    assert os.WEXITSTATUS(status) == 2, err
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert str(out) in err[0] and "permission denied" in err[0], err
    assert left == []


# ------------------------------------------------------------------ 5. signals, by stage
def _killer(sig: int, after: int = 0):
    """A function wrapper that sends ``sig`` to this process on call number ``after``."""
    def wrap(fn):
        calls = [0]

        def run(*a, **k):
            calls[0] += 1
            if calls[0] > after:
                os.kill(os.getpid(), sig)
                time.sleep(1)       # the handler raises here
            return fn(*a, **k)
        return run
    return wrap


STAGES = {   # (command, extra arguments, module, function, after) -> kept for --resume?
    "data": ("prune", ["--data", "DATA"], "prunekit.data", "load_cifar10", 0),
    "selection": ("prune", [], "prunekit.methods.oneshot", "prune_oneshot", 0),
    "finetune": ("prune", ["--data", "DATA", "--finetune-epochs", "2", *TINY],
                 "prunekit.train.engine", "_epoch", 1),
    "save": ("prune", [], "prunekit.outputs", "write_bytes", 2),
    "train-first-epoch": ("train", ["--epochs", "3", *TINY], "prunekit.train.engine",
                          "_epoch", 0),
    "train-later-epoch": ("train", ["--epochs", "3", *TINY], "prunekit.train.engine",
                          "_epoch", 1),
    "export": ("export", [], "prunekit.io", "export_onnx", 0),
    "average": ("average", [], "prunekit.outputs", "save_torch", 0),
    "emo-search": ("prune", ["--method", "emo", "--data", "DATA", "--calib", "8", "--set",
                             "pop_size=4", "--set", "generations=1", "--set", "parts=1",
                             "--set", "chain_points=2"],
                   "prunekit.methods.emo", "EmoSearch.run", 0),
    "compress-recovery": ("compress", ["--epochs", "2"], "prunekit.train.engine", "_epoch", 1),
}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_signal_at_any_stage_leaves_nothing_partial(case, ws, tmp_path, monkeypatch, stage,
                                                      sig):
    import importlib
    cmd, extra, module, name, after = STAGES[stage]
    owner = importlib.import_module(module)
    attr = name
    if "." in name:
        cls, attr = name.split(".")
        owner = getattr(owner, cls)
    monkeypatch.setattr(owner, attr, _killer(sig, after)(getattr(owner, attr)))
    out = tmp_path / ("o.onnx" if cmd == "export" else "o")
    argv = [*_base(cmd, ws, out), *[ws / "data" if a == "DATA" else a for a in extra]]
    kept = {"train-later-epoch": str(out),     # what holds the work --resume continues
            "compress-recovery": str(out.parent / f".{out.name}.compress-work")}.get(stage)
    case(argv, "interrupted" if sig == signal.SIGINT else "terminated by SIGTERM",
         rc=130 if sig == signal.SIGINT else 143, kept=kept)


# ------------------------------------------------------------------ 6. real processes
def _cli(*argv, **kw) -> subprocess.Popen:
    env = {**os.environ, "PRUNEKIT_THREADS": "1", **kw.pop("env", {})}
    return subprocess.Popen([sys.executable, "-m", "prunekit.cli", *map(str, argv)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_sigterm_to_a_real_training_process_keeps_its_resumable_run(ws, tmp_path):
    out = tmp_path / "run"
    proc = _cli("train", "--model", "resnet20", "--data", ws / "data", "--out", out,
                "--epochs", "500", *TINY, env={"PRUNEKIT_CACHE": str(tmp_path / "c")})
    deadline = time.time() + 240
    while not (out / "checkpoint.pt").is_file() and time.time() < deadline \
            and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    err = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 143, err
    assert len(err) == 1 and "terminated by SIGTERM" in err[0] and "--resume" in err[0], err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]
    assert main(["train", "--model", "resnet20", "--data", str(ws / "data"), "--out", str(out),
                 "--epochs", "2", "--resume", *TINY]) == 0


def test_two_runs_on_one_output_at_once(ws, tmp_path):
    out = tmp_path / "o"
    argv = ["prune", "--model", "resnet20", "--checkpoint", ws / "r20.pt", "--out", out]
    procs = [_cli(*argv), _cli(*argv)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    err = [e for rc, e in results if rc == 2][0].strip().splitlines()
    assert len(err) == 1 and ("in use by pid" in err[0] or "exists" in err[0]), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]
    assert (out / "plan.json").is_file()
