"""The graph's public façade for methods: the traced graph, units and MACs per node,
value kinds, and the masked reference run over any stretch of nodes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from prunekit import ChannelGraph
from prunekit.conformance import random_plan
from prunekit.methods.split import Runner, Segment
from prunekit.models import CifarResNet


class _Stream(nn.Module):
    """A LayerNorm-normalised residual stream (its channels prune with kept statistics)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(12, 16)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 32),
                                                  nn.GELU(), nn.Linear(32, 16))
                                    for _ in range(2))
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.inp(x)
        for b in self.blocks:
            x = x + b(x)
        return self.head(self.norm(x))


def test_node_macs_add_up_to_the_cost_and_name_traced_nodes():
    for model, x in ((CifarResNet(8), torch.randn(1, 3, 32, 32)),
                     (_Stream(), torch.randn(2, 7, 12))):
        graph = ChannelGraph.build(model.eval(), x)
        names = {n.name for n in graph.traced.graph.nodes}
        macs = graph.node_macs()
        assert set(macs) <= names and sum(macs.values()) == graph.cost().macs


def test_node_units_and_value_kinds():
    graph = ChannelGraph.build(_Stream().eval(), torch.randn(2, 7, 12))
    carried = graph.node_units()
    for node in graph.traced.graph.nodes:
        if node in carried:
            u = carried[node]
            assert (np.diff(u) > 0).all() and u.max() < graph.n_units
    kinds = {n.op: graph.value_kind(n) for n in graph.traced.graph.nodes}
    assert kinds["placeholder"] == "tensor" and kinds["output"] is None
    stream = graph.group(graph.prunable_groups[0].id)
    assert any(np.isin(stream.units, u).any() for u in carried.values())


def test_the_segment_runner_computes_the_pruned_model_with_kept_statistics():
    """Runner (EMO-DIR's sub-network evaluation) is the engine's masked reference, so a
    LayerNorm stream's statistics are taken over the kept channels, as after pruning."""
    torch.manual_seed(0)
    model, x = _Stream().eval(), torch.randn(2, 7, 12)
    graph = ChannelGraph.build(model, x)
    plan = random_plan(graph, 0.5, seed=1)
    assert len(plan.keep["inp"]) < graph.group("inp").width   # the normalised stream prunes
    nodes = list(graph.traced.graph.nodes)
    whole = Segment(0, 0, nodes.index(nodes[-1].args[0]), ())
    got = Runner(graph, model, graph.keep_mask(plan)).run(whole, x)
    with torch.no_grad():
        want = graph.apply(model, plan)(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with torch.no_grad():      # and with nothing removed, the model itself
        torch.testing.assert_close(Runner(graph, model).run(whole, x), model(x))


def test_no_method_reaches_into_the_graph():
    """Methods and benchmarks use the façade only: no underscore attribute of a graph
    outside graph/."""
    root = Path(__file__).resolve().parents[1]
    src = root / "src" / "prunekit"
    bad = []
    for f in [*src.rglob("*.py"), *(root / "benchmarks").rglob("*.py")]:
        if f.is_relative_to(src) and "graph" in f.relative_to(src).parts[:1]:
            continue
        for i, line in enumerate(f.read_text().splitlines(), 1):
            if re.search(r"\bgraph\._|\._b\b|\.graphs\[", line):
                bad.append(f"{f.name}:{i}: {line.strip()}")
    assert not bad, bad


def test_producers_cover_every_element_once():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    graph = ChannelGraph.build(model.eval(), torch.randn(1, 3, 8, 8))
    prods = graph.producers()
    assert [(p.name, p.kind, len(p.units)) for p in prods] == [("0", "conv", 8), ("3", "conv", 4)]
    assert sorted(np.concatenate([p.units for p in prods]).tolist()) == list(range(graph.n_units))
