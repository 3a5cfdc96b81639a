"""One-shot pruning meets MACs/params targets; importance criteria behave as defined."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from prunekit import ChannelGraph
from prunekit.conformance import check_plan
from prunekit.importance import unit_scores
from prunekit.methods import OneShotConfig, prune_oneshot
from prunekit.models import CifarResNet
from tiny_models import make


@pytest.fixture(scope="module")
def r20():
    torch.manual_seed(0)
    model = CifarResNet(20).eval()
    x = torch.randn(2, 3, 32, 32)
    return model, x, ChannelGraph.build(model, x)


@pytest.mark.parametrize("allocation", ["uniform", "global"])
@pytest.mark.parametrize("metric", ["macs", "params"])
@pytest.mark.parametrize("target", [0.25, 0.5, 0.75])
def test_target_met_within_one_percent(r20, allocation, metric, target):
    model, x, graph = r20
    cfg = OneShotConfig(target=target, metric=metric, allocation=allocation)
    res = prune_oneshot(model, x, cfg, graph=graph)
    got = getattr(res.after, metric) / getattr(res.before, metric)
    assert abs(got - target) <= 0.01, (got, target)
    check_plan(model, x, graph, res.plan)


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn", "fpgm", "random"])
def test_every_criterion_prunes_tiny_models(criterion):
    for name in ("residual", "depthwise", "tokens_mha", "cifar_option_a"):
        model, x = make(name)
        res = prune_oneshot(model, x, OneShotConfig(target=0.6, criterion=criterion))
        with torch.no_grad():
            out = res.model(*x)
        assert torch.isfinite(out).all()
        assert res.after.macs < res.before.macs


def test_taylor_needs_data_and_uses_it(r20):
    model, x, graph = r20
    with pytest.raises(ValueError, match="needs data"):
        prune_oneshot(model, x, OneShotConfig(criterion="taylor"), graph=graph)
    data = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))) for _ in range(2)]
    res = prune_oneshot(model, x, OneShotConfig(criterion="taylor"), graph=graph, data=data)
    assert abs(res.after.macs / res.before.macs - 0.5) <= 0.01
    assert all(p.grad is None for p in model.parameters())


def test_round_to_and_min_width(r20):
    model, x, graph = r20
    res = prune_oneshot(model, x, OneShotConfig(target=0.3, round_to=4, min_width=8,
                                                allocation="global"), graph=graph)
    for g in graph.prunable_groups:
        kept = len(res.plan.keep.get(g.id, range(g.width)))
        assert kept >= 8 and (kept % 4 == 0 or kept == g.width), (g.id, kept)


def test_deterministic_and_input_untouched(r20):
    model, x, graph = r20
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = prune_oneshot(model, x, OneShotConfig(criterion="random", seed=3), graph=graph)
    b = prune_oneshot(model, x, OneShotConfig(criterion="random", seed=3), graph=graph)
    c = prune_oneshot(model, x, OneShotConfig(criterion="random", seed=4), graph=graph)
    assert a.plan == b.plan and a.plan != c.plan
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_config_json_round_trip():
    cfg = OneShotConfig(target=0.4, criterion="fpgm", ignore=("fc",))
    assert OneShotConfig.from_json(cfg.to_json()) == cfg


def test_l1_prefers_large_filters():
    """Zeroing one conv's filter and its BN makes that channel the least important."""
    model, x = make("chain")
    graph = ChannelGraph.build(model, x)
    with torch.no_grad():
        model.f[0][0].weight[3].zero_()
        model.f[0][1].weight[3] = 0.0
        model.f[1][0].weight[:, 3].zero_()
    g = graph.group("f.0.0")
    for crit in ("l1", "l2"):
        s = unit_scores(graph, model, crit)[g.units]
        assert int(np.argmin(s)) == 3


def test_bn_criterion_ranks_by_scale():
    model, x = make("chain")
    graph = ChannelGraph.build(model, x)
    with torch.no_grad():
        model.f[0][1].weight.copy_(torch.arange(1.0, 9.0))
    s = unit_scores(graph, model, "bn")[graph.group("f.0.0").units]
    assert np.argsort(s).tolist() == list(range(8))


def test_fpgm_scores_duplicate_filters_lowest():
    model, x = make("chain")
    graph = ChannelGraph.build(model, x)
    with torch.no_grad():
        w = model.f[0][0].weight
        w[5] = w[:].mean(0)  # the geometric centre is the most replaceable filter
    s = unit_scores(graph, model, "fpgm")[graph.group("f.0.0").units]
    assert int(np.argmin(s)) == 5


def test_ignore_pattern_freezes_group():
    model, x = make("chain")
    graph = ChannelGraph.build(model, x, ignore=("f.1.*",))
    g = graph.group("f.1.0")
    assert g.frozen and "ignore pattern" in g.reasons[0]
    assert not graph.group("f.0.0").frozen


class AuxNet(nn.Module):
    """An auxiliary head used only in training mode (like GoogLeNet's)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.aux = nn.Conv2d(8, 2, 1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        y = torch.relu(self.a(x))
        out = self.fc(self.b(y).mean((2, 3)))
        if self.training:
            return out, self.aux(y).mean((2, 3))
        return out


def test_training_only_branch_is_followed():
    model = AuxNet()
    x = torch.randn(2, 3, 8, 8)
    graph = ChannelGraph.build(model, x)
    assert len(graph.graphs) == 2 and model.training
    res = prune_oneshot(model, x, OneShotConfig(target=0.5), graph=graph)
    pruned = res.model.train()
    out, aux = pruned(x)
    assert aux.shape == (2, 2) and pruned.aux.in_channels == pruned.a.out_channels < 8
