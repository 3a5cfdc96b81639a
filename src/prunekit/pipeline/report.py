"""What a compress run reports: before/after (top-1 on the test set, params, MACs,
measured latency), the stages, the recovery curve and the per-layer widths, as
``report.md``, ``metrics.json`` and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .compress import CompressResult
from .config import CompressConfig
from .stages import CompressData

__all__ = ["measure", "widths", "write_report"]


def widths(original: nn.Module, pruned: nn.Module) -> list[dict]:
    """Per conv/linear layer: its output width before and after."""
    new = dict(pruned.named_modules())
    rows = []
    for name, m in original.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and name in new:
            def out(x: nn.Module) -> int:
                return int(getattr(x, "out_channels", getattr(x, "out_features", 0)))
            rows.append({"layer": name, "before": out(m), "after": out(new[name])})
    return rows


def measure(original: nn.Module, pruned: nn.Module, example: Any, data: CompressData | None,
            target: Any) -> dict[str, dict]:
    """Before and after: test top-1 (where test data is given), held-out top-1, params and
    MACs (PyTorch's FLOP counter), and latency on ``target`` (a
    :class:`prunekit.latency.Target`): the dense model's median, the pruned one's from
    the median ratio of alternating measurements."""
    from ..conformance import measured_cost
    from ..latency import alternating_ratio, batched, timer_for
    from ..train import evaluate
    ex = example if isinstance(example, tuple) else (example,)
    inputs = batched(ex, target.batch)
    timer = timer_for(target)
    dense_s = timer.time(original.eval(), inputs)
    ratio = alternating_ratio(timer, original, pruned.eval(), inputs)
    out = {}
    for name, m, secs in (("before", original, dense_s), ("after", pruned, dense_s * ratio)):
        params, macs = measured_cost(m, ex)
        row: dict[str, Any] = {"params": params, "macs": macs, "latency_ms": 1e3 * secs}
        for split in ("test", "heldout"):
            batches = None if data is None else getattr(data, split)
            if batches is not None:
                row[f"{split}_top1"] = evaluate(m, batches)["top1"]
        out[name] = row
    out["target"] = target.to_dict()
    return out


def _table(m: dict) -> str:
    b, a = m["before"], m["after"]
    lines = ["| | before | after | after / before |", "|---|---|---|---|"]
    for key, label, fmt in (("test_top1", "top-1, test (%)", "{:.2f}"),
                            ("heldout_top1", "top-1, held-out (%)", "{:.2f}"),
                            ("params", "params", "{:,}"), ("macs", "MACs", "{:,}"),
                            ("latency_ms", "latency (ms per batch)", "{:.2f}")):
        if key not in b:
            continue
        ratio = f"{b[key] / a[key]:.2f}x faster" if key == "latency_ms" else \
            f"{a[key] - b[key]:+.2f} points" if key.endswith("top1") else f"{a[key] / b[key]:.3f}"
        lines.append(f"| {label} | {fmt.format(b[key])} | {fmt.format(a[key])} | {ratio} |")
    return "\n".join(lines)


def write_report(folder: Path, config: CompressConfig, result: CompressResult,
                 metrics: dict, layer_widths: list[dict], notes: list[str]) -> None:
    """``report.md`` and ``recovery.png`` in ``folder``."""
    from ..outputs import write_text
    t = metrics["target"]
    s = result.stages
    lines = [f"# prunekit compress: {config.metric} to {config.target:g}", "",
             f"Selection: **{result.method}**; BatchNorm re-estimated: {_bn_text(s)}; "
             "recovery: " + _recovery_text(config, result),
             "", _table(metrics), "",
             f"Latency: {t['backend']} on {t['device']}, batch {t['batch']}, {t['threads']} "
             "thread(s); the pruned model's from the median ratio of alternating "
             "measurements against the unpruned one." + _requested(config, metrics), "",
             "## Stages (held-out top-1)", "",
             "| stage | seconds | held-out top-1 (%) |", "|---|---|---|"]
    for name in ("select", "bn", "recover"):
        if name in s:
            top = s[name].get("heldout_top1")
            lines.append(f"| {name} | {s[name]['seconds']:.0f} | "
                         f"{'' if top is None else f'{top:.2f}'} |")
    if result.curve:
        lines += ["", "## Recovery curve", "", "![recovery](recovery.png)", "",
                  "| round | minutes of training | held-out top-1 (%) |", "|---|---|---|"]
        lines += [f"| {c['round']} | {c['minutes']:.1f} | "
                  f"{'' if c['heldout_top1'] is None else format(c['heldout_top1'], '.2f')} |"
                  for c in result.curve]
        _plot(result.curve, folder / "recovery.png")
    lines += ["", "## Widths", "", "![widths](widths.png)", "",
              "| layer | before | after |", "|---|---|---|"]
    lines += [f"| {w['layer']} | {w['before']} | {w['after']} |" for w in layer_widths]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    write_text(folder / "report.md", "\n".join(lines) + "\n")


def _requested(config: CompressConfig, metrics: dict) -> str:
    if config.metric != "latency":
        return ""
    got = metrics["before"]["latency_ms"] / metrics["after"]["latency_ms"]
    return f" Requested {1 / config.target:.2f}x faster; measured {got:.2f}x."


def _bn_text(stages: dict) -> str:
    bn = stages.get("bn")
    if bn is None:
        return "no"
    if bn.get("kept", True):
        return f"yes ({bn['batches']} batches)"
    return (f"tried, not kept (held-out top-1 {bn['heldout_top1_reestimated']:.2f}% against "
            f"{bn['heldout_top1']:.2f}% with the selection's statistics)")


def _recovery_text(config: CompressConfig, result: CompressResult) -> str:
    sched = result.schedule
    if sched is None:
        return "none"
    budget = f"{config.budget_minutes:g} minutes" if config.budget_minutes else \
        f"{config.epochs} epochs"
    best = result.stages.get("recover", {}).get("best_round")
    from .stages import precision
    return (f"distillation from the unpruned model ({budget}: {sched.total_steps} steps in "
            f"{sched.epochs} rounds, lr {config.lr:g}, alpha {config.distill_alpha:g}, "
            f"T {config.distill_temperature:g}, {precision(config)}); kept round {best} "
            "(best held-out top-1)")


def _plot(curve: list[dict], path: Path) -> bool:
    from ..reporting import _plt, _save
    plt = _plt()
    pts = [c for c in curve if c["heldout_top1"] is not None]
    if plt is None or not pts:
        return False
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.plot([c["minutes"] for c in pts], [c["heldout_top1"] for c in pts], "o-")
    ax.set_xlabel("minutes of recovery training")
    ax.set_ylabel("held-out top-1 (%)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    return True
