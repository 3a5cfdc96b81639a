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
