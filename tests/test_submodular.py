"""Submodular selection with reweighting: the greedy, the Gram fast path, reweighting,
budgets, variants, open groups and the recovery step."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from prunekit import ChannelGraph
from prunekit.errors import TargetError
from prunekit.methods import OneShotConfig, prune_oneshot
from prunekit.methods.consumers import analyse
from prunekit.methods.lsq import Gram, Problem, greedy, objective, patches, solve, weight_matrix
from prunekit.methods.submodular import SubmodularConfig, prune_submodular, reweight
from prunekit.models import CifarResNet

INTERNAL = ("layer*.conv1",)


def _problem(rng: np.random.Generator, n_units: int, taps: int, rows: int = 120,
             asym: bool = False) -> tuple[Problem, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random consumer: B (rows x n_units*taps, correlated columns), W, Y."""
    mix = rng.normal(size=(n_units * taps, n_units * taps)) * 0.5 + np.eye(n_units * taps)
    B = torch.from_numpy(rng.normal(size=(rows, n_units * taps)) @ mix)
    A = B + 0.3 * torch.from_numpy(rng.normal(size=B.shape)) if asym else B
    W = torch.from_numpy(rng.normal(size=(n_units * taps, 5)))
    gram = Gram(B.shape[1], not asym)
    gram.add(B.t()[None].float(), A.t()[None].float() if asym else None, W if asym else None)
    cols = [np.arange(u * taps, (u + 1) * taps) for u in range(n_units)]
    return Problem.of(gram, W, cols, np.zeros(0, dtype=np.int64)), B, A @ W, W


def _direct_f(B: torch.Tensor, Y: torch.Tensor, cols: np.ndarray) -> float:
    if len(cols) == 0:
        return 0.0
    Bs = B[:, torch.as_tensor(cols)]
    sol = torch.linalg.lstsq(Bs, Y).solution
    return 1.0 - float(((Bs @ sol - Y) ** 2).sum() / (Y ** 2).sum())


@pytest.mark.parametrize("asym", [False, True])
def test_gram_objective_equals_direct_least_squares(asym):
    rng = np.random.default_rng(0)
    for trial in range(5):
        prob, B, Y, _ = _problem(rng, 6, 3, asym=asym)
        for S in ([0], [1, 4], [0, 2, 3, 5]):
            cols = np.concatenate([prob.unit_cols[u] for u in S])
            assert objective([prob], S, rel_ridge=0.0) == pytest.approx(
                _direct_f(B, Y, cols), abs=1e-6)


def test_solve_equals_direct_least_squares():
    rng = np.random.default_rng(1)
    B = torch.from_numpy(rng.normal(size=(200, 12)))
    W = torch.from_numpy(rng.normal(size=(12, 4)))
    A = B + 0.2 * torch.from_numpy(rng.normal(size=B.shape))
    gram = Gram(12, False)
    gram.add(B.t()[None].float(), A.t()[None].float(), W)
    keep = np.array([0, 1, 5, 7, 8, 11])
    got = solve(gram, W, keep, rel_ridge=0.0)
    ref = torch.linalg.lstsq(B[:, keep], A @ W).solution
    assert torch.allclose(got[torch.as_tensor(keep)], ref, atol=1e-3, rtol=1e-3)
    others = np.setdiff1d(np.arange(12), keep)
    assert got[torch.as_tensor(others)].abs().max() == 0


