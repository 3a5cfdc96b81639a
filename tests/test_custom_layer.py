"""The custom-layer API as docs/engine.md documents it: a user's layer, kept whole."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit import ChannelGraph
from prunekit.conformance import check_plan, random_plan
from prunekit.graph.builder import MODULE_RULES, Builder, module_rule
from prunekit.graph.layout import Layout


class Scale(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.s = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x):
        return x * self.s[:, None, None]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.scale, self.fc = nn.Conv2d(3, 8, 3), Scale(8), nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.scale(self.conv(x))).mean((2, 3)))


@pytest.fixture
def scale_rule():
    @module_rule(Scale)
    def rule(b: Builder, node, mod: Scale):
        lay = b.layout(node.args[0])
        ids = lay.ids_1d(1)
        if ids is not None:
            b.record(f"{node.target}.s", 0, ids)
        return Layout(b.shape(node), lay.blocks)
    yield rule
    MODULE_RULES[:] = [(t, f) for t, f in MODULE_RULES if f is not rule]


@pytest.mark.parametrize("capture", ["fx", "record"])
def test_registered_rule_keeps_the_layer_whole(scale_rule, capture):
    model, x = Net().eval(), torch.randn(2, 3, 8, 8)
    graph = ChannelGraph.build(model, x, capture=capture)
    nodes = [n for n in graph.graphs[0][1].graph.nodes if n.op == "call_module"]
    assert "scale" in [str(n.target) for n in nodes]
    plan = random_plan(graph, 0.5)
    check_plan(model, x, graph, plan)
    assert graph.apply(model, plan).scale.s.numel() == 4


def test_without_a_rule_the_layer_is_traced_through():
    model, x = Net().eval(), torch.randn(2, 3, 8, 8)
    graph = ChannelGraph.build(model, x, capture="record")
    plan = random_plan(graph, 0.5)
    check_plan(model, x, graph, plan)          # the functional ops inside have rules
