"""Prune and recover (issue 25): which selection and which recovery keep the most accuracy
at equal wall-clock budgets on this machine?

Every arm is one ``prunekit.pipeline.compress`` run on the same model, data, target and
budget. The arms differ only in the settings named:

- selection: ``submodular`` (greedy selection with least-squares reweighting, 512
  unlabeled images), ``submodular-acc`` (the same, per-layer widths by the equal-accuracy
  rule on the held-out split), ``oneshot`` (one-shot L1, global allocation);
- recovery: ``ft`` (plain fine-tune: cross-entropy, no batch-norm re-estimation), ``kd``
  (distillation, alpha 0.9, T 4, no re-estimation), ``kd+bn`` (distillation after the
  batch norms are re-estimated; kept only if no worse on the held-out split: the
  default);
- ``tp-l1``: Torch-Pruning 1.6.1's L1 plan (round_to=1: with 8 it cannot reach half of
  ResNet-20's MACs; its ratio bisected to the MACs target; option-A ResNets: block-inner
  convs only), then the same ``kd+bn`` recovery
  through the pipeline's stage functions.

Each row reports top-1 on the whole test set (never used to choose anything), the best
held-out round, MACs and params against dense, the measured speed-up (eager PyTorch,
batch 64), the stages' seconds and the held-out curve. Rows are appended to ``--out``
(JSON lines) as they finish; a re-run skips them.

    python benchmarks/compress.py --model resnet20 --checkpoint checkpoints/resnet20-jpeg/model.pt \\
        --data ../shared/datasets/cifar10 --budgets 5 --out benchmarks/results/compress-resnet20.jsonl
    python benchmarks/compress.py --report benchmarks/results/compress-*.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from common import invocation
from prunekit.outputs import write_text

SELECTIONS = {"submodular": {}, "submodular-acc": {"allocation": "accuracy"},
              "oneshot": {"method": "oneshot"}}
ROUND_TO = 1     # Torch-Pruning's: with 8 it cannot reach half of ResNet-20's MACs
RECOVERIES = {"ft": {"distill_alpha": 0.0, "bn_batches": 0}, "kd": {"bn_batches": 0},
              "kd+bn": {}}


def arms(names: list[str]) -> dict[str, dict]:
    table = {f"{s}/{r}": {**sv, **rv} for s, sv in SELECTIONS.items()
             for r, rv in RECOVERIES.items()}
    table["tp-l1/kd+bn"] = {"tp": True}
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"unknown arm(s) {unknown}; known: {', '.join(table)}")
    return {n: table[n] for n in names}


def run_tp(model, x, config, data, work: Path) -> dict:
    """Torch-Pruning's plan through the same batch-norm and recovery stages."""
    from prunekit.pipeline.compress import recovery_curve
    from prunekit.pipeline.schedule import plan_schedule, time_step
    from prunekit.pipeline.stages import load_best, recalibrate, recover, train_config
    from prunekit.train import evaluate
    from latency_aware import tp_at_macs
    t0 = time.perf_counter()
    net = tp_at_macs(model, x, config.target, round_to=ROUND_TO)
    if net is None:
        raise SystemExit(f"Torch-Pruning cannot reach {config.target} of the MACs")
    net = net.eval()
    stages = {"select": {"method": "tp-l1", "seconds": time.perf_counter() - t0,
                         "heldout_top1": evaluate(net, data.heldout)["top1"]}}
    before = {k: v.clone() for k, v in net.state_dict().items()}
    t = time.perf_counter()
    recalibrate(net, data.train, config.bn_batches)
    top = evaluate(net, data.heldout)["top1"]
    kept = top >= stages["select"]["heldout_top1"]
    if not kept:
        net.load_state_dict(before)
    stages["bn"] = {"kept": kept, "heldout_top1": max(top, stages["select"]["heldout_top1"]),
                    "seconds": time.perf_counter() - t}
    teacher = copy.deepcopy(model).eval()
    from prunekit.pipeline.schedule import Schedule
    step_s = time_step(net, data.train, train_config(config, Schedule(1, 0, len(data.train))),
                       teacher)
    t = time.perf_counter()
    evaluate(net, data.heldout)
    sched = plan_schedule(len(data.train), config.evals, budget_s=60 * config.budget_minutes,
                          step_s=step_s, eval_s=time.perf_counter() - t)
    t = time.perf_counter()
    rounds = recover(net, teacher, data, config, sched, work / "recover", resume=False,
                     progress=False)
    best = load_best(net, work / "recover")
    stages["recover"] = {"seconds": sum(r["seconds"] for r in rounds),
                         "wall_s": time.perf_counter() - t, "best_round": best["epoch"],
                         "heldout_top1": best["heldout_top1"], "rounds": len(rounds)}
    curve = recovery_curve(stages, rounds)
    return {"model": net, "stages": stages, "curve": curve, "schedule": sched.to_dict()}