def test_greedy_against_exhaustive_search():
    rng = np.random.default_rng(2)
    equal = total = 0
    for trial in range(12):
        prob, B, Y, _ = _problem(rng, 7, 2, rows=60)
        ev = torch.linalg.eigvalsh(prob.G)
        gamma = float(ev.min() / ev.max())   # a lower bound on the submodularity ratio
        for k in (1, 2, 3):
            picks, values = greedy([prob], np.arange(7), k, rel_ridge=0.0)
            best = max(objective([prob], list(S), rel_ridge=0.0)
                       for S in itertools.combinations(range(7), k))
            assert len(picks) == k and len(set(picks)) == k
            assert values[-1] == pytest.approx(objective([prob], picks, rel_ridge=0.0), abs=1e-9)
            assert values[-1] >= (1 - np.exp(-gamma)) * best - 1e-9
            assert values[-1] <= best + 1e-9
            equal += values[-1] >= best - 1e-9
            total += 1
    assert equal / total >= 0.6, f"greedy optimal in only {equal}/{total} cases"


def test_greedy_values_increase_and_stochastic_is_seeded():
    rng = np.random.default_rng(3)
    prob, *_ = _problem(rng, 10, 1)
    _, values = greedy([prob], np.arange(10), 10)
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:]))
    assert values[-1] == pytest.approx(1.0, abs=1e-5)  # all kept: everything explained
    a = greedy([prob], np.arange(10), 4, stochastic=0.3, seed=5)
    b = greedy([prob], np.arange(10), 4, stochastic=0.3, seed=5)
    assert a == b and len(a[0]) == 4


def test_reweighting_never_increases_the_error():
    rng = np.random.default_rng(4)
    for asym in (False, True):
        for trial in range(4):
            B = torch.from_numpy(rng.normal(size=(150, 10)))
            A = B + (0.3 * torch.from_numpy(rng.normal(size=B.shape)) if asym else 0)
            W = torch.from_numpy(rng.normal(size=(10, 3)))
            gram = Gram(10, not asym)
            gram.add(B.t()[None].float(), A.t()[None].float() if asym else None,
                     W if asym else None)
            keep = np.sort(rng.choice(10, 5, replace=False))
            plain = W.clone()
            plain[torch.as_tensor(np.setdiff1d(np.arange(10), keep))] = 0
            assert gram.rel_err(solve(gram, W, keep), W) <= gram.rel_err(plain, W) + 1e-9


def test_patches_match_the_convolution():
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False)
    x = torch.randn(2, 4, 9, 9)
    P = patches(conv, x)                                  # (batch, 36, positions)
    y = torch.matmul(weight_matrix(conv).t().float(), P)
    assert torch.allclose(y.reshape(2, 6, 5, 5), conv(x), atol=1e-5)


# ------------------------------------------------------------------ on networks
@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = CifarResNet(14, widths=(8, 16, 16))
    with torch.no_grad():  # realistic batch-norm statistics
        model.train()
        for _ in range(5):
            model(torch.randn(32, 3, 32, 32))
    model.eval()
    data = torch.randn(64, 3, 32, 32)
    return model, data, ChannelGraph.build(model, data[:1])


@pytest.mark.parametrize("variant", ["layer", "seq", "asym"])
@pytest.mark.parametrize("selector", ["greedy", "weightnorm", "random", "actgrad"])
def test_variants_and_selectors_meet_the_budget(net, variant, selector):
    model, data, graph = net
    before = [p.clone() for p in model.parameters()]
    cfg = SubmodularConfig(target=0.5, scope="groups", groups=INTERNAL, variant=variant,
                           selector=selector, calib_batch_size=32)
    res = prune_submodular(model, data[:1], data, cfg, graph=graph)
    assert abs(res.plan.meta["achieved"] - 0.5) <= 0.02
    assert set(res.plan.keep) == {h["group"] for h in res.history if h["kept"] < h["width"]}
    assert all(g.startswith("layer") and g.endswith("conv1") for g in res.plan.keep)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # untouched
    out = res.model(data[:4])
    assert out.shape == (4, 10) and torch.isfinite(out).all()


def test_network_scope_budget(net):
    model, data, graph = net
    cfg = SubmodularConfig(target=0.7, metric="macs", groups=INTERNAL, calib_batch_size=32)
    res = prune_submodular(model, data[:1], data, cfg, graph=graph)
    assert res.after.macs / res.before.macs == pytest.approx(0.7, abs=0.02)


