"""The engine's contract on the rules real zoos need, and behaviour of the new capture."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit import ChannelGraph
from prunekit.conformance import check_plan, random_plan
from prunekit.errors import VerificationError
from prunekit.graph.trace import as_inputs
from prunekit.io import load_pruned, save_pruned
from reach_models import REACH, make

NAMES = sorted(REACH)


@pytest.fixture(scope="module", params=NAMES)
def built(request):
    model, x = make(request.param)
    return request.param, model, x, ChannelGraph.build(model, x)


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_equivalence_cost_untouched(built, ratio):
    name, model, x, graph = built
    for seed in range(2):
        check_plan(model, x, graph, random_plan(graph, ratio, seed))


def test_something_prunes_and_changes_output(built):
    name, model, x, graph = built
    plan = random_plan(graph, 0.5)
    assert plan.keep, f"{name}: nothing removed\n{graph.explain()}"
    inputs = as_inputs(x)
    with torch.no_grad():
        a = inputs.call(graph.apply(model, plan))
        b = inputs.call(model)
    a, b = (a.logits, b.logits) if hasattr(a, "logits") else (a, b)
    assert not torch.allclose(a, b)


def test_save_load_round_trip(built, tmp_path):
    name, model, x, graph = built
    plan = random_plan(graph, 0.5, seed=1)
    pruned = graph.apply(model, plan)
    save_pruned(tmp_path / name, pruned, plan, x, graph_options=graph.options)
    fresh, _ = make(name, seed=5)
    loaded, again = load_pruned(tmp_path / name, fresh)
    assert again == plan
    inputs = as_inputs(x)
    with torch.no_grad():
        a, b = inputs.call(pruned), inputs.call(loaded.eval())
    a, b = (a.logits, b.logits) if hasattr(a, "logits") else (a, b)
    assert torch.equal(a, b)


def _width(graph, gid):
    return graph.group(gid).n_prunable


def test_normalised_stream_prunes_and_can_be_frozen():
    model, x = make("layernorm_stream")
    graph = ChannelGraph.build(model, x)
    assert _width(graph, "embed") == 12           # the stream under LayerNorm is prunable
    frozen = ChannelGraph.build(model, x, freeze_normalised=True)
    assert _width(frozen, "embed") == 0
    assert any("freeze_normalised" in r for r in frozen.group("embed").reasons)


def test_group_norm_loses_whole_groups():
    model, x = make("group_norms")
    graph = ChannelGraph.build(model, x)
    assert len(graph.group("c1").units) == 4      # 12 channels in 4 groups: 4 units
    plan = graph.make_plan({"c1": [0, 2]})
    pruned = graph.apply(model, plan)
    assert pruned.g1.num_groups == 2 and pruned.g1.num_channels == 6


def test_grouped_conv_under_group_norm_loses_whole_conv_groups():
    model, x = make("grouped_group_norm")
    graph = ChannelGraph.build(model, x)
    stream = graph.group("c1")                   # c1, g and g2 outputs: one GroupNorm group
    assert len(stream.units) == 3 and stream.n_prunable == 3   # = two conv groups of g
    assert len(graph.group("c3").units) == 8     # g3's 2 groups of 8: one unit per index
    assert len(graph.group("g3").units) == 8
    plan = graph.make_plan({"c1": [0, 2], "c3": [0, 1, 2, 5], "g3": [1, 3, 4]})
    pruned = graph.apply(model, plan)            # verifies against the masked reference
    assert (pruned.g.groups, pruned.g.in_channels, pruned.g.out_channels) == (4, 16, 16)
    assert pruned.g.weight.shape[1] == 4         # every kept conv group keeps its weights
    assert (pruned.g2.groups, pruned.g2.in_channels, pruned.g2.out_channels) == (2, 16, 16)
    assert pruned.n1.num_groups == 2 and pruned.n2.num_groups == 2
    assert (pruned.g3.groups, pruned.g3.in_channels, pruned.g3.out_channels) == (2, 8, 6)
    result = check_plan(model, x, graph, plan)
    assert result["macs"] == graph.cost(plan).macs


def test_gqa_heads_go_with_their_query_group():
    model, x = make("tiny_lm_gqa_rope")
    graph = ChannelGraph.build(model, x)
    assert graph.options["capture"] in ("fx", "record")
    heads = graph.group("attn.q")
    assert heads.width == 2                       # 2 key/value heads, each with 2 query heads
    pruned = graph.apply(model, graph.make_plan({"attn.q": [1]}))
    assert pruned.attn.q.out_features == 8 and pruned.attn.k.out_features == 4


def test_factory_made_input_freezes_its_conv_columns():
    model, x = make("fourier_pos")
    graph = ChannelGraph.build(model, x)
    pruned = graph.apply(model, random_plan(graph, 0.5))
    assert pruned.proj.in_channels == 8           # the positional input keeps its 8 channels
    assert pruned.proj.out_channels < 8 or pruned.stem.out_channels < 8


def test_detection_head_outputs_are_kept():
    model, x = make("c2f")
    graph = ChannelGraph.build(model, x)
    pruned = graph.apply(model, random_plan(graph, 0.5))
    assert pruned.det.out_channels == 6
    assert pruned.c2f.cv1.out_channels % 2 == 0   # chunk(2): both halves keep equal widths


def test_dict_inputs_are_recorded():
    model, x = make("dict_in_out")
    graph = ChannelGraph.build(model, x)
    assert graph.options["capture"] == "record"
    with pytest.raises(Exception):
        ChannelGraph.build(model, x, capture="fx")


def test_record_and_fx_give_the_same_groups():
    """One set of rules over one normalised graph: both captures agree."""
    model, x = make("layernorm_stream")
    a = ChannelGraph.build(model, x, capture="fx")
    b = ChannelGraph.build(model, x, capture="record")
    assert [(g.id, g.width, g.n_prunable) for g in a.groups] == \
        [(g.id, g.width, g.n_prunable) for g in b.groups]
    assert a.cost() == b.cost()


class Wrong(nn.Module):
    """Reads a channel count from an attribute the engine cannot know about."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = self.a(x)
        return self.b(h * (1.0 / h.shape[-1]))    # a width-dependent constant


