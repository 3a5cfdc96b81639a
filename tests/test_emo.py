"""EMO-DIR: Pareto utilities, division, fronts, determinism across executors, resume."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from prunekit.errors import TargetError
from prunekit.methods.emo import EmoConfig, EmoSearch, hypervolume, non_dominated
from prunekit.methods.split import Runner, features, split
from prunekit.models import CifarResNet


def _brute_nd(F):
    return sorted(i for i in range(len(F)) if not any(
        (F[j] <= F[i]).all() and (F[j] < F[i]).any() for j in range(len(F))))


def _brute_hv2(F, ref):
    pts = sorted((p for p in F if (p < ref).all()), key=lambda p: p[0])
    hv, best = 0.0, ref[1]
    for x, y in pts:       # sweep by the first objective; the staircase below the best y
        if y < best:
            hv += (ref[0] - x) * (best - y)
            best = y
    return hv


def test_non_dominated_and_hypervolume_against_brute_force():
    rng = np.random.default_rng(0)
    for n in (1, 5, 40):
        F = rng.random((n, 2))
        F[rng.integers(0, n)] = F[0]  # duplicates allowed
        assert sorted(non_dominated(F).tolist()) == _brute_nd(F)
        ref = np.array([1.05, 1.05])
        assert hypervolume(F, ref) == pytest.approx(_brute_hv2(F, ref), rel=1e-9)
    assert hypervolume(np.array([[2.0, 2.0]]), (1.0, 1.0)) == 0.0


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = CifarResNet(14, widths=(4, 8, 16))  # doubling widths: equal MACs per stage
    data = torch.randn(16, 3, 32, 32)
    with torch.no_grad():  # exact BN statistics of this data: recalibration is a no-op
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        model.train()
        model(data)
    return model.eval(), [data[:8], data[8:]]


def test_division_is_by_stage_and_runs_like_the_model(setup):
    model, batches = setup
    from prunekit import ChannelGraph
    graph = ChannelGraph.build(model, batches[0][:1])
    segs = split(graph, 3, [g.id for g in graph.prunable_groups])
    assert [s.groups for s in segs] == [("layer1.0.conv1", "layer1.1.conv1"),
                                        ("layer2.0.conv1", "layer2.1.conv1"),
                                        ("layer3.0.conv1", "layer3.1.conv1")]
    feats = features(graph, model, segs, batches)
    with torch.no_grad():
        assert torch.allclose(feats[-1][0], model(batches[0]), atol=1e-5)
    keep = np.ones(graph.n_units, dtype=bool)
    g = graph.group("layer2.0.conv1")
    keep[g.units[::2]] = False
    plan = graph.make_plan({g.id: list(range(1, g.width, 2))})
    runner = Runner(graph, model, keep)
    x = batches[0]
    for s in segs:
        x = runner.run(s, x)
    with torch.no_grad():
        assert torch.allclose(x, graph.apply(model, plan)(batches[0]), atol=1e-4)


CFG = EmoConfig(parts=3, pop_size=4, generations=2, chain_points=4)


def _front(result):
    return [(r["cost_ratio"], r["impairment"], tuple(r["widths"].values()))
            for r in result.front]


def test_front_is_feasible_non_dominated_and_reproducible(setup, tmp_path):
    model, batches = setup
    search = EmoSearch(model, batches[0][:1], batches, CFG)
    res = search.run()
    assert res.front and len(res.plans) == len(res.front)
    F = np.array([[r["cost_ratio"], r["impairment"]] for r in res.front])
    assert sorted(non_dominated(F).tolist()) == list(range(len(F)))
    graph = search.local.graph
    for row, plan in zip(res.front, res.plans):
        cost = graph.cost(plan)           # validates the plan
        assert (cost.macs, cost.params) == (row["macs"], row["params"])
        assert row["cost_ratio"] == pytest.approx(cost.macs / graph.cost().macs, abs=1e-6)
    assert all(len(h) == CFG.generations + 1 for h in res.hypervolume)
    assert all(b >= a for h in res.hypervolume for a, b in zip(h, h[1:]))
    again = EmoSearch(model, batches[0][:1], batches, CFG).run()
    assert _front(again) == _front(res)
    res.save(tmp_path / "out")
    for f in ("front.json", "front.csv", "hypervolume.json"):
        assert (tmp_path / "out" / f).is_file()


class _Interrupt(Exception):
    pass


def test_resume_after_interruption_gives_the_same_front(setup, tmp_path):
    model, batches = setup
    ref = EmoSearch(model, batches[0][:1], batches, CFG).run()
    search = EmoSearch(model, batches[0][:1], batches, CFG, checkpoint=tmp_path / "ck")
    calls = itertools.count()
    real = search.exec.map

    def flaky(method, items):
        if next(calls) == 4:          # dies in the middle of the search
            raise _Interrupt
        return real(method, items)
    search.exec.map = flaky
    with pytest.raises(_Interrupt):
        search.run()
    resumed = EmoSearch(model, batches[0][:1], batches, CFG, checkpoint=tmp_path / "ck").run()
    assert _front(resumed) == _front(ref)
    with pytest.raises(TargetError, match="another config"):
        EmoSearch(model, batches[0][:1], batches, EmoConfig(pop_size=8),
                  checkpoint=tmp_path / "ck").run()


def test_ray_gives_the_same_front(setup, ray_local):
    model, batches = setup
    ref = EmoSearch(model, batches[0][:1], batches, CFG).run()
    search = EmoSearch(model, batches[0][:1], batches, CFG, executor="ray", workers=2)
    res = search.run()
    search.close()
    assert _front(res) == _front(ref)


def test_whole_network_search_and_validation(setup):
    model, batches = setup
    res = EmoSearch(model, batches[0][:1], batches,
                    EmoConfig(parts=1, pop_size=6, generations=1, chain_points=4)).run()
    assert len(res.subnet_fronts) == 1 and res.front
    for bad in (dict(parts=0), dict(pop_size=2), dict(min_keep=0), dict(metric="flops")):
        with pytest.raises(TargetError):
            EmoConfig(**bad)
    assert EmoConfig.from_json(CFG.to_json()) == CFG


def test_calibration_of_the_wrong_shape_is_refused_at_the_boundary(setup):
    model, batches = setup[0], setup[1]
    wrong = [b[:, :, :16, :16] for b in batches]
    with pytest.raises(TargetError, match=r"EmoSearch: batch 0 has shape .* batches must be"):
        EmoSearch(model, batches[0][:1], wrong, CFG)
    with pytest.raises(TargetError, match="at least one calibration batch"):
        EmoSearch(model, batches[0][:1], [], CFG)
    with pytest.raises(TargetError, match="must be a non-empty float tensor"):
        EmoSearch(model, batches[0][:1], [b.long() for b in batches], CFG)


class _WithOptionalInputs(nn.Module):
    """A forward with inputs beyond the tensor that it hands on without looking at them
    (``attn_mask=None``, ``is_causal``), as timm's and Hugging Face's attention does: the
    capture keeps them as inputs, and they are constants, not a second input."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.ModuleList(nn.Linear(8, 24) for _ in range(3))
        self.mlp = nn.ModuleList(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))
                                 for _ in range(3))
        self.head = nn.Linear(8, 4)

    def forward(self, x, attn_mask=None, is_causal: bool = False):
        for qkv, mlp in zip(self.qkv, self.mlp):
            q, k, v = qkv(x).chunk(3, dim=-1)
            x = x + torch.nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, is_causal=is_causal)
            x = x + mlp(x)
        return self.head(x.mean(1))


def test_division_treats_optional_inputs_as_constants():
    torch.manual_seed(0)
    model, x = _WithOptionalInputs().eval(), torch.randn(4, 5, 8)
    from prunekit import ChannelGraph
    graph = ChannelGraph.build(model, x[:1])
    assert sum(n.op == "placeholder" for n in graph.traced.graph.nodes) == 3
    segs = split(graph, 3, [g.id for g in graph.prunable_groups])
    assert len(segs) == 3 and sum(len(s.groups) for s in segs) >= 3
    with torch.no_grad():
        torch.testing.assert_close(features(graph, model, segs, [x])[-1][0], model(x))