def run_arm(model, x, base, data, overrides: dict, minutes: float, work: Path) -> dict:
    from prunekit.pipeline import CompressConfig, compress
    config = replace(base, budget_minutes=minutes,
                     **{k: v for k, v in overrides.items() if k != "tp"})
    if overrides.get("tp"):
        return {**run_tp(model, x, config, data, work), "config": config.to_dict()}
    res = compress(model, x, config, data, work, progress=False)
    return {"model": res.model, "stages": res.stages, "curve": res.curve,
            "schedule": res.schedule.to_dict(), "config": config.to_dict()}


def measured(model, pruned, x, data) -> dict:
    from prunekit.latency import Target
    from prunekit.pipeline.report import measure
    m = measure(model, pruned, x, data, Target(batch=64, threads=torch.get_num_threads()))
    b, a = m["before"], m["after"]
    return {"test_top1": a["test_top1"], "dense_test_top1": b["test_top1"],
            "heldout_top1": a["heldout_top1"], "macs": a["macs"] / b["macs"],
            "params": a["params"] / b["params"], "speedup": b["latency_ms"] / a["latency_ms"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--checkpoint")
    ap.add_argument("--data")
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--budgets", nargs="+", type=float, default=[5.0, 15.0, 30.0])
    ap.add_argument("--arms", nargs="+", default=["submodular/kd+bn"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out")
    ap.add_argument("--md", default="benchmarks/compress.md")
    ap.add_argument("--report", nargs="+", metavar="JSONL")
    args = ap.parse_args()
    if args.report:
        write_text(Path(args.md), render([json.loads(ln) for f in args.report
                                          for ln in Path(f).read_text().splitlines() if ln]))
        return
    torch.set_num_threads(args.threads)
    from prunekit.cli_compress import data_for
    from prunekit.cli_inputs import model_of
    from prunekit.pipeline import CompressConfig
    model, s = model_of({"model": args.model, "checkpoint": args.checkpoint})
    x = torch.zeros(1, *s.input_size)
    base = CompressConfig(target=args.target)
    data = data_for({"data": args.data, "subset": 0, "seed": 0, "cutout": 0},
                    replace(base, epochs=1), s)
    out = Path(args.out)
    done = {(r["arm"], r["budget_minutes"]) for r in
            (json.loads(ln) for ln in (out.read_text().splitlines() if out.is_file() else [])
             if ln)}
    for minutes in args.budgets:
        for name, overrides in arms(args.arms).items():
            if (name, minutes) in done:
                continue
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="compress-bench-") as tmp:
                got = run_arm(model, x, base, data, overrides, minutes, Path(tmp))
            row = {"model": args.model, "arm": name, "budget_minutes": minutes,
                   "target": args.target, "wall_s": round(time.perf_counter() - t0, 1),
                   **measured(model, got.pop("model"), x, data), **got,
                   "machine": f"{platform.machine()}, {args.threads} threads",
                   "torch": torch.__version__, "command": invocation()}
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps({k: row[k] for k in ("arm", "budget_minutes", "test_top1",
                                                  "dense_test_top1", "macs", "speedup",
                                                  "wall_s")}), flush=True)


def render(rows: list[dict]) -> str:
    lines = ["# Prune and recover: selection x recovery at equal wall-clock budgets", ""]
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        dense = mine[0]["dense_test_top1"]
        lines += [f"## {model} (dense {dense:.2f}% on the 10,000 test images), target "
                  f"{mine[0]['target']:g} of the MACs", "", "```bash", mine[0]["command"],
                  "```", "", "| arm | budget (min) | top-1 (%) | vs dense | best held-out "
                  "round | recovery steps | MACs | params | speed-up (batch 64) | wall (min) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(mine, key=lambda r: (r["budget_minutes"], -r["test_top1"])):
            rec = r["stages"]["recover"]
            lines.append(f"| {r['arm']} | {r['budget_minutes']:g} | **{r['test_top1']:.2f}** | "
                         f"{r['test_top1'] - dense:+.2f} | {rec['best_round']} of "
                         f"{rec['rounds']} | {_steps(r.get('schedule'))} | {r['macs']:.3f} | "
                         f"{r['params']:.3f} | "
                         f"{r['speedup']:.2f}x | {r['wall_s'] / 60:.1f} |")
        lines.append("")
    return "\n".join(lines)


def _steps(schedule: dict | None) -> str:
    """Optimizer steps of a row's recovery schedule, with the step time it was sized by."""
    if not schedule:
        return "—"
    steps = schedule["epochs"] * (schedule["steps"] or schedule["passes"])
    step_s = schedule.get("step_s")
    return f"{steps:,}" + (f" at {1e3 * step_s:.0f} ms" if step_s else "")


if __name__ == "__main__":
    main()
