"""Tables and plots for runs: before/after, per-layer widths, training curves."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from .graph.cost import flop_counter

from .graph.report import table


def latency_ms(model: nn.Module, example: torch.Tensor, batch: int = 64, runs: int = 20) -> float:
    """Median CPU latency of one batch (inference mode, after 3 warm-up runs)."""
    x = example.new_zeros((batch, *example.shape[1:])).normal_()
    model.eval()
    times = []
    with torch.inference_mode():
        for i in range(runs + 3):
            t = time.perf_counter()
            model(x)
            if i >= 3:
                times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def _cost(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    with torch.no_grad(), flop_counter() as fc:
        model.eval()(example)
    return sum(p.numel() for p in model.parameters()), fc.get_total_flops() // 2


def before_after(original: nn.Module, pruned: nn.Module, example: torch.Tensor,
                 test: Any | None) -> tuple[str, dict]:
    rows, metrics = [], {}
    for name, m in (("before", original), ("after", pruned)):
        params, macs = _cost(m, example)
        entry = {"params": params, "macs": macs, "latency_ms_b64": latency_ms(m, example)}
        if test is not None:
            from .train import evaluate
            entry.update(evaluate(m, test))
        metrics[name] = entry
    b, a = metrics["before"], metrics["after"]
    for key, label, fmt in (("top1", "top-1 (%)", "{:.2f}"), ("params", "params", "{:,}"),
                            ("macs", "MACs", "{:,}"),
                            ("latency_ms_b64", "CPU latency, batch 64 (ms)", "{:.1f}")):
        if key in b:
            ratio = f"{a[key] / b[key]:.3f}x" if b[key] else ""
            rows.append([label, fmt.format(b[key]), fmt.format(a[key]), ratio])
    return table(rows, ["", "before", "after", "after/before"]), metrics


def layer_table(model: nn.Module, example: torch.Tensor) -> str:
    with torch.no_grad(), flop_counter() as fc:
        model.eval()(example)
    counts = fc.get_flop_counts()
    rows = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            cin = getattr(m, "in_channels", getattr(m, "in_features", 0))
            cout = getattr(m, "out_channels", getattr(m, "out_features", 0))
            macs = sum(counts.get(name, {}).values()) // 2
            rows.append([name, type(m).__name__, str(cin), str(cout),
                         f"{sum(p.numel() for p in m.parameters()):,}", f"{macs:,}"])
    return table(rows, ["layer", "type", "in", "out", "params", "MACs"])


def _plt():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        return None


def _save(fig: Any, path: Path) -> None:
    """Write a figure atomically (through prunekit.outputs) and free it."""
    from .outputs import save_figure
    try:
        save_figure(fig, path)
    finally:
        _plt().close(fig)


def plot_widths(original: nn.Module, pruned: nn.Module, path: Path) -> bool:
    plt = _plt()
    if plt is None:
        return False
    names, before, after = [], [], []
    new = dict(pruned.named_modules())
    for name, m in original.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and name in new:
            names.append(name)
            before.append(getattr(m, "out_channels", getattr(m, "out_features", 0)))
            p = new[name]
            after.append(getattr(p, "out_channels", getattr(p, "out_features", 0)))
    fig, ax = plt.subplots(figsize=(max(6, len(names) * 0.18), 3.5))
    ax.bar(range(len(names)), before, color="#cccccc", label="before")
    ax.bar(range(len(names)), after, color="#1f77b4", label="after")
    ax.set_ylabel("output channels")
    ax.set_xlabel("conv/linear layer (in order)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend()
    fig.tight_layout()
    _save(fig, path)
    return True


def plot_curves(history: list[dict], path: Path) -> bool:
    plt = _plt()
    if plt is None or not history:
        return False
    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(ep, [h["train_loss"] for h in history], label="train loss")
    if "test_loss" in history[0]:
        a.plot(ep, [h["test_loss"] for h in history], label="test loss")
    b.plot(ep, [h["train_top1"] for h in history], label="train top-1")
    if "test_top1" in history[0]:
        b.plot(ep, [h["test_top1"] for h in history], label="test top-1")
    for ax in (a, b):
        ax.set_xlabel("epoch")
        ax.legend()
    fig.tight_layout()
    _save(fig, path)
    return True


def plot_lapp(history: list[dict], path: Path, x_key: str = "epoch") -> bool:
    """LAPP's learned thresholds and kept widths per group over the pruning phase
    (``history``: epoch rows, or the step trace with ``x_key='step'``)."""
    plt = _plt()
    rows = [h for h in history if "lapp_thresholds" in h]
    if plt is None or not rows:
        return False
    ep = [h[x_key] for h in rows]
    groups = list(rows[0]["lapp_widths"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, g in enumerate(groups):
        a.plot(ep, [h["lapp_thresholds"][i] for h in rows], marker=".", label=g)
        b.plot(ep, [h["lapp_widths"][g] for h in rows], marker=".", label=g)
    a.set_ylabel("threshold (BN scale |γ| at quantile r)")
    b.set_ylabel("kept channels")
    b2 = b.twinx()
    b2.plot(ep, [h["lapp_cost_ratio"] for h in rows], "k--", label="cost / dense")
    b2.plot(ep, [h["lapp_target"] for h in rows], "k:", label="target now")
    b2.set_ylabel("cost / dense cost")
    b2.legend(fontsize=7, loc="upper right")
    for ax in (a, b):
        ax.set_xlabel(x_key)
    a.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    _save(fig, path)
    return True


def plot_front(result, path: Path) -> bool:
    """EMO: every sub-network's front and the whole-network front (cost against impairment)."""
    plt = _plt()
    if plt is None:
        return False
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, front in enumerate(result.subnet_fronts):
        a.plot([p["cost_ratio"] for p in front], [p["impairment"] for p in front], "o-",
               markersize=3, label=f"sub-network {i}")
    a.set_xlabel("cost of the sub-network's layers / full")
    a.set_ylabel("feature impairment")
    a.legend(fontsize=7)
    b.plot([r["cost_ratio"] for r in result.front], [r["impairment"] for r in result.front],
           "o-", color="k")
    b.set_xlabel("whole-network cost / dense")
    b.set_ylabel("output impairment")
    b.set_title("whole-network front")
    fig.tight_layout()
    _save(fig, path)
    return True


def plot_spaces(initial: list[dict], refined: list[dict], analysis: dict, path: Path) -> bool:
    """Error EDFs of the initial and refined spaces, and error against MACs per parameter."""
    plt = _plt()
    if plt is None:
        return False
    import numpy as np
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, pop in (("initial", initial), ("refined", refined)):
        e = np.sort([p["error"] for p in pop])
        a.step(e, np.arange(1, len(e) + 1) / len(e), where="post",
               label=f"{name} (n={len(e)}, median {np.median(e):.2f})")
        b.scatter([p["rho"] for p in pop], [p["error"] for p in pop], s=8, label=name)
    lo, hi = analysis["interval"]
    b.axvspan(lo, hi, color="green", alpha=0.15, label="bootstrap 95% of the best")
    a.set_xlabel("proxy error (%)")
    a.set_ylabel("fraction of subnetworks (EDF)")
    b.set_xlabel("MACs per parameter")
    b.set_ylabel("proxy error (%)")
    for ax in (a, b):
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    return True
