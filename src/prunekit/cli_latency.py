"""``prunekit latency`` and the latency target of ``prunekit prune --metric latency``: build
the model's latency tables on this machine (cached), calibrate them on whole-model
measurements, and validate predicted against measured latency on the plans of every
allocation the library makes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cli_inputs import example_of, model_of, out_folder, write_json
from .errors import CliError, PrunekitError

LATENCY_OPTIONS = ("device", "backend", "batch", "threads")


def target_of(cfg: dict):
    """The :class:`prunekit.latency.Target` of the options (checked available here)."""
    from .latency import Target
    given = {k: cfg[k] for k in LATENCY_OPTIONS if cfg.get(k) is not None}
    try:
        target = Target(**given)
        target.check_available()
    except PrunekitError as exc:
        raise CliError(str(exc)) from None
    return target


def latency_model(cfg: dict, model: torch.nn.Module, s: Any, ignore=()):
    """The calibrated latency model of ``model`` on the options' target."""
    from .graph import ChannelGraph
    from .latency import LatencyModel
    target = target_of(cfg)
    graph = ChannelGraph.build(model, example_of(s), ignore=tuple(ignore))
    lm = LatencyModel(graph, target)
    lm.measure_tables(progress=True)
    lm.calibrate(model)
    return lm


def speedups(lm: Any, model: torch.nn.Module, result: Any, target: float,
             rounds: list[dict] | None = None) -> dict[str, Any]:
    """Requested, predicted and measured speed-ups of ``result`` over ``model``; with the
    ``rounds`` of :func:`~prunekit.latency.meet_measured`, the prediction is the one made
    before the chosen plan was measured (the model has been refined on it since)."""
    from .latency import measured_ratio, time_model
    dense = time_model(lm.timer, lm.graph, model, lm.target.batch)
    ratio = measured_ratio(lm, model, result.model)
    keep = lm.graph.keep_mask(result.plan)
    chosen = next((r for r in rounds or [] if r.get("chosen")), None)
    predicted = 1.0 / chosen["predicted"] if chosen else lm.predict() / lm.predict(keep)
    return {"target": lm.target.to_dict(), "requested": 1.0 / target,
            "predicted": predicted, "measured": 1.0 / ratio,
            "dense_ms": 1e3 * dense, "pruned_ms": 1e3 * dense * ratio}


def validation_plans(lm: Any, model: torch.nn.Module, s: Any, target: float
                     ) -> dict[str, np.ndarray]:
    """Dense, and one plan at ``target`` of every allocation under MACs and latency (a
    latency target below what the model can reach is skipped, with a note)."""
    import sys

    from .errors import UnreachableTargetError
    from .methods.allocate import ALLOCATIONS
    from .methods.oneshot import OneShotConfig, prune_oneshot
    plans = {"dense": np.ones(lm.graph.n_units, dtype=bool)}
    for alloc in ALLOCATIONS:
        for metric in ("macs", "latency"):
            cfg = OneShotConfig(target=target, metric=metric, allocation=alloc)
            try:
                res = prune_oneshot(model, example_of(s), cfg, latency=lm, verify=False)
            except UnreachableTargetError as exc:
                print(f"note: {alloc}/{metric} skipped: {exc}", file=sys.stderr)
                continue
            plans[f"{alloc}/{metric}"] = lm.graph.keep_mask(res.plan)
    return plans


def cmd_latency(cfg: dict) -> int:
    """Build (or read from the cache), calibrate and validate the latency model."""
    from .graph.report import table
    model, s = model_of(cfg)
    out = out_folder(cfg) if cfg.get("out") else None
    lm = latency_model(cfg, model, s)
    plans = validation_plans(lm, model, s, float(cfg["target"]))
    rows = lm.validate(model, plans)
    base = lm.graph.cost().macs
    for r in rows:
        r["macs_ratio"] = lm.graph.cost_of_mask(plans[r["plan"]]).macs / base
    print(table([[r["plan"], f"{r['macs_ratio']:.3f}", f"{r['predicted_ms']:.2f}",
                  f"{r['measured_ms']:.2f}", f"{100 * r['error']:+.1f}%"] for r in rows],
                ["plan", "MACs/dense", "predicted (ms)", "measured (ms)", "error"]))
    worst = max(abs(r["error"]) for r in rows)
    t = lm.target
    print(f"{t.backend} on {t.device}, batch {t.batch}, {t.threads} threads; "
          f"{len(lm.tables)} layer tables; largest error {100 * worst:.1f}%")
    if lm.align > 1:
        print(f"widths off multiples of {lm.align} measured slower in the whole model: "
              f"budgets keep widths on multiples of {lm.align}")
    if out is not None:
        from .outputs import staged_folder
        with staged_folder(out, overwrite=bool(cfg.get("overwrite"))) as tmp:
            write_json(tmp / "latency.json", {
                "target": t.key(), "coefficients": lm.coef.tolist(),
                "align": lm.align, "misalignment_penalty": lm.penalty, "fit": lm.fit,
                "calibration": lm.calibration, "validation": rows, "dense_macs": base,
                "tables": [{"layer": tb.sig, "points": {f"{a},{b}": v for (a, b), v in
                                                       sorted(tb.points.items())}}
                           for tb in lm.tables]})
            plot_tables(lm, tmp / "latency.png")
        print(f"outputs: {out}/ (latency.json, latency.png)")
    return 0


def plot_tables(lm: Any, path: Path, top: int = 4) -> bool:
    """Measured latency against output width (input at full width) of the ``top``
    costliest layer configurations."""
    from .reporting import _plt, _save
    plt = _plt()
    if plt is None:
        return False
    full = [(tb.seconds(tb.sig["cin"], tb.sig["cout"]), tb) for tb in lm.tables]
    full.sort(key=lambda e: -e[0])
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for _, tb in full[:top]:
        xs = [b for (a, b) in sorted(tb.points) if a == max(tb.grid_in)]
        ys = [1e3 * tb.points[(max(tb.grid_in), b)] for b in xs]
        sig = tb.sig
        label = f"{sig['kind']} {sig['cin']}->{sig['cout']} {sig['input'][2:]}"
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel("output width")
    ax.set_ylabel("latency (ms)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    return True
