"""LAPP against the alternatives: CIFAR-10 (JPEG), ResNet-20, all trained from scratch with
the same number of epochs E and the same schedule (SGD + Nesterov, lr 0.1 cosine,
weight decay 5e-4, batch 128, crop + flip).

Runs (each in its own resumable folder under --runs; rerun the command to continue):
  dense          the unpruned network, E epochs
  lapp           LAPP at --target of the dense MACs (pruning during the first
                 --prune-epochs, bypass kept), E epochs in all
  lapp-nobypass  the same without the bypass
  lapp-noprog    the same with the final target from the first step (no ramp)
  lapp-bypass0   the same with the bypass BN scales initialised to 0 (each branch starts
                 as a no-op)
  lapp-hold      no bypass, and the cost held at the ramp's target from below
                 (LappConfig.hold)
  lapp-leak      no bypass; in training a masked channel passes 1% of its output
                 (LappConfig.leak=0.01), so the task loss sees the gain of switching it on;
                 with --prune-epochs 10 (of 30) it is LappConfig's default since 2026-11-30
  lapp-taylor    no bypass, leak 0.01, and channels ranked by the Taylor score
                 |dL/dmask| (LappConfig.score="taylor") instead of the BN scale
  uniform        a hand-built ResNet-20 with every width scaled by one factor to the
                 same MACs, E epochs from scratch
  l1             the dense run's weights after E/2 epochs, pruned one-shot (L1, global
                 allocation) to the same MACs, then trained the schedule's last E/2
                 epochs (the learning rate continues where the dense run was): E in all
Then one table (top-1, params, MACs, CPU latency at batch 64 measured side by side in
one process, seconds per epoch) and plots of LAPP's per-layer widths and thresholds.

    python benchmarks/lapp.py --data ../shared/datasets/cifar10 --epochs 30 \\
        --runs runs/lapp-bench --out benchmarks/results/lapp.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import torch

from prunekit import ChannelGraph
from prunekit.data import Batches, load_cifar10
from prunekit.io import load_pruned, save_pruned
from prunekit.methods import OneShotConfig, prune_oneshot
from prunekit.methods.allocate import metric_value
from prunekit.methods.lapp import LappConfig, add_bypass
from prunekit.methods.lapp_method import train_lapp
from prunekit.models import CifarResNet, spec
from prunekit.reporting import latency_ms, plot_lapp
from prunekit.train import TrainConfig, evaluate, fit
from prunekit.outputs import save_torch as save_atomic, write_text as write_text_atomic

X = torch.zeros(1, 3, 32, 32)
RUNS = ("dense", "lapp", "lapp-nobypass", "lapp-noprog", "lapp-bypass0", "lapp-hold",
        "lapp-leak", "lapp-taylor", "uniform", "l1")
WITH_BYPASS = ("lapp", "lapp-noprog", "lapp-bypass0")
_REPORT_MD = "benchmarks/lapp.md"


def uniform_widths(target: float, metric: str = "macs") -> tuple[int, int, int]:
    """Even stage widths (option A pads by half the difference) scaled by one factor, the
    widest whose MACs (or params) stay within ``target`` of ResNet-20's."""
    base = metric_value(ChannelGraph.build(CifarResNet(20), X).cost(), metric)
    best = (2, 2, 2)
    for k in range(1, 33):
        w = (2 * max(1, round(8 * k / 32)), 2 * max(1, round(16 * k / 32)), 2 * k)
        if metric_value(ChannelGraph.build(CifarResNet(20, widths=w), X).cost(), metric) \
                <= target * base:
            best = w
    return best


def lapp_config(args, name: str) -> LappConfig:
    return LappConfig(target=args.target, metric=args.metric, prune_epochs=args.prune_epochs,
                      bypass=name in WITH_BYPASS,
                      progressive=name != "lapp-noprog", hold=name == "lapp-hold",
                      bypass_scale=0.0 if name == "lapp-bypass0" else 1.0,
                      leak=0.01 if name in ("lapp-leak", "lapp-taylor") else 0.0,
                      score="taylor" if name == "lapp-taylor" else "bn")


