"""The method protocol: configs, context, registry, the budget projector, and a method
written outside prunekit (the docs' example) running everywhere a built-in one does."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from prunekit import ChannelGraph, TargetError, UnreachableTargetError
from prunekit.methods import (Context, MethodBase, MethodConfig, OneShotConfig, Result,
                              get_method, methods, prune, register)
from prunekit.methods.allocate import Budget
from prunekit.methods.emo import EmoConfig
from prunekit.methods.projector import Projector, bisect
from prunekit.methods.protocol import _REGISTRY
from prunekit.testing import CHECKS, architectures, check_method


# ------------------------------------------------------------------ the docs' example
@dataclass(frozen=True)
class RandomConfig(MethodConfig):
    """Keep random channels (a baseline): ``spread`` scales the scores' noise."""

    spread: float = 1.0


class RandomMethod(MethodBase):
    name: ClassVar[str] = "random-demo"
    config: ClassVar[type] = RandomConfig
    summary: ClassVar[str] = "random channels, projected onto the budget"

    def run(self, model: nn.Module, config: RandomConfig, context: Context) -> Result:
        graph = ChannelGraph.build(model, context.inputs, ignore=config.ignore)
        scores = np.random.default_rng(config.seed).random(graph.n_units) * config.spread
        projector = Projector(graph, config.budget(), scores)
        order = [np.argsort(scores[g.units]) for g in projector.groups]
        keep = projector.project(lambda t: projector.removal_mask(
            order, [int(t * len(o)) for o in order]))
        plan = graph.plan_of_mask(keep, {"method": self.name})
        return Result(graph.apply(model, plan), plan, graph, graph.cost(), graph.cost(plan),
                      config=config)


@pytest.fixture
def demo():
    register(RandomMethod)
    yield get_method("random-demo")
    _REGISTRY.pop("random-demo", None)


def test_a_registered_method_passes_every_conformance_check(demo):
    for arch in ("cnn-bn", "timm-vit"):
        report = check_method(demo, architectures()[arch])
        assert report == {name: "ok" for name in CHECKS}, report


def test_a_registered_method_is_on_the_command_line_with_its_options(demo, tmp_path, capsys):
    from prunekit.cli import main
    out = tmp_path / "run"
    assert main(["prune", "--model", "resnet20", "--method", "random-demo", "--target", "0.6",
                 "--set", "spread=2", "--out", str(out)]) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert plan["meta"]["method"] == "random-demo"
    metrics = json.loads((out / "metrics.json").read_text())
    assert abs(metrics["after"]["macs"] / metrics["before"]["macs"] - 0.6) < 0.01
    capsys.readouterr()
    assert main(["prune", "--model", "resnet20", "--method", "random-demo", "--set",
                 "spread=wide", "--out", str(tmp_path / "bad")]) == 2
    assert "spread must be a number" in capsys.readouterr().err
    assert main(["prune", "--model", "resnet20", "--method", "oneshot", "--set", "spread=2",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "spread is not used by method oneshot" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------ configs
def test_configs_coerce_text_and_refuse_what_they_do_not_know():
    cfg = EmoConfig.from_dict({"pop_size": "6", "groups": "layer1*,layer2*", "target": "0.4",
                               "min_keep": 0.2})
    assert cfg.pop_size == 6 and cfg.groups == ("layer1*", "layer2*") and cfg.target == 0.4
    assert OneShotConfig.from_dict({"ignore": ["fc"]}).ignore == ("fc",)
    d = cfg.to_dict()
    assert d["method"] == "emo" and d["version"] == EmoConfig.VERSION
    assert EmoConfig.from_dict(d) == cfg and EmoConfig.from_json(cfg.to_json()) == cfg
    for bad, needle in (({"pop_size": "ten"}, "pop_size must be an integer"),
                        ({"pop_size": 2}, "pop_size >= 4"),
                        ({"popsize": 8}, "popsize is not an option of method emo"),
                        ({"target": 1.5}, "target"),
                        ({"method": "lapp"}, "for method 'lapp'"),
                        ({"version": 99}, "newer than this prunekit")):
        with pytest.raises(TargetError, match=needle):
            EmoConfig.from_dict(bad)
    with pytest.raises(TargetError, match="must be true or false"):
        get_method("submodular").config.from_dict({"reweight": "perhaps"})


def test_every_method_shares_the_budget_fields():
    shared = {"target", "metric", "round_to", "min_width", "ignore", "groups", "seed"}
    for name, m in methods().items():
        assert issubclass(m.config, MethodConfig), name
        assert shared <= set(m.config.__dataclass_fields__), name


def test_the_registry_and_the_context_refuse_clearly():
    with pytest.raises(TargetError, match="unknown method 'magic'; available: .*oneshot"):
        get_method("magic")
    x = torch.randn(1, 3, 32, 32)
    model = architectures()["cnn-bn"].model()
    with pytest.raises(TargetError, match="needs unlabeled calibration inputs"):
        prune(model, get_method("submodular").test_config(), Context(x))
    with pytest.raises(TargetError, match="needs labelled training batches"):
        prune(model, get_method("lapp").test_config(), Context(x))
    with pytest.raises(TargetError, match="executor must be"):
        Context(x, executor="mpi")
    r = prune(model, OneShotConfig(target=0.5), x)      # a bare example is a context
    assert abs(r.after.macs / r.before.macs - 0.5) <= 0.01


# ------------------------------------------------------------------ the projector
def test_bisect_finds_the_boundary():
    assert abs(bisect(lambda t: t >= 0.3, 0.0, 1.0) - 0.3) < 1e-9
    assert bisect(lambda k: k >= 7, 0, 20, integer=True) == 7
    assert bisect(lambda t: False, 0.0, 1.0) == 1.0


@pytest.mark.parametrize("round_to,min_width", [(1, 1), (4, 1), (1, 6), (8, 8)])
def test_the_projector_meets_the_budget_with_valid_widths(round_to, min_width):
    arch = architectures()["cnn-bn"]
    graph = ChannelGraph.build(arch.model(), arch.example())
    scores = np.random.default_rng(0).random(graph.n_units)
    pj = Projector(graph, Budget(0.5, "macs", round_to, min_width), scores)
    order = [np.argsort(scores[g.units]) for g in pj.groups]
    keep = pj.project(lambda t: pj.removal_mask(order, [int(t * len(o)) for o in order]))
    assert 0.5 - 0.01 <= pj.ratio(keep) <= 0.5
    for g in pj.groups:
        k = int(keep[g.units].sum())
        assert k >= min(min_width, g.width) and (k % round_to == 0 or k == g.width), (g.id, k)
    widths = {g.id: max(1, g.width // 3) for g in pj.groups}   # a searched shape, too small
    scaled = pj.scale_widths(widths, lambda w: _keep_first(graph, w))
    assert 0.5 - 0.01 <= pj.ratio(scaled) <= 0.5


def _keep_first(graph: ChannelGraph, widths: dict[str, int]) -> np.ndarray:
    keep = np.ones(graph.n_units, dtype=bool)
    for gid, k in widths.items():
        g = graph.group(gid)
        keep[g.units[k:]] = False
    return keep


def test_an_unreachable_budget_names_the_closest_value():
    arch = architectures()["cnn-bn"]
    graph = ChannelGraph.build(arch.model(), arch.example())
    pj = Projector(graph, Budget(0.05, "macs", min_width=16))
    with pytest.raises(UnreachableTargetError, match=r"unreachable: .* keeps 0\.\d+"):
        pj.project(lambda t: pj.removal_mask([np.arange(g.width) for g in pj.groups],
                                             [int(t * g.width) for g in pj.groups]))
