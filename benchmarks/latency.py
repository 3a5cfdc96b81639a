"""Real speed-up: CPU latency of ResNet-56 pruned to 1/2 and 1/4 of its MACs.

Side by side in one process (batch 64, 2 threads, contiguous NCHW, inference mode,
5 warm-up runs, then ``--runs`` timed runs interleaved round-robin across models,
median reported):

- dense ResNet-56 (option A, the shared checkpoints' architecture);
- prunekit, one-shot L1 (uniform allocation) to 1/2 and 1/4 of the MACs, with
  kept widths free (round_to=1) and rounded to multiples of 8 (round_to=8);
- prunekit, plans that give exactly the widths of two hand-built dense networks
  (all block-inner widths halved: ~1/2 MACs; every width halved: ~1/4 MACs), and
  those hand-built networks themselves, so any overhead of the pruned model over a
  network written by hand at the same widths shows up directly;
- Torch-Pruning 1.6.1, L1, with its pruning ratio bisected to the same MACs. It
  cannot prune the option-A shortcut's channels (its result crashes), so at 1/2 it
  prunes block-inner convs of option A only, and at 1/4 it prunes an option-B
  ResNet-56 (1x1 conv shortcuts), whose dense latency is reported too.

    python benchmarks/latency.py --out benchmarks/results/latency.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from prunekit import ChannelGraph
from prunekit.conformance import measured_cost
from prunekit.methods import OneShotConfig, prune_oneshot
from prunekit.models import CifarResNet


def exact_width_plan(graph: ChannelGraph, halve_stream: bool):
    """Keep the first half of every block-inner group, and of every stream source if asked."""
    keep = {}
    for g in graph.prunable_groups:
        if g.id.endswith(".conv1") and g.id.startswith("layer"):
            keep[g.id] = list(range(g.width // 2))
        elif halve_stream and g.id == "conv1":
            mask = {}
            for src in graph.producers():
                units = src.units
                if src.kind in ("conv", "pad") and set(units.tolist()) <= set(g.units.tolist()):
                    local = {int(u): i for i, u in enumerate(g.units.tolist())}
                    if src.name == "conv1" or src.kind == "pad":
                        for u in units[: len(units) // 2]:
                            mask[local[int(u)]] = True
            keep[g.id] = sorted(mask)
    return graph.make_plan(keep, {"method": "exact-width"})


def tp_prune(model: nn.Module, x: torch.Tensor, target: float, ignore_stream: bool,
             round_to: int | None = None) -> nn.Module:
    import torch_pruning as tp
    from prunekit.methods.projector import bisect
    base = measured_cost(model, (x,))[1]
    made, closest = {}, [2.0, None]

    def fits(ratio: float) -> bool:        # Torch-Pruning at this ratio meets the target
        work = made[ratio] = copy.deepcopy(model)
        ignored = [work.linear]
        if ignore_stream:
            ignored += [work.conv1] + [m for n, m in work.named_modules() if n.endswith("conv2")]
        tp.pruner.MetaPruner(work, x, importance=tp.importance.MagnitudeImportance(p=1),
                             pruning_ratio=ratio, ignored_layers=ignored,
                             round_to=round_to).step()
        frac = measured_cost(work, (x,))[1] / base
        if frac < closest[0]:
            closest[:] = [frac, work]
        return frac <= target
    ratio = bisect(fits, 0.0, 0.95, steps=12)      # the shared bisection (methods.projector)
    if ratio in made and measured_cost(made[ratio], (x,))[1] / base <= target:
        return made[ratio]
    return closest[1]  # target unreachable: the nearest


def latencies(models: dict[str, nn.Module], x: torch.Tensor, runs: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for m in models.values():
            for _ in range(5):
                m(x)
        for _ in range(runs):
            for k, m in models.items():
                t = time.perf_counter()
                m(x)
                times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/latency.json")
    ap.add_argument("--runs", type=int, default=25)
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    probe = torch.randn(1, 3, 32, 32)
    dense = CifarResNet(56).eval()
    dense_b = CifarResNet(56, option="B").eval()
    graph = ChannelGraph.build(dense, probe)
    models = {"dense (option A)": dense, "dense (option B)": dense_b}
    for t in (0.5, 0.25):
        for r in (1, 8):
            res = prune_oneshot(dense, probe, OneShotConfig(target=t, allocation="uniform",
                                                            round_to=r), graph=graph)
            models[f"prunekit L1 uniform {t} round_to={r}"] = res.model.eval()
    models["prunekit exact: inner widths halved"] = graph.apply(
        dense, exact_width_plan(graph, False)).eval()
    models["hand-built: inner widths halved"] = CifarResNet(56, inner_ratio=0.5).eval()
    models["prunekit exact: all widths halved"] = graph.apply(
        dense, exact_width_plan(graph, True)).eval()
    models["hand-built: all widths halved"] = CifarResNet(56, widths=(8, 16, 32),
                                                         inner_ratio=1.0).eval()
    for r in (None, 8):
        models[f"torch-pruning L1 0.5 (option A, inner only) round_to={r or 1}"] = tp_prune(
            dense, probe, 0.5, True, r)
        models[f"torch-pruning L1 0.25 (option B) round_to={r or 1}"] = tp_prune(
            dense_b, probe, 0.25, False, r)
    x = torch.randn(64, 3, 32, 32)
    lat = latencies(models, x, args.runs)
    base = {"A": measured_cost(dense, (probe,))[1], "B": measured_cost(dense_b, (probe,))[1]}
    rows = []
    for k, m in models.items():
        ref = "B" if "option B" in k else "A"
        macs = measured_cost(m, (probe,))[1]
        dense_lat = lat["dense (option B)" if ref == "B" else "dense (option A)"]
        rows.append({"model": k, "macs_fraction": macs / base[ref],
                     "mac_reduction": base[ref] / macs, "latency_ms": 1000 * lat[k],
                     "speedup": dense_lat / lat[k],
                     "speedup_over_mac_reduction": (dense_lat / lat[k]) / (base[ref] / macs)})
        print(json.dumps(rows[-1]), flush=True)
    doc = {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
           "torch": torch.__version__, "batch": 64, "runs": args.runs, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
