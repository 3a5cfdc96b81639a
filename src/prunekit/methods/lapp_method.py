"""LAPP's whole schedule (:func:`train_lapp`: train with learnable thresholds, prune, train
the pruned model on), and LAPP under the method protocol."""

from __future__ import annotations

import copy
import json
import math
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from ..errors import TargetError
from ..graph import ChannelGraph
from ..outputs import write_text as write_text_atomic
from ..train.engine import TrainConfig, fit
from .allocate import metric_value
from .base import Result, check_batches, require_classifier
from .lapp import Lapp
from .lapp_bypass import add_bypass
from .lapp_config import LappConfig
from .protocol import Context, MethodBase, register

__all__ = ["LappMethod", "train_lapp"]


def train_lapp(model: nn.Module, example_inputs: Sequence[Any] | torch.Tensor, train: Any,
               test: Any, config: LappConfig, train_config: TrainConfig,
               out_dir: str | Path, progress: bool = True, resume: bool = False,
               latency: Any = None) -> Result:
    """Train ``model`` (in place until the prune, from scratch or pretrained) with LAPP, then
    train the physically pruned model to the end of the schedule. Logs of both phases go to
    ``out_dir/prune`` and ``out_dir/train``; the model as pruned is saved in
    ``out_dir/pruned-at-freeze``. ``resume``: a run killed in the second phase continues
    from its last epoch; one killed in the pruning phase restarts that phase. ``latency``:
    the :class:`prunekit.latency.LatencyModel` of ``metric="latency"`` (its polynomial
    surrogate is the differentiable cost, its prediction the budget at the freeze)."""
    from ..io import load_pruned, save_pruned
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    for name, data in (("train", train), ("test", test)):
        if data is not None:    # one batch of each, checked before any training
            first = next(iter(data), None)
            check_batches(example_inputs, [] if first is None else [first],
                          f"train_lapp ({name} data)", labels=True)
    if config.metric == "latency" and config.bypass:
        raise TargetError("a latency budget with the bypass is not supported (the latency "
                          "model is measured without the bypass branches); use bypass=False")
    base = ChannelGraph.build(model, example_inputs).cost()
    if config.bypass and add_bypass(model, config.bypass_scale) == 0:
        raise TargetError(f"{type(model).__name__} has no bypass slot (bypass_shape); "
                          "use bypass=False")
    graph = ChannelGraph.build(model, example_inputs, ignore=config.ignore)
    phase = config.phase_epochs(train_config.epochs)
    first = min(train_config.epochs, max(1, math.ceil(phase)))
    out = Path(out_dir)
    frozen = out / "pruned-at-freeze"
    if resume and (frozen / "plan.json").is_file():
        pruned, plan = load_pruned(frozen, model, example_inputs)
        from ..inputs import read_json
        hist = read_json(out / "prune" / "history.json", "pruning-phase log")
    else:
        base_value = config.budget(latency=latency).require_latency().predict() \
            if config.metric == "latency" else metric_value(base, config.metric)
        lapp = Lapp(model, graph, config, base_value, phase_end=phase / train_config.epochs,
                    latency=latency)
        lapp.verify(model, example_inputs)
        hist = fit(model, train, test, train_config, out / "prune", progress=progress,
                   callback=lapp, epochs=(0, first))
        plan = lapp.freeze()
        lapp.detach()
        pruned = graph.apply(model.eval(), plan)
        write_text_atomic(out / "prune" / "lapp_trace.jsonl",
                          "".join(json.dumps(r) + "\n" for r in lapp.trace))
        write_text_atomic(out / "prune" / "history.json", json.dumps(hist))
        save_pruned(frozen, pruned, plan, example_inputs)
    if first < train_config.epochs:
        hist = hist + fit(pruned, train, test, train_config, out / "train", progress=progress,
                          epochs=(first, train_config.epochs), resume=resume)
    return Result(pruned.eval(), plan, graph, base, graph.cost(plan), hist)




@register
class LappMethod(MethodBase):
    """Layer-adaptive progressive pruning while training (from scratch or pretrained)."""

    name: ClassVar[str] = "lapp"
    config: ClassVar[type] = LappConfig
    needs: ClassVar[frozenset[str]] = frozenset({"train"})
    resumable: ClassVar[bool] = True
    metrics: ClassVar[tuple[str, ...]] = ("macs", "params", "latency")
    summary: ClassVar[str] = ("LAPP: learnable per-layer thresholds under the budget, pruning "
                              "progressively while training")

    def check(self, config: LappConfig, context: Context, model: nn.Module | None = None
              ) -> None:
        if model is not None:
            require_classifier(model, context.example, self.name)
        tc = context.train_config
        if config.phase_epochs(tc.epochs) > tc.epochs:
            raise TargetError(f"prune_epochs ({config.prune_epochs}) exceeds epochs "
                              f"({tc.epochs})")

    def run(self, model: nn.Module, config: LappConfig, context: Context) -> Result:
        """Trains a copy of ``model``; logs, the model as pruned and plots go to
        ``context.folder`` (a temporary folder when None), which ``resume`` continues."""
        tc = context.train_config
        model = copy.deepcopy(model).train()
        if context.folder is None:
            with tempfile.TemporaryDirectory(prefix="prunekit-lapp-") as tmp:
                result = train_lapp(model, context.inputs, context.train, context.test, config,
                                    tc, tmp, progress=context.progress,
                                    latency=context.latency)
        else:
            result = train_lapp(model, context.inputs, context.train, context.test, config,
                                tc, context.folder, progress=context.progress,
                                resume=context.resume, latency=context.latency)
            _plots(result, Path(context.folder))
        result.config = config
        return result

    def test_config(self, **overrides: Any) -> LappConfig:
        return LappConfig(**{"target": 0.5, **overrides})


def _plots(result: Result, folder: Path) -> None:
    from ..inputs import read_jsonl
    from ..reporting import plot_curves, plot_lapp
    plot_curves(result.history, folder / "training.png")
    trace = folder / "prune" / "lapp_trace.jsonl"
    rows = read_jsonl(trace, "LAPP trace") if trace.is_file() else []
    plot_lapp(rows or result.history, folder / "thresholds.png", "step" if rows else "epoch")
