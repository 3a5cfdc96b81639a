"""Latency-aware pruning (issue 24): ask for 1/2 and 1/3 of the measured latency and get it.

Per model and backend (eager PyTorch, ONNX Runtime; CPU), one process, random weights
(speed does not depend on them): the latency model is built (per-layer tables, cached)
and calibrated, then at each latency target:

- **ours**: one-shot L1, ``metric="latency"``, ``allocation="marginal"`` (greedy
  importance per second saved), staircase rounding, the target met as measured
  (``meet_measured``: each measured plan refines the latency model, then a re-run at a
  corrected target, at most 4 runs; every target starts from the calibrated model);
- **macs**: the same method asked for the same fraction of the *MACs* (global
  allocation): what a user gets who takes MACs for time;
- **torch-pruning**: Torch-Pruning 1.6.1 L1, ``round_to=8``, its ratio bisected to ours'
  MACs (speed at equal MACs); not for the ViT (its attention needs per-model setup). On
  option-A ResNet-56 it prunes the block-inner convs only (its result crashes otherwise)
  and cannot reach ours' MACs, so ``resnet56-B`` (1x1-conv shortcuts) is run as well.

Every plan's latency is measured on the target relative to the dense model's (the
median of three alternating measurements of each, each the median of ``--reps`` runs
after warm-up) and predicted by the model: for ours, by the model the plan was made
with, before the plan was measured, and by the calibrated model alone; for the
MACs-targeted plan, by the calibrated model. Rows are saved as they finish; a re-run skips
them (``--fresh`` starts over). ``--report`` renders the markdown.

    python benchmarks/latency_aware.py --out benchmarks/results/latency_aware.json
    python benchmarks/latency_aware.py --report benchmarks/results/latency_aware.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common import invocation
from prunekit import ChannelGraph
from prunekit.conformance import measured_cost
from prunekit.latency import LatencyModel, Target, meet_measured, measured_ratio, time_model
from prunekit.methods import OneShotConfig, prune_oneshot
from prunekit.outputs import write_text

MODELS = {   # name: (builder, input size, batch)
    "resnet56": (lambda: __import__("prunekit.models", fromlist=["x"]).CifarResNet(56),
                 (3, 32, 32), 64),
    "resnet56-B": (lambda: __import__("prunekit.models", fromlist=["x"]).CifarResNet(
        56, option="B"), (3, 32, 32), 64),
    "tv:resnet50": (lambda: __import__("torchvision").models.resnet50(), (3, 224, 224), 8),
    "tv:mobilenet_v2": (lambda: __import__("torchvision").models.mobilenet_v2(),
                        (3, 224, 224), 8),
    "timm:vit_small_patch16_224": (
        lambda: __import__("timm").create_model("vit_small_patch16_224", pretrained=False),
        (3, 224, 224), 8),
}


def tp_at_macs(model: nn.Module, x: torch.Tensor, frac: float,
               round_to: int = 8) -> nn.Module | None:
    """Torch-Pruning L1 (``round_to``), at ``frac`` of the MACs (option-A ResNets: block-inner
    convs only, it cannot prune their shortcuts). Its ratio is scanned on a grid first: with
    round_to=8 it leaves a network whole above some ratio, so MACs are not monotone in
    it. The first grid ratio at or below ``frac`` is then bisected against the one
    before it. None: no ratio reaches ``frac``."""
    import torch_pruning as tp
    from prunekit.models.cifar_resnet import PadShortcut
    base = measured_cost(model, (x,))[1]
    option_a = any(isinstance(m, PadShortcut) for m in model.modules())

    def pruned(ratio: float) -> tuple[nn.Module, float]:
        work = copy.deepcopy(model)
        last = [m for m in work.modules() if isinstance(m, nn.Linear)][-1:]
        ignored = last + ([m for n, m in work.named_modules() if isinstance(m, nn.Conv2d)
                           and not n.endswith("conv1") or n == "conv1"] if option_a else [])
        tp.pruner.MetaPruner(work, x, importance=tp.importance.MagnitudeImportance(p=1),
                             pruning_ratio=ratio, ignored_layers=ignored,
                             round_to=round_to).step()
        return work, measured_cost(work, (x,))[1] / base
    grid = [r / 20 for r in range(0, 20)]
    hit = next((i for i, r in enumerate(grid[1:], 1) if pruned(r)[1] <= frac), None)
    if hit is None:
        return None
    lo, hi = grid[hit - 1], grid[hit]
    best = pruned(hi)
    for _ in range(6):
        mid = (lo + hi) / 2
        work, got = pruned(mid)
        if got <= frac:
            hi, best = mid, (work, got)
        else:
            lo = mid
    return best[0]


def row_for(calibrated: LatencyModel, model: nn.Module, x: torch.Tensor,
            target: float) -> dict:
    lm = copy.copy(calibrated)      # each target starts from the calibrated model
    g = lm.graph
    dense = time_model(lm.timer, g, model, lm.target.batch)
    base_macs = g.cost().macs
    out = {"target": target, "requested": 1 / target, "dense_ms": 1e3 * dense}
    ours, rounds = meet_measured(
        lm, model, lambda c: prune_oneshot(model, x, c, latency=lm),
        OneShotConfig(target=target, metric="latency", allocation="marginal"))
    out["rounds"] = rounds
    macs = prune_oneshot(model, x, OneShotConfig(target=target, metric="macs"), graph=g)
    chosen = next(r for r in rounds if r.get("chosen"))
    for name, res in (("ours", ours), ("macs", macs)):
        keep = g.keep_mask(res.plan)
        r = measured_ratio(lm, model, res.model)
        calib = calibrated.predict() / calibrated.predict(keep)
        out[name] = {"macs": res.after.macs / base_macs, "measured": 1 / r,
                     "predicted": 1 / chosen["predicted"] if name == "ours" else calib,
                     "predicted_calibrated": calib, "ms": 1e3 * dense * r}
    if not type(model).__name__.startswith("VisionTransformer"):
        tp_model = tp_at_macs(model, x, out["ours"]["macs"])
        if tp_model is None:
            out["torch-pruning"] = {"error": "cannot reach ours' MACs"}
        else:
            r = measured_ratio(lm, model, tp_model)
            out["torch-pruning"] = {"macs": measured_cost(tp_model, (x,))[1] /
                                    measured_cost(model, (x,))[1], "measured": 1 / r,
                                    "ms": 1e3 * dense * r}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--backends", nargs="+", default=["torch", "onnxruntime"])
    ap.add_argument("--targets", nargs="+", type=float, default=[0.5, 1 / 3])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out", default="benchmarks/results/latency_aware.json")
    ap.add_argument("--md", default="benchmarks/latency_aware.md")
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--report", metavar="JSON")
    args = ap.parse_args()
    if args.report:
        write_text(Path(args.md), render(json.loads(Path(args.report).read_text())))
        return
    torch.manual_seed(0)
    path = Path(args.out)
    doc = {} if args.fresh or not path.is_file() else json.loads(path.read_text())
    doc.update(machine=f"{platform.machine()}, {platform.processor() or 'cpu'}",
               torch=torch.__version__, command=invocation(), threads=args.threads)
    rows = doc.setdefault("rows", [])
    done = {(r["model"], r["backend"], round(r["target"], 4)) for r in rows}
    for name in args.models:
        build, shape, batch = MODELS[name]
        model = build().eval()
        x = torch.randn(1, *shape)
        graph = ChannelGraph.build(model, x)
        for backend in args.backends:
            todo = [t for t in args.targets if (name, backend, round(t, 4)) not in done]
            if not todo:
                continue
            t0 = time.perf_counter()
            lm = LatencyModel(graph, Target(backend=backend, batch=batch, threads=args.threads,
                                            reps=args.reps))
            lm.measure_tables(progress=True)
            lm.calibrate(model)
            built = time.perf_counter() - t0
            for t in todo:
                try:
                    row = row_for(lm, model, x, t)
                except Exception as exc:     # an unreachable target, an export failure
                    row = {"target": t, "error": f"{type(exc).__name__}: {exc}"}
                row.update(model=name, backend=backend, batch=batch, build_s=round(built, 1),
                           calibration=lm.calibration, align=lm.align, fit=lm.fit)
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "calibration"}),
                      flush=True)
                write_text(path, json.dumps(doc, indent=1))
    write_text(Path(args.md), render(doc))


def render(doc: dict) -> str:
    lines = ["# Latency-aware pruning: requested against measured speed-up", "",
             f"**Machine:** {doc['machine']}, {doc['threads']} threads, torch {doc['torch']}. "
             "Random weights; one-shot L1 for ours (latency budget, marginal allocation) "
             "and for the MACs-targeted plan (global allocation); Torch-Pruning L1 "
             "round_to=8 at ours' MACs.", "", "```bash", doc["command"],
             "python benchmarks/latency_aware.py --report benchmarks/results/latency_aware.json",
             "```", "",
             "| model | backend | batch | requested | ours: measured (predicted; calibrated "
             "model alone) | ours MACs | "
             "widths on multiples of | MACs-targeted: measured (MACs) | "
             "Torch-Pruning at ours' MACs |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        head = f"| {r['model']} | {r['backend']} | {r['batch']} | {1 / r['target']:.2f}x |"
        if "error" in r:
            lines.append(head + f" {r['error'][:80]} | | | | |")
            continue
        o, m, tp = r["ours"], r["macs"], r.get("torch-pruning")
        tp_cell = "—" if tp is None else tp["error"] if "error" in tp else \
            f"{tp['measured']:.2f}x ({tp['macs']:.2f})"
        alone = f"; {o['predicted_calibrated']:.2f}x" if "predicted_calibrated" in o else ""
        lines.append(head + f" **{o['measured']:.2f}x** ({o['predicted']:.2f}x{alone}) | "
                     f"{o['macs']:.2f} | {r.get('align', 1)} | {m['measured']:.2f}x "
                     f"({m['macs']:.2f}) | {tp_cell} |")
    ok = [r for r in doc["rows"] if "error" not in r]
    if ok:
        within = sum(abs(r["ours"]["measured"] / r["requested"] - 1) <= 0.05 for r in ok)
        pred = [abs(r["ours"]["predicted"] / r["ours"]["measured"] - 1) for r in ok]
        lines += ["", f"Measured speed-up within 5% of the requested one: **{within} of "
                  f"{len(ok)}** rows. Predicted against measured speed-up: median error "
                  f"{100 * float(np.median(pred)):.1f}%, largest {100 * max(pred):.1f}%; "
                  f"within 10% on {sum(p <= 0.1 for p in pred)} of {len(pred)} rows."]
        alone = [abs(r["ours"]["predicted_calibrated"] / r["ours"]["measured"] - 1)
                 for r in ok if "predicted_calibrated" in r["ours"]]
        if alone:
            lines += ["", f"By the calibrated model alone (no plan of the search measured): "
                      f"median error {100 * float(np.median(alone)):.1f}%, largest "
                      f"{100 * max(alone):.1f}%; within 10% on "
                      f"{sum(p <= 0.1 for p in alone)} of {len(alone)} rows."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
