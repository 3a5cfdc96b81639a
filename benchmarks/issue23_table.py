"""Issue 23's table re-run through the public protocol: torchvision mobilenet_v2 and
resnet18, timm convnext_atto and vit_tiny (random weights, 64x64 inputs, 10 classes),
the registered methods given (default: all) at their tiny test settings
(``test_config``), target 0.5 of the MACs. One markdown row per (model, method): the
MACs kept and the front's cost ratios (EMO-DIR, pruning spaces).

    PRUNEKIT_THREADS=1 .venv/bin/python benchmarks/issue23_table.py [--methods emo ...]
"""
import argparse
import time
import warnings

import timm
import torchvision

from prunekit.errors import PrunekitError
from prunekit.methods import get_method, methods, prune
from prunekit.testing import Architecture

MODELS = {
    "torchvision mobilenet_v2": lambda: torchvision.models.mobilenet_v2(num_classes=10),
    "timm convnext_atto": lambda: timm.create_model("convnext_atto", num_classes=10),
    "timm vit_tiny": lambda: timm.create_model("vit_tiny_patch16_224", img_size=64,
                                               num_classes=10),
    "torchvision resnet18": lambda: torchvision.models.resnet18(num_classes=10),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=sorted(methods()))
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    print("| model | method | MACs kept | front (cost ratios) | seconds |")
    print("|---|---|---|---|---|")
    for name in args.models:
        arch = Architecture(name, MODELS[name], (3, 64, 64))
        for method in args.methods:
            t = time.perf_counter()
            try:
                r = prune(arch.model(), get_method(method).test_config(target=0.5),
                          arch.context())
                kept = f"{r.after.macs / r.before.macs:.3f}"
                front = ", ".join(f"{p.cost_ratio:.2f}" for p in r.front[:8]) + \
                    (" ..." if len(r.front) > 8 else "")
            except PrunekitError as exc:
                kept, front = f"refused: {exc}", ""
            print(f"| {name} | {method} | {kept} | {front} | {time.perf_counter() - t:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