def test_keeping_every_channel_reproduces_the_model(net):
    model, data, graph = net
    res = prune_submodular(model, data[:1], data, SubmodularConfig(target=1.0, groups=INTERNAL),
                           graph=graph)
    assert res.plan.keep == {}
    with torch.no_grad():
        assert torch.allclose(res.model(data[:8]), model(data[:8]), atol=1e-5)


def test_reweighting_reduces_the_consumer_error(net):
    model, data, graph = net
    common = dict(target=0.5, scope="groups", groups=INTERNAL, selector="weightnorm",
                  variant="asym", calib_batch_size=32)
    plain = prune_submodular(model, data[:1], data, SubmodularConfig(reweight=False, **common),
                             graph=graph)
    rew = prune_submodular(model, data[:1], data, SubmodularConfig(**common), graph=graph)
    assert plain.plan.keep == rew.plan.keep
    with torch.no_grad():
        ref = model(data)
        err_plain = (plain.model(data) - ref).pow(2).mean()
        err_rew = (rew.model(data) - ref).pow(2).mean()
    assert err_rew < err_plain


def test_greedy_beats_random_selection_on_its_objective(net):
    model, data, graph = net
    common = dict(target=0.5, scope="groups", groups=INTERNAL, variant="layer", calib_batch_size=32)
    g = prune_submodular(model, data[:1], data, SubmodularConfig(**common), graph=graph)
    with torch.no_grad():
        ref = model(data)
        err_g = (g.model(data) - ref).pow(2).mean()
        errs = []
        for seed in range(3):
            r = prune_submodular(model, data[:1], data, SubmodularConfig(
                selector="random", seed=seed, **common), graph=graph)
            errs.append((r.model(data) - ref).pow(2).mean())
    assert err_g < min(errs)


def test_open_groups_are_reported_and_skipped_or_selected(net):
    model, data, graph = net
    infos = {i.gid: i for i in analyse(graph, [g.id for g in graph.prunable_groups])}
    stream = [i for i in infos.values() if not i.closed]
    assert stream and all("add" in i.reason or "output" in i.reason for i in stream)
    assert infos["layer1.0.conv1"].closed
    assert [c.name for c in infos["layer1.0.conv1"].consumers] == ["layer1.0.conv2"]
    skip = prune_submodular(model, data[:1], data, SubmodularConfig(target=0.8), graph=graph)
    assert all(h.get("skipped") for h in skip.history if not h["closed"])
    assert all(gid in {i.gid for i in infos.values() if i.closed} for gid in skip.plan.keep)
    sel = prune_submodular(model, data[:1], data,
                           SubmodularConfig(target=0.6, open_groups="select"), graph=graph)
    opened = [h for h in sel.history if not h["closed"] and h["kept"] < h["width"]]
    assert opened and not any(h["reweighted"] for h in opened)


def test_recovery_reweights_any_plan(net):
    model, data, graph = net
    res = prune_oneshot(model, data[:1], OneShotConfig(target=0.5, criterion="l1"), graph=graph)
    fixed, report = reweight(model, res.model, res.plan, graph, data, batch_size=32)
    assert report and all(r["rel_err_after"] <= r["rel_err_before"] + 1e-9 for r in report)
    with torch.no_grad():
        ref = model(data)
        assert (fixed(data) - ref).pow(2).mean() < (res.model(data) - ref).pow(2).mean()


def test_config_validation_and_json():
    cfg = SubmodularConfig(target=0.25, variant="seq", groups=["a*"])
    assert SubmodularConfig.from_json(cfg.to_json()) == cfg
    for bad in (dict(target=0.0), dict(variant="x"), dict(selector="l9"),
                dict(allocation="global"), dict(stochastic=1.0), dict(scope="layer")):
        with pytest.raises(TargetError):
            SubmodularConfig(**bad)


