"""LAPP: differentiable cost, thresholds, the budget, equivalence, bypass and save/load."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from prunekit import ChannelGraph
from prunekit.data import CIFAR_NORM, Batches
from prunekit.errors import TargetError
from prunekit.io import load_pruned, save_pruned
from prunekit.methods.lapp import Lapp, LappConfig, add_bypass
from prunekit.methods.lapp_method import train_lapp
from prunekit.methods.lapp_members import _own as _gamma
from prunekit.methods.soft_cost import SoftCost
from prunekit.models import CifarResNet
from prunekit.models.cifar_misc import CifarMobileNetV2
from prunekit.train import TrainConfig

X = torch.randn(2, 3, 32, 32)


def _lapp(model: nn.Module, config: LappConfig = LappConfig(), bypass: bool = True):
    base = ChannelGraph.build(model, X).cost().macs
    if bypass:
        add_bypass(model)
    graph = ChannelGraph.build(model, X)
    return Lapp(model, graph, config, base), graph, base


@pytest.mark.parametrize("make", [lambda: CifarResNet(20), lambda: CifarMobileNetV2()])
@pytest.mark.parametrize("metric", ["macs", "params"])
def test_soft_cost_equals_engine_cost_for_hard_masks(make, metric):
    torch.manual_seed(0)
    model = make()
    add_bypass(model)
    graph = ChannelGraph.build(model, X)
    cost = SoftCost(graph, metric)
    rng = np.random.default_rng(0)
    for _ in range(5):
        keep = rng.random(graph.n_units) > rng.random()
        for g in graph.groups:
            if g.frozen or not keep[g.units].any():
                keep[g.units] = True
        exact = graph.cost_of_mask(keep)
        got = float(cost(torch.as_tensor(keep, dtype=torch.float64)))
        assert got == (exact.macs if metric == "macs" else exact.params)


def test_thresholds_get_gradients_and_move_toward_the_budget():
    torch.manual_seed(0)
    model = CifarResNet(20).train()
    lapp, graph, base = _lapp(model, LappConfig(target=0.4, threshold_lr=0.05))
    with torch.no_grad():      # distinct scores, so a threshold in score units moves too
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            _gamma(bn).uniform_(0.2, 1.5)
    start = lapp.log()
    for step in range(60):
        model(torch.randn(4, 3, 32, 32))
        pen = lapp.penalty(0.5)        # past the ramp: the final target applies
        pen.backward()
        if step == 0:
            assert (lapp.rates.grad.abs() > 0).all()
            assert (lapp.rates.grad < 0).all()  # raising thresholds lowers the cost
        lapp.after_step()
    end = lapp.log()
    assert end["lapp_cost_ratio"] < start["lapp_cost_ratio"] - 0.2
    assert all(b > a for a, b in zip(start["lapp_thresholds"], end["lapp_thresholds"]))


def test_equal_scores_prune_gradually():
    """At initialisation every BN scale is 1: the thresholds must still prune a few
    channels per step (by quantile) down to the target, not a whole group at once."""
    torch.manual_seed(0)
    model = CifarResNet(20).train()
    cfg = LappConfig(target=0.4, threshold_lr=0.01, progressive=False)
    lapp, graph, base = _lapp(model, cfg, bypass=False)
    assert not lapp.bypass
    assert all(float(s.std()) == 0 for s in lapp.scores())
    ratios = [lapp.log()["lapp_cost_ratio"]]
    for _ in range(80):
        model(torch.randn(4, 3, 32, 32))
        lapp.penalty(0.5).backward()
        lapp.after_step()
        ratios.append(lapp.log()["lapp_cost_ratio"])
    assert 0.3 < ratios[-1] <= 0.4                 # meets the target without collapsing
    assert (-np.diff(ratios)).max() < 0.1          # ... a little at a time


def test_progressive_target_schedule():
    lapp, _, _ = _lapp(CifarResNet(8), LappConfig(target=0.4))
    lapp.phase_end = 0.5
    assert lapp.target_at(0.0) == 1.0
    assert lapp.target_at(0.2) == pytest.approx(1 - 0.6 * 0.5)
    assert lapp.target_at(0.4) == pytest.approx(0.4) == lapp.target_at(0.45)
    flat, _, _ = _lapp(CifarResNet(8), LappConfig(target=0.4, progressive=False))
    assert flat.target_at(0.0) == 0.4
    # after the pruning phase: no constraint, and the documented `loss + penalty` still adds
    after = lapp.penalty(0.6)
    assert isinstance(after, torch.Tensor) and after.item() == 0.0
    assert (torch.tensor(2.5) + after).item() == 2.5


def _toy_data(n: int = 256, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = rng.integers(0, 60, (n, 32, 32, 3)).astype(np.uint8)
    for c in range(10):  # a learnable signal: class-dependent bright square
        x[y == c, 3 * c:3 * c + 4, 3 * c:3 * c + 4, c % 3] = 250
    return x, y.astype(np.int64)


@pytest.mark.parametrize("bypass,score", [(True, "bn"), (False, "bn"), (False, "taylor")])
def test_toy_task_meets_budget_and_saves(tmp_path, bypass, score):
    torch.manual_seed(0)
    x, y = _toy_data()
    train = Batches(x, y, 32, CIFAR_NORM, train=True, drop_last=True)
    model = CifarResNet(8, widths=(8, 16, 32))
    cfg = LappConfig(target=0.5, prune_epochs=2, bypass=bypass, threshold_lr=0.1, score=score)
    res = train_lapp(model, X, train, None, cfg,
                     TrainConfig(epochs=3, lr=0.05, channels_last=False), tmp_path,
                     progress=False)
    ratio = res.after.macs / res.before.macs
    assert 0.5 - 0.01 <= ratio <= 0.5
    assert res.plan.meta["bypass"] is bypass and res.plan.meta["learned"] < 0.9
    assert (tmp_path / "prune" / "log.jsonl").is_file() and (tmp_path / "train").is_dir()
    assert "lapp_thresholds" in res.history[0]
    save_pruned(tmp_path / "saved", res.model, res.plan, (X,))
    base = CifarResNet(8, widths=(8, 16, 32))     # loading redoes the bypass edit itself
    assert res.plan.meta["edits"] == (["bypass"] if bypass else [])
    loaded, _ = load_pruned(tmp_path / "saved", base)
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(X), res.model(X), atol=1e-5)


def test_default_pruning_phase_is_a_third_of_the_schedule(tmp_path):
    assert LappConfig().prune_epochs is None and LappConfig().phase_epochs(30) == 10
    assert LappConfig(prune_epochs=4).phase_epochs(30) == 4
    torch.manual_seed(0)
    x, y = _toy_data()
    train = Batches(x, y, 32, CIFAR_NORM, train=True, drop_last=True)
    res = train_lapp(CifarResNet(8, widths=(8, 16, 32)), X, train, None,
                     LappConfig(target=0.6, threshold_lr=0.1),
                     TrainConfig(epochs=3, lr=0.05, channels_last=False), tmp_path,
                     progress=False)
    pruning = (tmp_path / "prune" / "log.jsonl").read_text().splitlines()
    after = (tmp_path / "train" / "log.jsonl").read_text().splitlines()
    assert (len(pruning), len(after)) == (1, 2)
    assert 0.6 - 0.01 <= res.after.macs / res.before.macs <= 0.6


def test_pruned_model_equals_masked_training_model():
    torch.manual_seed(0)
    model = CifarResNet(20)
    lapp, graph, _ = _lapp(model, LappConfig(target=0.5))
    # branches added by hand, config.bypass left False: a saved plan records the model's
    assert lapp.bypass and not lapp.config.bypass
    with torch.no_grad():
        model.train()
        for _ in range(3):
            model(torch.randn(8, 3, 32, 32))   # batch-norm statistics
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            _gamma(bn).uniform_(0.2, 1.5)         # distinct scores
        lapp.rates.fill_(0.6)
        model.eval()
        masked = model(X)
    plan = lapp.hard_plan()
    assert len(plan.keep) == len(lapp.groups)
    lapp.detach()
    with torch.no_grad():
        assert torch.allclose(graph.apply(model, plan)(X), masked, atol=1e-4)
    lapp.verify(model, (X,))   # the built-in check passes too


@pytest.mark.parametrize("leak", [0.0, 0.01])
def test_parametrized_mask_equals_masking_the_bn_outputs(leak: float):
    """The masks multiply BN scale and shift; that must equal multiplying BN outputs, in the
    forward pass and in every gradient (thresholds, BN scales), and detach restores the model
    (with and without the training-time leak)."""
    torch.manual_seed(0)
    model = CifarResNet(20)
    add_bypass(model)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        with torch.no_grad():
            bn.weight.uniform_(0.2, 1.5)
            bn.bias.normal_()
    keys = sorted(model.state_dict())
    ref = copy.deepcopy(model)
    runs = []
    for net, by_output in ((model, False), (ref, True)):
        graph = ChannelGraph.build(net, X)
        lapp = Lapp(net, graph, LappConfig(target=0.5, leak=leak), graph.cost().macs)
        with torch.no_grad():
            lapp.rates.fill_(0.4)
        if by_output:        # the reference: a forward hook masking each BN's output
            lapp.detach()
            lapp._handles.append(net.register_forward_pre_hook(lapp._refresh))
            for gi, mem in enumerate(lapp.members):
                for m in mem:
                    lapp._handles.append(m.module.register_forward_hook(
                        lambda _m, _a, out, gi=gi, idx=m.idx:
                        out * lapp._applied[gi][idx].view(1, -1, 1, 1)))
        net.train()
        out = net(X)
        (out.square().mean() + lapp.penalty(0.1)).backward()
        runs.append((out.detach(), lapp.rates.grad.clone(),
                     [_gamma(m.module).grad.clone() for m in sum(lapp.members, [])]))
        lapp.detach()
    (o1, t1, g1), (o2, t2, g2) = runs
    # the two forms differ only in float rounding (summed over 20 layers, the threshold
    # gradients by up to ~1e-5, more when a busy machine changes the kernels' reduction
    # order); a wrong mask or gradient differs by orders more
    assert torch.allclose(o1, o2, rtol=1e-4, atol=1e-4)
    assert t1.abs().max() > 0 and torch.allclose(t1, t2, rtol=1e-3, atol=1e-3)
    assert all(torch.allclose(a, b, rtol=1e-3, atol=1e-3) for a, b in zip(g1, g2))
    assert sorted(model.state_dict()) == keys


def test_zero_scale_bypass_starts_as_a_no_op():
    """bypass_scale=0: the network with its bypass branches computes what it computed without
    them (training and eval mode), and the branches' scales still get gradients."""
    torch.manual_seed(0)
    plain = CifarResNet(20)
    with_bypass = copy.deepcopy(plain)
    assert add_bypass(with_bypass, scale=0.0) == 9
    x = torch.randn(4, 3, 32, 32)
    for mode in (True, False):
        plain.train(mode), with_bypass.train(mode)
        torch.testing.assert_close(with_bypass(x), plain(x))
    with_bypass.train()
    with_bypass(x).square().sum().backward()
    grads = [b.bypass[1].weight.grad for b in with_bypass.modules() if hasattr(b, "bypass_shape")]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    one = copy.deepcopy(plain)
    add_bypass(one)
    one.train()
    assert not torch.allclose(one(x), plain.train()(x))


