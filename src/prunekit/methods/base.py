"""What every method returns."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import TargetError
from ..graph import ChannelGraph, Cost
from ..plan import Plan


@dataclass(frozen=True)
class FrontPoint:
    """One plan of a method's front (EMO-DIR's Pareto front, a pruning space's
    population): its cost as a fraction of the original's and what the method measured
    (``scores``: e.g. impairment, error)."""

    plan: Plan
    cost_ratio: float
    scores: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"plan": self.plan.to_dict(), "cost_ratio": self.cost_ratio,
                "scores": dict(self.scores)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FrontPoint":
        return cls(Plan.from_dict(d["plan"]), float(d["cost_ratio"]), dict(d.get("scores", {})))


@dataclass
class Result:
    """A pruned model and how it came to be: the ``plan`` chosen by the budget the
    config gave, the cost ``before`` and ``after``, the method's ``history`` and, for
    methods that search, the ``front`` of plans they found."""

    model: nn.Module
    plan: Plan
    graph: ChannelGraph
    before: Cost
    after: Cost
    history: list[dict[str, Any]] = field(default_factory=list)
    front: list[FrontPoint] = field(default_factory=list)
    config: Any = None

    def save(self, folder: str | os.PathLike[str], example_inputs: Any,
             overwrite: bool = False) -> Path:
        """``folder/`` (written atomically): ``model/`` (plan and weights, loadable with
        :func:`prunekit.io.load_pruned`), ``result.json`` (config, cost, history, front)."""
        from ..io import save_pruned
        from ..outputs import staged_folder, write_text
        with staged_folder(folder, overwrite=overwrite) as tmp:
            save_pruned(tmp / "model", self.model, self.plan, example_inputs,
                        ignore=tuple(getattr(self.config, "ignore", ()) or ()))
            doc = {"config": self.config.to_dict() if self.config is not None else None,
                   "before": vars(self.before), "after": vars(self.after),
                   "history": self.history, "front": [p.to_dict() for p in self.front]}
            write_text(tmp / "result.json", json.dumps(doc, indent=1, default=_plain))
        return Path(folder)

    @classmethod
    def load(cls, folder: str | os.PathLike[str], base_model: nn.Module,
             example_inputs: Any) -> "Result":
        """Inverse of :meth:`save`: ``base_model`` is a fresh instance of the original."""
        from ..inputs import read_json
        from ..io import load_pruned
        from .protocol import get_method
        folder = Path(folder)
        doc = read_json(folder / "result.json", "saved result")
        model, plan = load_pruned(folder / "model", base_model, example_inputs)
        cfg = doc.get("config")
        config = get_method(cfg["method"]).config.from_dict(cfg) if cfg else None
        graph = ChannelGraph.build(base_model, example_inputs,
                                   ignore=tuple(getattr(config, "ignore", ()) or ()))
        return cls(model, plan, graph, Cost(**doc["before"]), Cost(**doc["after"]),
                   list(doc.get("history", [])),
                   [FrontPoint.from_dict(p) for p in doc.get("front", [])], config)

    def summary(self) -> str:
        def pct(a: int, b: int) -> str:
            return f"{100.0 * a / b:.1f}%" if b else "n/a"
        return (f"params {self.before.params:,} -> {self.after.params:,} "
                f"({pct(self.after.params, self.before.params)}), "
                f"MACs {self.before.macs:,} -> {self.after.macs:,} "
                f"({pct(self.after.macs, self.before.macs)})")


def _plain(v: Any) -> Any:
    """JSON for the odd values a history holds (numpy scalars, tuples, paths)."""
    if hasattr(v, "item"):
        return v.item()
    return str(v)


def check_batches(example: Any, batches: list, who: str, labels: bool = False) -> None:
    """Calibration or training batches are float tensors shaped like the example input
    but for the batch size (with ``labels``: (inputs, integer labels) pairs). Anything
    else is refused here, with the batch named, not deep inside a layer."""
    if not batches:
        raise TargetError(f"{who} needs at least one {'training' if labels else 'calibration'}"
                          " batch")
    ex = example[0] if isinstance(example, (tuple, list)) and len(example) == 1 else example
    want = tuple(ex.shape[1:]) if isinstance(ex, torch.Tensor) else None
    for i, b in enumerate(batches):
        y = None
        if labels:
            if not isinstance(b, (tuple, list)) or len(b) != 2:
                raise TargetError(f"{who}: batch {i} must be an (inputs, labels) pair, got "
                                  f"{type(b).__name__}")
            b, y = b
        floats = not isinstance(ex, torch.Tensor) or ex.is_floating_point()
        if not isinstance(b, torch.Tensor) or b.is_floating_point() != floats or \
                b.dtype == torch.bool or b.dim() < 1 or len(b) == 0:
            kind = "float" if floats else "integer (like the example input's)"
            raise TargetError(f"{who}: batch {i} must be a non-empty {kind} tensor, got "
                              f"{type(b).__name__}"
                              + (f" of {b.dtype}" if isinstance(b, torch.Tensor) else ""))
        if want is not None and tuple(b.shape[1:]) != want:
            raise TargetError(f"{who}: batch {i} has shape {tuple(b.shape)}; the example "
                              f"input is {tuple(ex.shape)}, so batches must be "
                              f"(N, {', '.join(map(str, want))})")
        if labels and (not isinstance(y, torch.Tensor) or y.is_floating_point()
                       or y.shape[:1] != b.shape[:1]):
            raise TargetError(f"{who}: batch {i} needs integer labels, one per input, got "
                              + (f"{y.dtype} of shape {tuple(y.shape)}"
                                 if isinstance(y, torch.Tensor) else type(y).__name__))


def require_classifier(model: nn.Module, example: Any, who: str) -> None:
    """Refuse, before any work, a model that is not a classifier (one tensor of logits,
    or an output record with ``logits``, shaped (batch, classes)): ``who`` trains or
    scores candidates by cross-entropy and top-1 error."""
    from ..train.engine import logits_of
    inputs = example if isinstance(example, tuple) else (example,)
    was = model.training
    try:
        with torch.no_grad():
            out = model.eval()(*inputs)
    finally:
        model.train(was)
    try:
        logits = logits_of(out)
    except TypeError:
        logits = None
    if logits is None or logits.dim() != 2 or not logits.is_floating_point():
        got = type(out).__name__ if logits is None else f"a tensor of shape {tuple(logits.shape)}"
        raise TargetError(f"method {who} trains a classifier by cross-entropy on its logits "
                          f"(batch, classes); this model returns {got}. Prune it with a method "
                          "that needs no labels (oneshot, submodular, emo), or train with your "
                          "own loss and loop")