def test_apply_verifies_and_names_the_group():
    model = Wrong().eval()
    x = torch.randn(2, 4)
    graph = ChannelGraph.build(model, x, capture="record")
    plan = graph.make_plan({"a": [0, 1, 2]})
    with pytest.raises(VerificationError, match="'a'"):
        graph.apply(model, plan)
    graph.apply(model, plan, verify=False)        # search loops may skip the check


def test_eager_attention_heads_prune_whole():
    model, x = make("eager_attention")
    graph = ChannelGraph.build(model, x)
    assert graph.group("attn.qkv").n_prunable == 4      # four heads, each one unit
    pruned = graph.apply(model, graph.make_plan({"attn.qkv": [0, 3]}))
    assert pruned.attn.qkv.out_features == 24 and pruned.attn.proj.in_features == 8


class FlipScan(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 6, 1), nn.Conv2d(6, 4, 1)

    def forward(self, x):
        y = self.a(x)
        y = y + self.b(torch.roll(y, 1, dims=-1).flip(1))      # roll in space, flip channels
        return self.c(torch.cumsum(y, dim=-1))                  # a running sum in space


def test_flip_roll_and_spatial_scans_follow_channels():
    model, x = FlipScan().eval(), torch.randn(2, 3, 4, 4)
    graph = ChannelGraph.build(model, x)
    assert graph.group("a").n_prunable == 6
    check_plan(model, x, graph, random_plan(graph, 0.5))


def test_scan_over_channels_freezes():
    class Scan(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 4, 1)

        def forward(self, x):
            return self.b(torch.cumsum(self.a(x), dim=1))

    graph = ChannelGraph.build(Scan(), torch.randn(1, 3, 4, 4))
    assert graph.group("a").frozen and "runs along channels" in graph.group("a").reasons[0]


def test_undeclared_head_attribute_follows_by_origin():
    """num_heads equals the literal 3 of q, k, v: the head count is known by origin."""
    model, x = make("relpos_attention")
    graph = ChannelGraph.build(model, x)
    heads = next(g for g in graph.groups if "attn.qkv.weight:0" in g.members)
    assert heads.width == 3 and heads.n_prunable == 3, graph.explain()   # whole heads
    assert "attn.table:1" in heads.members     # the gathered bias goes with its head
    plan = graph.make_plan({heads.id: [0, 2]})
    pruned = graph.apply(model, plan)
    assert pruned.attn.num_heads == 2 and pruned.attn.head_dim == 4
    assert pruned.attn.table.shape == (9, 2)
    assert int(model.attn.num_heads) == 3 and type(model.attn.num_heads) is int


class TwoWidths(nn.Module):
    """One attribute sizing two tensors that prune apart: it cannot follow both."""

    def __init__(self) -> None:
        super().__init__()
        self.width = 4
        self.a, self.b, self.head = nn.Linear(3, 8), nn.Linear(3, 8), nn.Linear(16, 2)

    def forward(self, x):
        ya = self.a(x).reshape(x.shape[0], 2, self.width)
        yb = self.b(x).reshape(x.shape[0], self.width, 2)
        return self.head(torch.cat([ya.flatten(1), yb.flatten(1)], 1))


def test_attribute_sizing_two_widths_couples_them():
    model = TwoWidths().eval()
    x = torch.randn(2, 3)
    graph = ChannelGraph.build(model, x)
    both = [g for g in graph.groups if {"a.weight:0", "b.weight:0"} <= set(g.members)]
    assert len(both) == 1 and both[0].width == 4 and both[0].n_prunable == 4, graph.explain()
    for ratio in (0.25, 0.5):
        check_plan(model, x, graph, random_plan(graph, ratio))
    pruned = graph.apply(model, graph.make_plan({both[0].id: [1, 3]}))   # verified
    assert pruned.width == 2