def test_validation_and_refusals():
    for bad in (dict(target=0), dict(metric="flops"), dict(prune_epochs=0), dict(prune_epochs=-1.0),
                dict(temperature=0), dict(temperature=2), dict(threshold_lr=1.5),
                dict(tolerance=0.9), dict(bypass_scale=-0.1), dict(bypass_scale=2),
                dict(score="l1"), dict(score_momentum=1.0), dict(leak=-0.01), dict(leak=0.5)):
        with pytest.raises(TargetError):
            LappConfig(**bad)
    cfg = LappConfig(target=0.3, groups=["layer*"], score="taylor", score_momentum=0.5,
                     leak=0.01)
    assert LappConfig.from_json(cfg.to_json()) == cfg
    no_slot = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    with pytest.raises(TargetError, match="bypass slot"):
        train_lapp(no_slot, X, None, None, LappConfig(bypass=True), TrainConfig(epochs=1), "/tmp/x")
    no_bn = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    graph = ChannelGraph.build(no_bn, X)
    lapp = Lapp(no_bn, graph, LappConfig(bypass=False), 1.0)   # no BN: the producers mask
    assert {m.kind for mem in lapp.members for m in mem} == {"producer"}
    lapp.verify(no_bn, (X,))
    assert len(lapp.groups) == len(graph.prunable_groups) and not lapp.skipped


