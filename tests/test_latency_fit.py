"""What the latency model's fit accounts for (synthetic machines, no timed assertions):
the multiply-accumulates of ops without a module (attention's products), and plans a
search has measured taught back to the model (refine)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from prunekit import ChannelGraph
from prunekit.latency import LatencyModel, Target
from test_latency import SyntheticTimer, _model, resnet  # noqa: F401  (fixture)

X = torch.randn(2, 20, 8)


class Scores(nn.Module):
    """softmax(q k^T) v: its work is tokens x tokens x the contracted width."""

    def forward(self, q, k, v):
        return (q @ k.transpose(-1, -2)).softmax(-1) @ v


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 24)     # a prunable width on both sides of q, k and v
        self.q, self.k, self.v = nn.Linear(24, 32), nn.Linear(24, 32), nn.Linear(24, 16)
        self.out, self.att = nn.Linear(16, 8), Scores()

    def forward(self, x):
        h = self.inp(x).relu()
        return self.out(self.att(self.q(h), self.k(h), self.v(h)))


class ProductsTimer(SyntheticTimer):
    """The synthetic machine, whose attention products also cost ``per_mac`` seconds
    per multiply-accumulate, times ``power`` of the kept width (1: linear in it)."""

    def __init__(self, per_mac: float = 1e-8, power: float = 1.0) -> None:
        super().__init__(fixed=1e-5)
        self.per_mac, self.power = per_mac, power

    def time(self, module, inputs):
        extra = []
        hooks = [m.register_forward_pre_hook(lambda m, a: extra.append(self._cost(*a)))
                 for m in module.modules() if isinstance(m, Scores)]
        try:
            base = super().time(module, inputs)
        finally:
            for h in hooks:
                h.remove()
        return base + sum(extra)

    def _cost(self, q, k, v) -> float:
        rows = q.numel() // q.shape[-1] * k.shape[-2]
        width = q.shape[-1] ** self.power / 32 ** (self.power - 1)    # 32: q's full width
        return self.per_mac * rows * (width + v.shape[-1])


def _attention_model(timer, tmp_path):
    model = Attention().eval()
    graph = ChannelGraph.build(model, X)
    lm = LatencyModel(graph, Target(batch=2, threads=1), timer, tmp_path)
    lm.measure_tables()
    lm.calibrate(model)
    return model, graph, lm


def _thin_scores(graph) -> np.ndarray:
    """q and k keep 4 of 32 channels; the rest stays whole."""
    keep = np.ones(graph.n_units, dtype=bool)
    q = next(g for g in graph.prunable_groups if g.width == 32)
    keep[q.units[4:]] = False
    return keep


def test_op_macs_are_the_graphs_macs_outside_its_layers():
    graph = ChannelGraph.build(Attention().eval(), X)
    ops = graph.op_macs()
    assert {o.op for o in ops} == {"matmul"}
    for keep in (np.ones(graph.n_units, dtype=bool), _thin_scores(graph)):
        layer_macs = sum(int(np.prod(lay.out_shape[:-1])) *
                         (int(keep[lay.in_units].sum()) if lay.in_units is not None
                          else lay.in_shape[-1]) *
                         (int(keep[lay.out_units].sum()) if lay.out_units is not None
                          else lay.out_shape[-1]) for lay in graph.layers())
        op_macs = sum(o.coeff * int(np.prod([keep[f].sum() for f in o.factors]))
                      for o in ops)
        assert layer_macs + op_macs == graph.cost_of_mask(keep).macs


def test_attention_products_narrowed_by_their_contracted_width_are_predicted(tmp_path):
    model, graph, lm = _attention_model(ProductsTimer(), tmp_path)
    keep = _thin_scores(graph)
    measured = lm.measure(model, keep)
    assert lm.predict(keep) == pytest.approx(measured, rel=0.01)
    assert lm.coef[2] > 0                       # the products' MACs carry their cost


def test_refine_corrects_the_model_where_a_plan_was_measured(tmp_path):
    model, graph, lm = _attention_model(ProductsTimer(power=2.0), tmp_path)
    keep = _thin_scores(graph)
    measured = lm.measure(model, keep)
    before = abs(lm.predict(keep) / measured - 1)
    samples = lm.fit["samples"]
    lm.refine(keep, measured / lm.dense_s)
    assert lm.fit["samples"] == samples + 1
    assert abs(lm.predict(keep) / measured - 1) < before


def test_refine_keeps_the_fitted_multiple(resnet, tmp_path):
    model, graph = resnet
    lm = _model(resnet, tmp_path, context=2e-8)
    assert lm.align > 1
    keep = lm.mixed(7)
    lm.refine(keep, lm.measure(model, keep) / lm.dense_s)
    assert lm.align == _model(resnet, tmp_path, context=2e-8).align


def test_refine_needs_a_calibrated_model(resnet, tmp_path):
    model, graph = resnet
    lm = LatencyModel(graph, Target(batch=4, threads=1), SyntheticTimer(), tmp_path)
    assert not lm.calibrated
    with pytest.raises(RuntimeError, match="calibrated"):
        lm.refine(np.ones(graph.n_units, dtype=bool), 1.0)
