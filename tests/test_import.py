"""``import prunekit`` stays light: it imports none of the optional heavy packages
(beyond whatever torch itself imports)."""

import subprocess
import sys

HEAVY = ("torchvision", "onnx", "onnxruntime", "matplotlib", "pymoo", "ray", "torch_pruning",
         "safetensors", "yaml", "tqdm", "PIL")


def test_import_is_light():
    code = ("import sys, torch; before = set(sys.modules); "
            "import prunekit, prunekit.methods, prunekit.io, prunekit.models, prunekit.data, "
            "prunekit.train, prunekit.importance; "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules and m not in before))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_progress_bars_work_without_tqdm(monkeypatch):
    """tqdm is an optional extra: without it a bar iterates, updates and closes silently."""
    import builtins

    from prunekit import progress
    real = builtins.__import__

    def no_tqdm(name, *a, **k):
        if name.startswith("tqdm"):
            raise ImportError("no tqdm")
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    monkeypatch.setenv("PRUNEKIT_PROGRESS", "1")
    with progress.bar(total=3) as b:
        b.update(1)
        b.set_postfix(loss=1.0)
    assert list(progress.bar([1, 2, 3])) == [1, 2, 3]