def test_hold_raises_a_cost_below_the_target_by_one_common_offset():
    torch.manual_seed(0)
    model = CifarResNet(20).train()
    lapp, _, _ = _lapp(model, LappConfig(target=0.5, hold=True), bypass=False)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            _gamma(bn).uniform_(0.2, 1.5)
        lapp.rates.copy_(torch.linspace(0.5, 0.8, len(lapp.groups)))
    lapp.penalty(0.9)                                  # past the ramp: the target is 0.5
    before = lapp.rates.detach().clone()
    assert lapp.log(record=False)["lapp_cost_ratio"] < 0.4
    offset = lapp.hold()
    after = lapp.log(record=False)["lapp_cost_ratio"]
    assert offset > 0
    assert 0.5 * 0.99 <= after < 0.55                  # back at the target, not far above it
    assert torch.allclose(before - lapp.rates, torch.full_like(before, offset), atol=1e-6)
    assert lapp.hold() == 0.0                          # already at the target: no change
    with torch.no_grad():
        lapp.rates.fill_(0.2)                          # above the target: hold does nothing
    assert lapp.hold() == 0.0 and bool((lapp.rates == 0.2).all())


@pytest.mark.parametrize("leak", [0.0, 0.01])
def test_taylor_score_is_the_task_loss_gradient_of_each_mask(leak):
    """score="taylor" (momentum 0): after a step each group's score is |dL/dm_c| of the task
    loss alone. For a kept channel that is |sum over the group's BN layers of
    gamma * dL/dgamma + beta * dL/dbeta|, computed here from the parameters' own gradients;
    the cost term does not leak into the scores. A masked channel's score is 0 when every
    BN output it leaves passes a ReLU (its gradient at exactly 0 is 0), and not with a leak."""
    torch.manual_seed(0)
    model = CifarResNet(20).train()
    cfg = LappConfig(target=0.3, score="taylor", score_momentum=0.0, leak=leak)
    lapp, _, _ = _lapp(model, cfg, bypass=False)
    with torch.no_grad():
        lapp.rates.fill_(0.3)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    loss = nn.functional.cross_entropy(model(x), y)
    penalty = lapp.penalty(0.5)
    assert float(penalty.detach()) > 0   # the cost term is active: its gradient must stay out
    (loss + 100.0 * penalty).backward()
    hard = lapp.masks(hard_only=True)
    expected = []
    for g, mem in zip(lapp.groups, lapp.members):
        e = torch.zeros(g.width)
        for m in mem:
            w = m.module.parametrizations.weight.original
            b = m.module.parametrizations.bias.original
            e = e.index_add(0, m.idx, (w * w.grad + b * b.grad).detach())
        expected.append(e.abs())
    lapp.after_step()
    masked_scores = []
    for got, want, m in zip(lapp.scores(), expected, hard):
        kept = m > 0
        assert torch.allclose(got[kept], want[kept], rtol=1e-4, atol=1e-7)
        masked_scores.append(got[~kept])
    masked_scores = torch.cat(masked_scores)
    assert len(masked_scores) > 100
    if leak:
        assert (masked_scores > 0).float().mean() > 0.9
    else:
        assert (masked_scores == 0).all()
