"""EMO-DIR against whole-network NSGA-II, random search and a uniform sweep, at an equal
budget of evaluations; then its half-MACs plan fine-tuned against one-shot L1 and
Torch-Pruning at the same MACs.

Part 1 (search): every method gets the evaluation budget divide-and-conquer used
(sub-network evaluations count one each, whole-network ones too). Each returned
plan is pruned, its BN statistics re-estimated on the 512 calibration images, and
its top-1 measured on the test set; the hypervolume of (top-1 error, MACs / dense)
with reference (1, 1) and the wall time of each search are reported.
Part 2 (--finetune-epochs E): the plan nearest below half the MACs from each of
EMO, one-shot L1 (global) and Torch-Pruning (L1, bisected ratio), fine-tuned E
epochs with the same schedule.

    python benchmarks/emo.py --model resnet56 --checkpoint checkpoints/resnet56-jpeg/model.pt \\
        --data ../shared/datasets/cifar10 --out benchmarks/results/emo.json
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

from common import calibration, command_block, finetune_all, invocation, recalibrated, setup
from prunekit.data import Batches
from prunekit.methods import OneShotConfig, prune_oneshot
from prunekit.methods.emo import EmoConfig, EmoSearch, hypervolume, non_dominated
from prunekit.train import evaluate


def measure(search: EmoSearch, model, widths_list, calib, test) -> list[dict]:
    ev = search.local
    rows = []
    for w in widths_list:
        keep = ev.keep(w)
        cost = ev.graph.cost_of_mask(keep)
        pruned = ev.graph.apply(model, search.plan(w))
        top1 = evaluate(recalibrated(pruned, calib), test)["top1"]
        rows.append({"macs_ratio": cost.macs / ev.graph.cost().macs, "top1": top1,
                     "widths": w})
    return rows


def front_hv(rows: list[dict]) -> float:
    F = np.array([[1 - r["top1"] / 100, r["macs_ratio"]] for r in rows])
    return hypervolume(F[non_dominated(F)], (1.0, 1.0))


def random_widths(search: EmoSearch, n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    ev, out = search.local, []
    for _ in range(n):
        w = {}
        for seg in ev.segments:
            w.update(ev.widths(seg, rng.uniform(search.config.min_keep, 1, len(seg.groups))))
        out.append(w)
    return out


def uniform_widths(search: EmoSearch, n: int) -> list[dict]:
    ev, out = search.local, []
    for frac in np.linspace(search.config.min_keep, 1.0, n):
        w = {}
        for seg in ev.segments:
            w.update(ev.widths(seg, np.full(len(seg.groups), frac)))
        out.append(w)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet56")
    ap.add_argument("--checkpoint", help="the fine-tuned model (required unless --report)")
    ap.add_argument("--data")
    ap.add_argument("--out", default="benchmarks/results/emo.json")
    ap.add_argument("--pop-size", type=int, default=16)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--test-n", type=int, default=2000)
    ap.add_argument("--finetune-epochs", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--report", metavar="JSON", help="only render the markdown report")
    ap.add_argument("--md", default="benchmarks/emo.md")
    ap.add_argument("--status", default="")
    args = ap.parse_args()
    if args.report:
        doc = json.loads(Path(args.report).read_text())
        Path(args.md).write_text(render(doc, Path(args.report), args.status))
        return
    if not args.checkpoint:
        ap.error("--checkpoint is required")
    s, model, (tx, ty, vx, vy) = setup(args.model, args.checkpoint, args.data, args.threads)
    calib, _, _ = calibration(tx, ty, s, 512, args.seed)
    pick = np.random.default_rng(0).choice(len(vx), min(args.test_n, len(vx)), replace=False)
    test = Batches(vx[pick], vy[pick], 500, s.norm)
    example = torch.zeros(1, *s.input_size)
    doc: dict = {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
                 "model": args.model, "test_n": len(pick), "command": invocation(),
                 "methods": {}}

    cfg = EmoConfig(parts=3, pop_size=args.pop_size, generations=args.generations,
                    seed=args.seed)
    t = time.perf_counter()
    dnc = EmoSearch(model, example, list(calib.split(128)), cfg)
    res = dnc.run(progress=True)
    secs = time.perf_counter() - t
    budget = res.evaluations
    runs = {"divide-and-conquer": ([r["widths"] for r in res.front], secs, budget)}
    whole_cfg = EmoConfig(parts=1, pop_size=args.pop_size, seed=args.seed,
                          generations=max(1, budget // args.pop_size - 1))
    t = time.perf_counter()
    whole = EmoSearch(model, example, list(calib.split(128)), whole_cfg)
    wres = whole.run(progress=True)
    runs["whole-network NSGA-II"] = ([r["widths"] for r in wres.front],
                                     time.perf_counter() - t, wres.evaluations)
    for name, widths in (("random search", random_widths(dnc, budget, args.seed)),
                         ("uniform sweep", uniform_widths(dnc, min(budget, 24)))):
        t = time.perf_counter()
        imp = [dnc.local.whole(w) for w in widths]
        cost = [dnc.local.graph.cost_of_mask(dnc.local.keep(w)).macs for w in widths]
        nd = non_dominated(np.array([[c, i] for c, i in zip(cost, imp)]))
        runs[name] = ([widths[i] for i in nd], time.perf_counter() - t, len(widths))
    for name, (widths, secs, evals) in runs.items():
        rows = measure(dnc, model, widths, calib, test)
        doc["methods"][name] = {"seconds": round(secs, 1), "evaluations": evals,
                                "hypervolume": round(front_hv(rows), 5),
                                "front": [{k: v for k, v in r.items() if k != "widths"}
                                          for r in rows]}
        print(name, doc["methods"][name]["hypervolume"], round(secs, 1), evals, flush=True)
    Path(args.out).write_text(json.dumps(doc, indent=1))
    if args.finetune_epochs:
        doc["finetune"] = finetune_part(args, model, dnc, res, s, tx, ty, vx, vy)
        Path(args.out).write_text(json.dumps(doc, indent=1))
    plot(doc, Path(args.out).with_suffix(".png"))
    Path(args.md).write_text(render(doc, Path(args.out), args.status))


def finetune_part(args, model, dnc, res, s, tx, ty, vx, vy) -> dict:
    from prunekit.conformance import measured_cost
    half = [r for r in res.front if r["cost_ratio"] <= 0.5]
    if not half:
        return {"error": "the front has no plan at or below half the MACs"}
    row = max(half, key=lambda r: r["cost_ratio"])
    ex = torch.zeros(1, *s.input_size)
    candidates = {"emo": dnc.local.graph.apply(model, dnc.plan(row["widths"])),
                  "oneshot-l1": prune_oneshot(model, ex, OneShotConfig(
                      target=row["cost_ratio"], criterion="l1")).model}
    try:
        import torch_pruning as tp
        from prunekit.methods.projector import bisect
        base = measured_cost(model, (ex,))[1]
        made = {}

        def fits(ratio: float) -> bool:     # Torch-Pruning at this ratio meets the cost
            work = made[ratio] = copy.deepcopy(model)
            tp.pruner.MetaPruner(work, ex, importance=tp.importance.MagnitudeImportance(p=1),
                                 pruning_ratio=ratio,
                                 ignored_layers=[m for n, m in work.named_modules()
                                                 if not (n.startswith("layer") and
                                                         n.endswith("conv1"))
                                                 and isinstance(m, (nn.Conv2d, nn.Linear))]
                                 ).step()
            return measured_cost(work, (ex,))[1] / base <= row["cost_ratio"]
        ratio = bisect(fits, 0.0, 0.95, steps=12)   # the shared bisection (methods.projector)
        best = made[ratio] if ratio in made and fits(ratio) else None
        if best is not None:
            candidates["torch-pruning-l1"] = best
    except ImportError:
        pass
    return finetune_all(candidates, model, (tx, ty, vx, vy), s, args.finetune_epochs, args.seed,
                        cache=Path(args.out).with_suffix(".finetune.json"))


def render(doc: dict, out: Path, status: str = "") -> str:
    """The committed markdown report of one run's JSON."""
    m = doc["methods"]
    lines = [f"# EMO-DIR: front quality at an equal evaluation budget ({doc['model']})", "",
             f"**Machine:** {doc['machine']}. Top-1 after BN re-estimation on the 512 "
             f"calibration images, on {doc['test_n']} test images (CIFAR-10 JPEG)."
             + (f" **Status:** {status}" if status else ""), "",
             command_block(doc, "emo.py", out), "",
             "| search | evaluations | wall (s) | hypervolume | front: MACs/dense → top-1 % |",
             "|---|---|---|---|---|"]
    for name, r in m.items():
        pts = ", ".join(f"{p['macs_ratio']:.2f}→{p['top1']:.1f}"
                        for p in sorted(r["front"], key=lambda p: p["macs_ratio"]))
        lines.append(f"| {name} | {r['evaluations']} | {r['seconds']:.0f} | "
                     f"{r['hypervolume']:.4f} | {pts} |")
    d, w = m.get("divide-and-conquer"), m.get("whole-network NSGA-II")
    if d and w:
        others = [m[k]["hypervolume"] for k in ("random search", "uniform sweep") if k in m]
        lines += ["", "Targets: divide-and-conquer hypervolume ≥ whole-network's: "
                  f"**{d['hypervolume'] >= w['hypervolume']}** ({d['hypervolume']:.4f} vs "
                  f"{w['hypervolume']:.4f}); in at most half its wall time: "
                  f"**{d['seconds'] <= 0.5 * w['seconds']}** ({d['seconds']:.0f} s vs "
                  f"{w['seconds']:.0f} s); above random search and the uniform sweep: "
                  f"**{all(d['hypervolume'] > o for o in others)}**."]
    ft = doc.get("finetune")
    if ft and "error" not in ft:
        best = max(ft, key=lambda k: ft[k]["top1"])
        lines += ["", f"## The plan at half the MACs, fine-tuned "
                  f"{next(iter(ft.values())).get('epochs', '?')} epochs (same schedule)", "",
                  "| plan | MACs / dense (measured) | top-1 % (10k test) |", "|---|---|---|"]
        lines += [f"| {k} | {v['macs_ratio']:.3f} | {v['top1']:.2f} |" for k, v in ft.items()]
        lines += ["", f"Target (EMO the best of the three): **{best == 'emo'}** (best: {best})."]
    elif ft:
        lines += ["", f"Fine-tuning part: {ft['error']}."]
    lines += ["", f"![fronts](results/{out.with_suffix('.png').name})"]
    return "\n".join(lines) + "\n"


def plot(doc: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for name, m in doc["methods"].items():
        pts = sorted((r["macs_ratio"], r["top1"]) for r in m["front"])
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", markersize=3,
                label=f"{name} (HV {m['hypervolume']:.3f}, {m['seconds']:.0f} s)")
    ax.set_xlabel("MACs / dense")
    ax.set_ylabel("top-1 (%) after BN recalibration")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
