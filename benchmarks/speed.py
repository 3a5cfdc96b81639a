"""Pruning speed: graph build + plan + apply, prunekit and Torch-Pruning side by side.

Models: CIFAR ResNet-56/110/254/524 (option-B shortcuts, which both tools handle;
prunekit also on option A) and torchvision ResNet-50 (224x224). Each tool prunes
with L1 magnitude, the same fraction of every layer:

- prunekit: ``ChannelGraph.build`` + ``prune_oneshot(target=0.25 of MACs,
  allocation="uniform", inplace=True)`` (the removal fraction is found by bisection
  on the analytic cost, 24 cost evaluations, then ``apply`` edits the model in place,
  as Torch-Pruning does; the default ``inplace=False`` adds a deep copy);
  prunekit is timed twice: with apply's verification (the default) and with
  ``verify=False`` (what search loops use; the engine's work alone);
- Torch-Pruning: ``MetaPruner(MagnitudeImportance(p=1), pruning_ratio=0.5)`` +
  ``step()`` (a fixed channel ratio, which is about 0.25 of the MACs).

Reported: median wall time of ``--repeats`` runs in one process, 2 threads, with a
garbage collection before each timed run (single runs of the deep networks varied 2x
with the collector's timing). The previous engine is timed with this same script:
``PYTHONPATH=<checkout of c7c4381>/src python benchmarks/speed.py --out ...``.

    python benchmarks/speed.py --out benchmarks/results/speed.json
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torchvision
from torch import nn

from prunekit import ChannelGraph
from prunekit.methods import OneShotConfig, prune_oneshot
from prunekit.models import CifarResNet


def ours(model: nn.Module, x: torch.Tensor, verify: bool = True) -> float:
    """In place, like Torch-Pruning (the caller passes a fresh copy). ``verify``: apply's
    check of the pruned model against the masked reference (the default; two forward
    passes on the example input), which Torch-Pruning does not do."""
    extra = {} if verify else {"verify": False}   # the engine before c7c4381 has no option
    gc.collect()
    t = time.perf_counter()
    graph = ChannelGraph.build(model, x)
    prune_oneshot(model, x, OneShotConfig(target=0.25, allocation="uniform"), graph=graph,
                  inplace=True, **extra)
    return time.perf_counter() - t


def theirs(model: nn.Module, x: torch.Tensor, classifier: nn.Module) -> float:
    import torch_pruning as tp
    gc.collect()
    t = time.perf_counter()
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=0.5, ignored_layers=[classifier])
    pruner.step()
    return time.perf_counter() - t


def cases() -> list[tuple[str, callable, torch.Tensor, str]]:
    out = []
    for depth in (56, 110, 254, 524):
        out.append((f"cifar_resnet{depth}_optB", lambda d=depth: CifarResNet(d, option="B"),
                    torch.randn(1, 3, 32, 32), "linear"))
    out.append(("cifar_resnet56_optA", lambda: CifarResNet(56, option="A"),
                torch.randn(1, 3, 32, 32), "linear"))
    out.append(("cifar_resnet524_optA", lambda: CifarResNet(524, option="A"),
                torch.randn(1, 3, 32, 32), "linear"))
    out.append(("torchvision_resnet50", lambda: torchvision.models.resnet50(),
                torch.randn(1, 3, 224, 224), "fc"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/speed.json")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    warm = CifarResNet(20, option="B").eval()  # one untimed run of each tool: imports, kernels
    ours(copy.deepcopy(warm), torch.randn(1, 3, 32, 32))
    twin = copy.deepcopy(warm)
    theirs(twin, torch.randn(1, 3, 32, 32), twin.linear)
    for name, make, x, cls_name in cases():
        model = make().eval()
        reps = args.repeats
        t_ours = [ours(copy.deepcopy(model), x) for _ in range(reps)]
        row = {"model": name, "repeats": reps, "ours_s": statistics.median(t_ours)}
        try:
            t_fast = [ours(copy.deepcopy(model), x, verify=False) for _ in range(reps)]
            row["ours_unverified_s"] = statistics.median(t_fast)
        except TypeError:   # an engine without apply-time verification
            pass
        if name.endswith("optB") or name.startswith("torchvision"):
            t_tp = []
            for _ in range(reps):
                work = copy.deepcopy(model)
                t_tp.append(theirs(work, x, work.get_submodule(cls_name)))
            row["torch_pruning_s"] = statistics.median(t_tp)
            row["ratio_ours_over_tp"] = row["ours_s"] / row["torch_pruning_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    doc = {"machine": f"{platform.processor() or platform.machine()}, "
                      f"{torch.get_num_threads()} threads",
           "torch": torch.__version__, "repeats": args.repeats, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