def test_no_matching_group_is_an_error(net):
    model, data, graph = net
    with pytest.raises(TargetError, match="no prunable group"):
        prune_submodular(model, data[:1], data, SubmodularConfig(groups=("nothing*",)),
                         graph=graph)


def test_sensitivity_allocation_meets_the_budget(net):
    model, data, graph = net
    cfg = SubmodularConfig(target=0.5, scope="groups", groups=INTERNAL,
                           allocation="sensitivity", calib_batch_size=32)
    res = prune_submodular(model, data[:1], data, cfg, graph=graph)
    assert res.plan.meta["achieved"] <= 0.5 + 0.01
    widths = {h["group"]: h["kept"] / h["width"] for h in res.history}
    assert len(set(np.round(list(widths.values()), 3))) > 1  # not uniform


def test_layers_cost_counts_exactly_the_touched_layers(net):
    model, data, graph = net
    ids = [g.id for g in graph.prunable_groups if g.id.startswith("layer") and
           g.id.endswith("conv1")]
    expect = sum(p.numel() for n, p in model.named_parameters()
                 if n.startswith("layer") and (".conv1." in n or ".bn1." in n or ".conv2." in n))
    assert graph.layers_cost(ids).params == expect
    macs = sum(m.weight.numel() * o.shape[2] * o.shape[3]
               for n, m, o in _conv_outputs(model, data[:1]) if n.endswith(("conv1", "conv2"))
               and n.startswith("layer"))
    assert graph.layers_cost(ids).macs == macs


def _conv_outputs(model, x):
    outs = []
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: outs.append((n, mod, o)))
             for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return outs


def test_output_allocation_meets_the_budget_and_follows_the_measured_loss(net):
    model, data, graph = net
    cfg = SubmodularConfig(target=0.5, scope="groups", groups=INTERNAL, allocation="output",
                           calib_batch_size=32, output_points=4, output_images=16)
    res = prune_submodular(model, data[:1], data, cfg, graph=graph)
    assert 0.5 - 0.15 <= res.plan.meta["achieved"] <= 0.5 + 0.01
    kept = {h["group"]: h["kept"] / h["width"] for h in res.history}
    assert len(set(np.round(list(kept.values()), 3))) > 1  # not uniform
    # only measured widths (quarters of each group) are chosen
    assert all(abs(v * 4 - round(v * 4)) < 1e-9 for v in kept.values())


def test_accuracy_allocation_scores_one_group_curves_on_the_held_out_split(net):
    from prunekit.methods.protocol import Context, get_method, prepare
    model, data, graph = net
    torch.manual_seed(1)
    held = torch.randn(24, *data.shape[1:])
    with torch.no_grad():
        labels = model(held).argmax(1)               # the unpruned network scores 100%
    cfg = SubmodularConfig(target=0.5, scope="groups", groups=INTERNAL, allocation="accuracy",
                           calib_batch_size=32, output_points=4)
    with pytest.raises(TargetError, match="held-out"):
        prune_submodular(model, data[:1], data, cfg, graph=graph)
    method = get_method("submodular")
    with pytest.raises(TargetError, match="labelled"):        # refused before any work
        prepare(method, cfg, Context(data[:1], calibration=data), model)
    ctx = Context(data[:1], calibration=data, labelled=(held, labels))
    prepare(method, cfg, ctx, model)
    res = method.run(model, cfg, ctx)
    assert 0.5 - 0.15 <= res.plan.meta["achieved"] <= 0.5 + 0.01
    kept = {h["group"]: h["kept"] / h["width"] for h in res.history}
    assert len(set(np.round(list(kept.values()), 3))) > 1  # not uniform
    assert all(abs(v * 4 - round(v * 4)) < 1e-9 for v in kept.values())


