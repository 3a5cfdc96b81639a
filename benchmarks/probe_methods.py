"""Every registered method on models nobody tuned it for: timm names given on the command
line (random weights, 10 classes, 64 px where the model allows, else its own size),
through the conformance checks that read a run (runs, plan_equivalent, target_met,
output_ok) at the methods' tiny test settings, at half the MACs or, where frozen groups
make that unreachable, 0.05 above the closest reachable value. One line per (model,
method): ok, the refusal, or the failed check.

    .venv/bin/python benchmarks/probe_methods.py $(python -c 'import timm, random;
        print(" ".join(random.sample(timm.list_models(), 6)))')
"""
import sys
import time
import warnings

import timm
import torch

from prunekit import ChannelGraph
from prunekit.errors import PrunekitError
from prunekit.methods.allocate import Budget
from prunekit.methods.projector import Projector
from prunekit.methods import methods
from prunekit.testing import Architecture, Case
from prunekit.testing.checks import CHECKS, Refused

CHECKED = ("runs", "plan_equivalent", "target_met", "output_ok")


def timm_arch(name: str) -> Architecture:
    for kw in (dict(img_size=64, depth=2), dict(img_size=64), {}):
        try:
            m = timm.create_model(name, pretrained=False, num_classes=10, **kw).eval()
            size = kw.get("img_size", m.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
            with torch.no_grad():
                m(torch.randn(1, 3, size, size))
            return Architecture(f"timm:{name}", lambda kw=kw: timm.create_model(
                name, pretrained=False, num_classes=10, **kw), (3, size, size))
        except Exception:
            continue
    raise RuntimeError(f"timm cannot create {name} at any size tried")


def reachable(arch: Architecture) -> float:
    """0.5, or 0.05 above the smallest MACs fraction the model's prunable groups reach."""
    graph = ChannelGraph.build(arch.model(), arch.example())
    floor = Projector(graph, Budget(0.5)).floor()
    return 0.5 if floor <= 0.45 else round(min(0.95, floor + 0.05), 2)


def main() -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(int(torch.get_num_threads()))
    for name in sys.argv[1:]:
        try:
            arch = timm_arch(name)
        except RuntimeError as exc:
            print(f"{name:40s} skipped: {exc}", flush=True)
            continue
        target = reachable(arch)
        for method in sorted(methods()):
            t = time.perf_counter()
            case, verdict = Case(method, arch, target), "ok"
            try:
                for check in CHECKED:
                    CHECKS[check](case)
            except Refused as exc:
                verdict = f"refused: {str(exc)[:150]}"
            except (AssertionError, PrunekitError, RuntimeError) as exc:
                verdict = f"FAILED {check}: {type(exc).__name__}: {str(exc)[:200]}"
            print(f"{arch.name:40s} {method:11s} target {target:.2f} "
                  f"{time.perf_counter() - t:6.1f}s {verdict}", flush=True)


if __name__ == "__main__":
    main()
