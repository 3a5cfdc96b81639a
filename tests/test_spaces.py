"""Pruning spaces: regimes, uniform sampling, EDFs, the ratio analysis, executors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from prunekit.errors import TargetError
from prunekit.methods.spaces import (Evaluator, Sampler, Space, best_rho, edf, evaluate_samples,
                                     held_out, param_buckets, refine, search)
from prunekit.models import CifarResNet

X = torch.zeros(1, 3, 32, 32)


def test_samples_lie_in_their_regime_and_band():
    model = CifarResNet(20)
    for param in ("stage", "group"):
        sp = Space(param=param, regime=(0.3, 0.4))
        sampler = Sampler(model, X, sp)
        samples = sampler.sample(30, seed=1)
        assert all(0.3 <= s["macs_ratio"] <= 0.4 for s in samples)
        assert samples == Sampler(model, X, sp).sample(30, seed=1)      # seeded
        band = (np.median([s["rho"] for s in samples]), max(s["rho"] for s in samples))
        narrowed = Sampler(model, X, Space(param=param, regime=(0.3, 0.4), rho_band=band))
        assert all(band[0] <= s["rho"] <= band[1] for s in narrowed.sample(10, seed=2))
    assert len(Sampler(model, X, Space(param="stage")).units) == 3


def test_sampling_is_uniform_on_a_small_space():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 10, 3), nn.BatchNorm2d(10), nn.ReLU(), nn.Conv2d(10, 4, 3),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    sampler = Sampler(net, torch.zeros(1, 3, 12, 12),
                      Space(param="group", regime=(0.01, 1.0), min_ratio=0.05))
    widths = [list(s["widths"].values()) for s in sampler.sample(4000, seed=3)]
    gid = list(sampler.sample(1)[0]["widths"])[0]
    k = np.array([w[list(sampler.sample(1)[0]["widths"]).index(gid)] for w in widths])
    # ratio ~ U(0.05, 1), width = round(10 r): widths 2..9 each have probability 0.1/0.95
    counts = np.array([(k == v).sum() for v in range(2, 10)])
    expected = len(k) * 0.1 / 0.95
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 18.48          # 99% quantile of chi-square with 7 degrees of freedom
    assert abs((k == 10).sum() - len(k) * 0.05 / 0.95) < 4 * np.sqrt(len(k) * 0.05)


def test_edf_buckets_and_best_ratio_on_fixed_inputs():
    assert edf([1, 2, 2, 5], [0, 1, 2, 3, 6]).tolist() == [0, 0, 0.25, 0.75, 1.0]
    assert param_buckets([10, 20, 30, 40], 2).tolist() == [0, 0, 1, 1]
    rng = np.random.default_rng(0)
    rho = rng.uniform(1, 5, 200)
    samples = [{"rho": r, "error": abs(r - 3.0) + rng.normal(0, 0.05), "params": i}
               for i, r in enumerate(rho)]
    a = best_rho(samples, draws=300)
    assert abs(a["median"] - 3.0) < 0.2 and a["supported"]
    assert a["interval"][0] <= a["median"] <= a["interval"][1]
    flat = [{"rho": r, "error": rng.normal(), "params": i} for i, r in enumerate(rho)]
    assert not best_rho(flat, draws=300)["supported"]
    sp = refine(Space(), a)
    assert sp.rho_band == tuple(a["interval"]) and Space.from_json(sp.to_json()) == sp
    assert search([{"error": 2, "macs": 1}, {"error": 1, "macs": 5}])["error"] == 1


def _data(n=96):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return held_out(x, y, 32)


def test_proxy_is_deterministic_and_executor_independent(ray_local):
    torch.manual_seed(0)
    model = CifarResNet(8, widths=(4, 8, 16))
    sp = Space(regime=(0.3, 0.7))
    samples = Sampler(model, X, sp).sample(3, seed=0)
    args = (model, X, sp, *_data(), 3, 0.01, 16, 0)
    a = evaluate_samples(samples, args)
    assert a == evaluate_samples(samples, args)
    assert all(0 <= r["error"] <= 100 for r in a)
    assert evaluate_samples(samples, args, executor="ray", workers=2) == a


def test_validation_and_refusals():
    for bad in (dict(param="block"), dict(regime=(0.6, 0.5)), dict(min_ratio=0)):
        with pytest.raises(TargetError):
            Space(**bad)
    with pytest.raises(TargetError, match="fell in the regime"):
        Sampler(CifarResNet(8), X, Space(regime=(0.001, 0.002))).sample(1, max_tries=50)
    ev = Evaluator(CifarResNet(8), X, Space(), *_data(), steps=1)
    assert isinstance(ev.subnetwork(ev.sampler.sample(1)[0]["widths"]), nn.Module)
