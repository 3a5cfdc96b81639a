"""Pruning spaces on the fine-tuned CIFAR ResNet: two MACs regimes, initial and refined
spaces (>= 64 samples each), the MACs-per-parameter analysis, and the refined winner
fine-tuned against a uniform network and a one-shot L1 plan at the same MACs.

Each population is appended to a JSON-lines file as it is evaluated (rerun to
continue). Proxy: inherit weights, --steps SGD steps on 10k training images, error
on 2k other training images.

    python benchmarks/spaces.py --model resnet20 \\
        --checkpoint checkpoints/resnet20-jpeg/model.pt --data ../shared/datasets/cifar10 \\
        --runs runs/spaces-bench --out benchmarks/results/spaces.json --finetune-epochs 10
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import torch

from common import command_block, finetune_all, invocation, setup
from prunekit.data import Batches
from prunekit.methods import OneShotConfig, prune_oneshot
from prunekit.methods.spaces import (Sampler, Space, best_rho, evaluate_samples, held_out, refine,
                                     search)
from prunekit.reporting import plot_spaces

REGIMES = {"50%": (0.45, 0.55), "30%": (0.25, 0.35)}


def population(path: Path, model, example, space: Space, args, data) -> list[dict]:
    done = [json.loads(r) for r in path.read_text().splitlines()] if path.is_file() else []
    samples = Sampler(model, example, space).sample(args.samples, seed=args.seed)
    for i in range(len(done), len(samples), 8):
        part = evaluate_samples(samples[i:i + 8], (model, example, space, *data, args.steps,
                                                   0.01, 64, args.seed))
        with path.open("a") as f:
            for r in part:
                f.write(json.dumps(r) + "\n")
        done += part
        print(path.name, len(done), flush=True)
    return done


def render(doc: dict, out: Path, status: str = "") -> str:
    """The committed markdown report of one run's JSON."""
    lines = [f"# Network pruning spaces ({doc['model']}, CIFAR-10 JPEG)", "",
             f"**Machine:** {doc['machine']}. Proxy error of a subnetwork: weights inherited "
             f"from the fine-tuned network, {doc['steps']} SGD steps (batch 64) on 10k "
             "training images, top-1 error on 2k other training images."
             + (f" **Status:** {status}" if status else ""), "",
             command_block(doc, "spaces.py", out, "; every evaluated subnetwork and the "
                           f"fine-tuning results: `results/{out.stem}/` (copied from `--runs`)"),
             ""]
    for name, r in doc["regimes"].items():
        a, i, f = r["ratio"], r["initial"], r["refined"]
        lines += [f"## Regime {name} of the dense MACs", "",
                  "| space | n | median error % | 25th pct % | best % |", "|---|---|---|---|---|",
                  f"| initial | {i['n']} | {i['median']:.2f} | {i['p25']:.2f} | {i['best']:.2f} |",
                  f"| refined | {f['n']} | {f['median']:.2f} | {f['p25']:.2f} | {f['best']:.2f} |",
                  "", f"MACs per parameter of the winners (bootstrap over quarter-populations): "
                  f"median {a['median']:.1f}, 95% interval [{a['interval'][0]:.1f}, "
                  f"{a['interval'][1]:.1f}] of the population's range "
                  f"[{a['rho_range'][0]:.1f}, {a['rho_range'][1]:.1f}] "
                  f"({a['interval_share']:.0%} of it); winners' median distance "
                  f"{a['winners_distance']:.1f} vs population's {a['population_distance']:.1f}: "
                  f"ratio hypothesis supported: **{a['supported']}**. The refined space keeps "
                  "that interval.", "",
                  f"Target (refined median ≤ initial 25th percentile): "
                  f"**{r['refined_median_le_initial_p25']}**.", "",
                  f"![EDFs](results/spaces-{name[:-1]}.png)", ""]
        ft = r.get("finetune")
        if ft:
            ep = next(iter(ft.values())).get("epochs", "?")
            lines += [f"Refined search's winner (proxy error {r['winner']['error']:.2f}%) and the "
                      f"alternatives at the same MACs, fine-tuned {ep} epochs each (same schedule):",
                      "", "| network | MACs / dense (measured) | top-1 % (10k test) |",
                      "|---|---|---|"]
            lines += [f"| {k} | {v['macs_ratio']:.3f} | {v['top1']:.2f} |" for k, v in ft.items()]
            if "refined winner" in ft and "uniform" in ft:
                gap = ft["refined winner"]["top1"] - ft["uniform"]["top1"]
                lines += ["", f"Target (winner ≥ uniform + 0.5): **{gap >= 0.5}** "
                          f"({gap:+.2f} points)."]
            lines.append("")
    return "\n".join(lines)