def test_monotone_loss_curve():
    from prunekit.methods.submodular import _monotone
    c = _monotone(np.array([np.nan, 0.5, np.nan, 0.7, 0.1, np.nan, 0.0]))
    assert np.isinf(c[[0, 2, 5]]).all()
    assert c[1] == 0.7 and c[3] == 0.7 and c[4] == 0.1 and c[6] == 0.0


def _io(model: nn.Module, name: str, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    got = {}
    h = model.get_submodule(name).register_forward_hook(
        lambda m, i, o: got.update(x=i[0], y=o))
    with torch.no_grad():
        model(data)
    h.remove()
    return got["x"], got["y"]


def test_intercept_is_the_least_squares_with_a_constant_column(net):
    """With ``intercept``, each reweighted consumer's new weights plus the offset moved into
    its batch norm are the least-squares fit with a constant column: never worse than the
    fit without it, and equal to a direct solve."""
    model, data, graph = net
    common = dict(target=0.5, scope="groups", groups=INTERNAL, selector="weightnorm",
                  variant="layer", calib_batch_size=32)
    plain = prune_submodular(model, data[:1], data, SubmodularConfig(**common), graph=graph)
    icpt = prune_submodular(model, data[:1], data, SubmodularConfig(intercept=True, **common),
                            graph=graph)
    assert plain.plan.keep == icpt.plan.keep
    reweighted = {c for h in icpt.history if h["reweighted"] for c in h["consumers"]}
    assert reweighted and {c for h in icpt.history for c in h["intercept"]} == reweighted
    for name in sorted(reweighted):
        gid = next(h["group"] for h in icpt.history if name in h["consumers"])
        keep = torch.as_tensor(icpt.plan.keep[gid])
        B, Y = _io(model, name, data)
        bn = name.replace("conv2", "bn2")
        errs = {}
        for key, res in (("plain", plain), ("intercept", icpt)):
            off = model.get_submodule(bn).running_mean - res.model.get_submodule(bn).running_mean
            with torch.no_grad():
                out = res.model.get_submodule(name)(B[:, keep]) + off[None, :, None, None]
            errs[key] = float((out - Y).pow(2).sum())
        assert float(off.abs().max()) > 0       # the offset moved
        assert errs["intercept"] <= errs["plain"] * (1 + 1e-6)
        conv = model.get_submodule(name)
        P = patches(conv, B[:, keep]).transpose(1, 2).reshape(-1, len(keep) * 9).double()
        P = torch.cat([P, torch.ones(len(P), 1, dtype=P.dtype)], 1)
        T = Y.permute(0, 2, 3, 1).reshape(-1, Y.shape[1]).double()
        direct = float((P @ torch.linalg.lstsq(P, T).solution - T).pow(2).sum())
        assert errs["intercept"] == pytest.approx(direct, rel=1e-3)


def test_intercept_goes_into_a_consumer_bias():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
    data = torch.randn(48, 3, 8, 8)
    graph = ChannelGraph.build(model, data[:1])
    common = dict(target=0.5, scope="groups", variant="layer", selector="weightnorm",
                  calib_batch_size=16)
    plain = prune_submodular(model, data[:1], data, SubmodularConfig(**common), graph=graph)
    icpt = prune_submodular(model, data[:1], data, SubmodularConfig(intercept=True, **common),
                            graph=graph)
    assert icpt.history[0]["intercept"] == ["5"] and plain.plan.keep == icpt.plan.keep
    keep = torch.as_tensor(next(iter(icpt.plan.keep.values())))
    B, Y = _io(model, "5", data)
    Bs = torch.cat([B[:, keep], torch.ones(len(B), 1)], 1).double()
    direct = float((Bs @ torch.linalg.lstsq(Bs, Y.double()).solution - Y).pow(2).sum())
    with torch.no_grad():
        errs = [float((r.model[5](B[:, keep]) - Y).pow(2).sum()) for r in (plain, icpt)]
    assert errs[1] <= errs[0] and errs[1] == pytest.approx(direct, rel=1e-3)