def dense_half(args, train: Batches, test: Batches, tcfg: TrainConfig) -> Path:
    """Train the dense run's first E/2 epochs (if not done) and snapshot its weights there:
    the starting point of the one-shot L1 run. Resumable at any moment."""
    folder = Path(args.runs) / "dense"
    snap = folder / "half.pt"
    if not snap.is_file():
        model = CifarResNet(20)
        fit(model, train, test, tcfg, folder, resume=True, epochs=(0, args.epochs // 2))
        save_atomic(model.state_dict(), snap)
    return snap


def run_one(name: str, args, train: Batches, test: Batches) -> None:
    folder = Path(args.runs) / name
    if (folder / "done.json").is_file():
        return
    torch.manual_seed(args.seed)
    tcfg = TrainConfig(epochs=args.epochs, lr=args.lr, weight_decay=5e-4, seed=args.seed,
                       precision=args.precision)
    if name == "dense":
        dense_half(args, train, test, tcfg)
        model = CifarResNet(20)
        fit(model, train, test, tcfg, folder, resume=True, epochs=(args.epochs // 2, args.epochs))
        save_pruned(folder / "model", model.eval(), ChannelGraph.build(model, X).full_plan(),
                    (X,))
    elif name.startswith("lapp"):
        res = train_lapp(CifarResNet(20), X, train, test, lapp_config(args, name), tcfg, folder,
                         resume=True)
        save_pruned(folder / "model", res.model, res.plan, (X,))
    elif name == "uniform":
        model = CifarResNet(20, widths=uniform_widths(args.target, args.metric))
        fit(model, train, test, tcfg, folder, resume=True)
        torch.save(model.state_dict(), folder / "model.pt")
    elif name == "l1":
        model = CifarResNet(20)
        model.load_state_dict(torch.load(dense_half(args, train, test, tcfg), weights_only=True))
        res = prune_oneshot(model.eval(), X, OneShotConfig(target=args.target, metric=args.metric,
                                                           criterion="l1"))
        pruned = res.model
        fit(pruned, train, test, tcfg, folder / "finetune", resume=True,
            epochs=(args.epochs // 2, args.epochs))
        save_pruned(folder / "model", pruned.eval(), res.plan, (X,))
    write_text_atomic(folder / "done.json",
                      json.dumps({"test": evaluate(_load(name, args), test)}))


def _load(name: str, args) -> torch.nn.Module:
    folder = Path(args.runs) / name
    if name == "uniform":
        model = CifarResNet(20, widths=uniform_widths(args.target, args.metric))
        model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
        return model.eval()
    base = CifarResNet(20)
    if name in WITH_BYPASS:
        add_bypass(base)
    return load_pruned(folder / "model", base, (X,))[0].eval()


def _epoch_seconds(folder: Path, log: str) -> float | None:
    path = folder / log / "log.jsonl" if log else folder / "log.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return statistics.median(r["seconds"] for r in rows) if rows else None


def step_overhead(args, train: Batches, steps: int = 40, rounds: int = 3) -> dict:
    """LAPP's pruning-phase training step (bypass, masks, penalty, threshold step) against
    the dense network's, seconds per step timed side by side in one process (interleaved
    rounds, median), so that other load on the machine affects both alike."""
    import tempfile

    from prunekit.methods.lapp import Lapp
    n = steps * train.batch_size
    sub = Batches(train.x[:n], train.y[:n], train.batch_size, train.norm, train=True,
                  seed=args.seed, drop_last=True)
    torch.manual_seed(args.seed)
    dense, lapp_net = CifarResNet(20), CifarResNet(20)
    base = ChannelGraph.build(lapp_net, X).cost().macs
    add_bypass(lapp_net)
    callback = Lapp(lapp_net, ChannelGraph.build(lapp_net, X), lapp_config(args, "lapp"), base)
    cfg = TrainConfig(epochs=1, lr=args.lr, weight_decay=5e-4, seed=args.seed)
    secs: dict[str, list[float]] = {"dense": [], "lapp": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for name, net, cb in (("dense", dense, None), ("lapp", lapp_net, callback)):
                hist = fit(net, sub, None, cfg, Path(tmp) / f"{name}-{r}", progress=False,
                           callback=cb)
                secs[name].append(hist[-1]["seconds"] / steps)
    d, p = statistics.median(secs["dense"]), statistics.median(secs["lapp"])
    return {"steps": steps, "rounds": rounds, "dense_s_per_step": round(d, 4),
            "lapp_s_per_step": round(p, 4), "ratio": round(p / d, 3)}


def report(args) -> None:
    torch.set_num_threads(args.threads)
    done = [n for n in RUNS if (Path(args.runs) / n / "done.json").is_file()]
    models = {n: _load(n, args) for n in done}
    dense = ChannelGraph.build(CifarResNet(20), X).cost()
    lat = {n: [] for n in models}
    for _ in range(5):  # interleaved rounds, median
        for n, m in models.items():
            lat[n].append(latency_ms(m, X, batch=64, runs=5))
    rows = []
    for n, m in models.items():
        cost = ChannelGraph.build(m, X).cost()
        folder = Path(args.runs) / n
        test = json.loads((folder / "done.json").read_text())["test"]
        log = "prune" if n.startswith("lapp") else "finetune" if n == "l1" else ""
        secs = _epoch_seconds(folder, log)
        rows.append({"run": n, "top1": test["top1"], "params": cost.params, "macs": cost.macs,
                     "macs_vs_dense": round(cost.macs / dense.macs, 4),
                     "params_vs_dense": round(cost.params / dense.params, 4),
                     "latency_ms": round(statistics.median(lat[n]), 2),
                     "epoch_s": round(secs, 1) if secs else None})
    tx, ty, _, _ = load_cifar10(args.data)
    over = step_overhead(args, Batches(tx, ty, 128, spec("resnet20").norm, train=True))
    doc = {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
                      f"torch {torch.__version__}",
           "epochs": args.epochs, "target": args.target, "metric": args.metric, "rows": rows,
           "pruning_phase_step_overhead": over,
           "settings": {"runs": args.runs, "seed": args.seed, "precision": args.precision,
                        "prune_epochs": args.prune_epochs, "threads": args.threads,
                        "report_md": args.report_md}}
    shown = next((n for n in ("lapp-nobypass", "lapp") if n in done), None)  # the default first
    if shown:
        plan = json.loads((Path(args.runs) / shown / "model" / "plan.json").read_text())
        doc["lapp_widths_run"] = shown
        doc["lapp_widths"] = {g: len(k) for g, k in plan["keep"].items()}
        trace = Path(args.runs) / shown / "prune" / "lapp_trace.jsonl"
        if trace.is_file():
            plot_lapp([json.loads(r) for r in trace.read_text().splitlines()],
                      Path(args.out).with_suffix(".png"), "step")
    doc["uniform_widths"] = list(uniform_widths(args.target, args.metric))
    write_text_atomic(Path(args.out), json.dumps(doc, indent=1))
    text = render(doc, Path(args.out))
    write_text_atomic(Path(args.report_md), text)
    print(text)


def _commands(doc: dict, out: Path) -> list[str]:
    """The commands that produced ``doc``'s runs and report (reports written before the
    settings were recorded: the defaults of that time, seed 0, fp32, runs/lapp-bench)."""
    st = {"runs": "runs/lapp-bench", "seed": 0, "precision": "fp32", "prune_epochs": 5.0,
          "threads": 2, **doc.get("settings", {})}
    common = f"--data ../shared/datasets/cifar10 --epochs {doc['epochs']} --runs {st['runs']}"
    flags = (f" --seed {st['seed']}" if st["seed"] else "") + \
        (f" --precision {st['precision']}" if st["precision"] != "fp32" else "") + \
        (f" --prune-epochs {st['prune_epochs']:g}" if st["prune_epochs"] != 5.0 else "") + \
        (f" --target {doc['target']:g}" if doc["target"] != 0.403 else "") + \
        (" --metric params" if doc.get("metric") == "params" else "")
    lines = [f"PRUNEKIT_THREADS=1 python benchmarks/lapp.py {common} --threads 1{flags} "
             f"--only {r['run']}" for r in doc["rows"]]
    threads = f" --threads {st['threads']}" if st["threads"] != 2 else ""
    md = f" --report-md {st['report_md']}" if st.get("report_md", _REPORT_MD) != _REPORT_MD else ""
    lines.append(f"python benchmarks/lapp.py {common}{flags}{threads} --out {out} --report{md}")
    if "settings" in doc:
        lines.append(f"python benchmarks/lapp.py --runs {st['runs']} --epochs {doc['epochs']}"
                     f"{flags} --collect {out.parent}/{out.stem}")
    return lines


def render(doc: dict, out: Path) -> str:
    """The report (markdown) of a finished ``doc``: table, targets, widths, commands."""
    rows = {r["run"]: r for r in doc["rows"]}
    lines = [f"# LAPP on ResNet-20, CIFAR-10 (JPEG), {doc['epochs']} epochs from scratch", "",
             f"**Machine:** {doc['machine']}. Every run: SGD + Nesterov, lr 0.1 cosine over "
             f"{doc['epochs']} epochs, weight decay 5e-4, batch 128, crop + flip; target "
             f"{doc['target']} of the dense {doc.get('metric', 'macs').replace('macs', 'MACs')}. "
             "Latency: batch 64, median of interleaved "
             "rounds in one process.", "",
             "```bash", *_commands(doc, out), "```", "",
             "| run | top-1 % | params | MACs | MACs / dense | latency b64 (ms) | s / epoch |",
             "|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        lines.append(f"| {r['run']} | {r['top1']:.2f} | {r['params']:,} | {r['macs']:,} | "
                     f"{r['macs_vs_dense']:.3f} | {r['latency_ms']} | {r['epoch_s']} |")
    over = doc["pruning_phase_step_overhead"]
    lines += ["", "`s / epoch`: median over the run's epochs (LAPP: its pruning phase); runs "
              "that shared the cores differ, so the overhead target uses the side-by-side "
              f"timing: LAPP's pruning-phase step {over['lapp_s_per_step']} s vs the dense "
              f"step {over['dense_s_per_step']} s = **{over['ratio']}x** (target <= 1.3x: "
              f"**{over['ratio'] <= 1.3}**).", "", "Targets:", ""]
    dense, uni = rows.get("dense"), rows.get("uniform")
    for name in (n for n in RUNS if n.startswith("lapp") and n in rows):
        lapp = rows[name]
        metric = doc.get("metric", "macs")
        frac = lapp[f"{metric}_vs_dense"]
        ok = doc["target"] * 0.99 <= frac <= doc["target"]
        lines.append(f"- {name}: {'MACs' if metric == 'macs' else 'params'} {frac:.4f} of the "
                     f"dense network's, within 1% below {doc['target']}: **{ok}**")
        if dense:
            gap = dense["top1"] - lapp["top1"]
            lines.append(f"- {name} within 0.3 points of the dense network: {lapp['top1']:.2f} "
                         f"vs {dense['top1']:.2f} ({-gap:+.2f}): **{gap <= 0.3}**")
        if uni:
            d = lapp["top1"] - uni["top1"]
            lines.append(f"- {name} at least 1.0 point above the uniform network: "
                         f"{lapp['top1']:.2f} vs {uni['top1']:.2f} ({d:+.2f}): **{d >= 1.0}**")
    if "lapp_widths" in doc:
        lines += ["", f"LAPP's kept widths per group, run `{doc.get('lapp_widths_run', 'lapp')}` "
                  f"(the uniform network: stage widths "
                  f"{doc['uniform_widths']}):", "",
                  "| group | kept |", "|---|---|",
                  *(f"| {g} | {k} |" for g, k in doc["lapp_widths"].items())]
    lines += ["", f"![thresholds and widths over the pruning phase](results/{out.stem}.png)", "",
              f"Per-epoch logs: `{doc.get('settings', {}).get('runs', 'runs/lapp-bench')}/<run>/"
              "log.jsonl` (LAPP: `prune/` and `train/`), "
              f"copied to `results/{out.stem}/`."]
    return "\n".join(lines) + "\n"


def _ramp_gap(trace: Path) -> dict:
    """How far the learned cost fell below the ramp's target during the pruning phase, over
    the trace's rows (every 25 steps): the mean and the largest (target - cost), in
    fractions of the dense cost. Empty for runs without a trace."""
    if not trace.is_file():
        return {}
    rows = [json.loads(line) for line in trace.read_text().splitlines()]
    gaps = [r["lapp_target"] - r["lapp_cost_ratio"] for r in rows]
    return {"below_ramp_mean": round(statistics.mean(gaps), 4),
            "below_ramp_max": round(max(gaps), 4)} if gaps else {}


def collect(args) -> None:
    """Copy every finished run's result, plan and logs from ``--runs`` into ``--collect``
    (the folder committed under benchmarks/results/) and add a row per run to its
    summary.json: top-1, params, MACs against the dense network, the learned cost before
    the projection, and the settings that produced it. No training, no timing."""
    import shutil
    dest = Path(args.collect)
    dest.mkdir(parents=True, exist_ok=True)
    dense = ChannelGraph.build(CifarResNet(20), X).cost()
    summary = json.loads((dest / "summary.json").read_text()) if \
        (dest / "summary.json").is_file() else {}
    for name in RUNS:
        folder = Path(args.runs) / name
        if not (folder / "done.json").is_file():
            continue
        phase = f" prune_epochs={args.prune_epochs}" if name.startswith("lapp") else ""
        metric = " params" if args.metric == "params" and name != "dense" else ""
        key = f"{name} seed={args.seed}{phase} {args.precision}{metric}"
        out = dest / key.replace(" ", "_").replace("=", "")
        out.mkdir(exist_ok=True)
        for rel in ("done.json", "model/plan.json", "log.jsonl", "prune/log.jsonl",
                    "prune/lapp_trace.jsonl", "train/log.jsonl", "finetune/log.jsonl"):
            if (folder / rel).is_file():
                shutil.copyfile(folder / rel, out / rel.replace("/", "-"))
        cost = ChannelGraph.build(_load(name, args), X).cost()
        plan = folder / "model" / "plan.json"
        meta = json.loads(plan.read_text())["meta"] if plan.is_file() else {}
        summary[key] = {"run": name, "seed": args.seed,
                        "prune_epochs": args.prune_epochs if phase else None,
                        "precision": args.precision, "epochs": args.epochs,
                        "target": args.target, "metric": args.metric,
                        "top1": json.loads((folder / "done.json").read_text())["test"]["top1"],
                        "params": cost.params, "macs_vs_dense": round(cost.macs / dense.macs, 4),
                        "params_vs_dense": round(cost.params / dense.params, 4),
                        "learned_cost": meta.get("learned"), "folder": out.name,
                        **_ramp_gap(folder / "prune" / "lapp_trace.jsonl")}
    write_text_atomic(dest / "summary.json", json.dumps(summary, indent=1, sort_keys=True))
    for key, row in sorted(summary.items()):
        gap = f"  below ramp mean {row['below_ramp_mean']:.3f} max {row['below_ramp_max']:.3f}" \
            if "below_ramp_mean" in row else ""
        print(f"{key:55s} top-1 {row['top1']:.2f}  MACs {row['macs_vs_dense']:.4f}  "
              f"learned {row['learned_cost']}{gap}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data")
    ap.add_argument("--runs", default="runs/lapp-bench")
    ap.add_argument("--out", default="benchmarks/results/lapp.json")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--prune-epochs", type=float, default=5.0)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--target", type=float, default=0.403)
    ap.add_argument("--metric", choices=("macs", "params"), default="macs",
                    help="what --target is a fraction of (LAPP's budget and the uniform "
                         "network's size); the committed runs without it: MACs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="+", choices=RUNS, default=list(RUNS))
    ap.add_argument("--report", action="store_true", help="tabulate finished runs")
    ap.add_argument("--report-md", default=_REPORT_MD)
    ap.add_argument("--collect", metavar="DIR",
                    help="copy the finished runs' results and logs into DIR (no training)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="training precision of every run (the committed seed-0 runs: fp32)")
    args = ap.parse_args()
    if args.report:
        report(args)
        return
    if args.collect:
        collect(args)
        return
    torch.set_num_threads(args.threads)
    s = spec("resnet20")
    tx, ty, vx, vy = load_cifar10(args.data)
    train = Batches(tx, ty, 128, s.norm, train=True, seed=args.seed, drop_last=True)
    test = Batches(vx, vy, 500, s.norm)
    for name in args.only:
        run_one(name, args, train, test)


if __name__ == "__main__":
    main()