def summary(pop: list[dict]) -> dict:
    e = np.array([p["error"] for p in pop])
    return {"n": len(e), "median": float(np.median(e)), "p25": float(np.percentile(e, 25)),
            "best": float(e.min())}


def uniform_at(sampler: Sampler, macs_ratio: float) -> dict[str, int]:
    """The uniform subnetwork (one keep ratio everywhere) at most at ``macs_ratio``: the
    largest ratio, by the shared bisection of :mod:`prunekit.methods.projector`."""
    from prunekit.methods.projector import bisect
    lo = sampler.space.min_ratio
    n = len(sampler.units)
    t = bisect(lambda t: sampler.describe([1.0 - t] * n)["macs_ratio"] <= macs_ratio,
               0.0, 1.0 - lo)
    return sampler.widths([1.0 - t] * n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--checkpoint", help="the fine-tuned model (required unless --report)")
    ap.add_argument("--data")
    ap.add_argument("--runs", default="runs/spaces-bench")
    ap.add_argument("--out", default="benchmarks/results/spaces.json")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--finetune-epochs", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--regimes", nargs="+", choices=list(REGIMES), default=list(REGIMES),
                    help="a subset, e.g. to run the regimes in two processes (then rerun "
                         "with all of them: finished work is reused)")
    ap.add_argument("--report", metavar="JSON", help="only render the markdown report")
    ap.add_argument("--md", default="benchmarks/spaces.md")
    ap.add_argument("--status", default="")
    args = ap.parse_args()
    if args.report:
        Path(args.md).write_text(render(json.loads(Path(args.report).read_text()),
                                        Path(args.report), args.status))
        return
    if not args.checkpoint:
        ap.error("--checkpoint is required")
    s, model, (tx, ty, vx, vy) = setup(args.model, args.checkpoint, args.data, args.threads)
    pool = np.random.default_rng(args.seed).permutation(len(tx))[:12000]
    xs = torch.cat([b for b, _ in Batches(tx[pool], ty[pool], 500, s.norm)])
    data = held_out(xs, torch.as_tensor(ty[pool]), 2000, args.seed)
    example = torch.zeros(1, *s.input_size)
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    doc = {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
           "model": args.model, "samples": args.samples, "steps": args.steps,
           "command": invocation(), "regimes": {}}
    regimes = {k: v for k, v in REGIMES.items() if k in args.regimes}
    for name, regime in regimes.items():
        space = Space(param="stage", regime=regime)
        init = population(runs / f"{name}-initial.jsonl", model, example, space, args, data)
        analysis = best_rho(init, seed=args.seed)
        refined_space = refine(space, analysis)
        ref = population(runs / f"{name}-refined.jsonl", model, example, refined_space, args,
                         data)
        winner = search(ref)
        plot_spaces(init, ref, analysis, Path(args.out).with_name(f"spaces-{name[:-1]}.png"))
        doc["regimes"][name] = {"initial": summary(init), "refined": summary(ref),
                                "ratio": analysis, "winner": winner,
                                "refined_median_le_initial_p25":
                                    summary(ref)["median"] <= summary(init)["p25"]}
        Path(args.out).write_text(json.dumps(doc, indent=1))
    for name, regime in regimes.items():  # after all populations: the costly part last
        if args.finetune_epochs:
            doc["regimes"][name]["finetune"] = finetune(
                args, name, model, s, Space(param="stage", regime=regime),
                doc["regimes"][name]["winner"], tx, ty, vx, vy)
            Path(args.out).write_text(json.dumps(doc, indent=1))
    Path(args.md).write_text(render(doc, Path(args.out), args.status))
    print(json.dumps({k: {kk: v[kk] for kk in ("initial", "refined")}
                      for k, v in doc["regimes"].items()}, indent=1))


def finetune(args, name, model, s, space, winner, tx, ty, vx, vy) -> dict:
    sampler = Sampler(model, torch.zeros(1, *s.input_size), space)
    graph = sampler.graph
    plan_of = sampler.planner.plan
    ex = torch.zeros(1, *s.input_size)
    nets = {"refined winner": graph.apply(model, plan_of(winner["widths"])),
            "uniform": graph.apply(model, plan_of(uniform_at(sampler, winner["macs_ratio"]))),
            "oneshot-l1": prune_oneshot(model, ex, OneShotConfig(
                target=winner["macs_ratio"], criterion="l1")).model}
    return finetune_all(nets, model, (tx, ty, vx, vy), s, args.finetune_epochs, args.seed,
                        cache=Path(args.runs) / f"finetune-{name[:-1]}.json")


if __name__ == "__main__":
    main()
