"""The engine's contract, checked on every coupling pattern (tiny models)."""

from __future__ import annotations

import pytest
import torch

from prunekit import ChannelGraph, Plan
from prunekit.conformance import check_plan, random_plan
from prunekit.io import load_pruned, save_pruned
from tiny_models import TINY, make

NAMES = sorted(TINY)


@pytest.fixture(scope="module", params=NAMES)
def built(request):
    model, x = make(request.param)
    return request.param, model, x, ChannelGraph.build(model, x)


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_equivalence_cost_untouched(built, ratio):
    name, model, x, graph = built
    for seed in range(2):
        plan = random_plan(graph, ratio, seed)
        check_plan(model, x, graph, plan)


def test_pruning_is_not_vacuous(built):
    """Some group is prunable, and removing channels changes the output."""
    name, model, x, graph = built
    assert graph.prunable_groups, f"{name}: nothing prunable\n{graph.explain()}"
    plan = random_plan(graph, 0.5)
    assert plan.keep, f"{name}: the random plan removed nothing"
    with torch.no_grad():
        out = graph.apply(model, plan)(*x)
        base = model(*x)
    out, base = (out[0], base[0]) if isinstance(out, tuple) else (out, base)
    assert not torch.allclose(out, base), f"{name}: pruning changed nothing"


def test_full_plan_reproduces_model(built):
    name, model, x, graph = built
    plan = graph.full_plan()
    with torch.no_grad():
        a, b = graph.apply(model, plan)(*x), model(*x)
    a, b = (a[0], b[0]) if isinstance(a, tuple) else (a, b)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_plan_json_round_trip(built):
    name, model, x, graph = built
    plan = random_plan(graph, 0.5, seed=3)
    again = Plan.from_json(plan.to_json())
    assert again == plan
    assert graph.keep_mask(again).tolist() == graph.keep_mask(plan).tolist()


def test_save_load_round_trip(built, tmp_path):
    name, model, x, graph = built
    plan = random_plan(graph, 0.5, seed=1)
    pruned = graph.apply(model, plan).eval()
    save_pruned(tmp_path / name, pruned, plan, x)
    fresh, _ = make(name, seed=123)  # different weights: everything must come from the file
    loaded, plan2 = load_pruned(tmp_path / name, fresh)
    assert plan2 == plan
    with torch.no_grad():
        a, b = pruned(*x), loaded.eval()(*x)
    a, b = (a[0], b[0]) if isinstance(a, tuple) else (a, b)
    assert torch.equal(a, b)


def test_same_seed_same_plan(built):
    name, model, x, graph = built
    assert random_plan(graph, 0.5, seed=7) == random_plan(graph, 0.5, seed=7)


@pytest.mark.parametrize("name", ["chain", "cifar_option_a", "depthwise", "tokens_mha"])
def test_onnx_parity(name, tmp_path):
    pytest.importorskip("onnxruntime")
    from prunekit.io import export_onnx
    model, x = make(name)
    graph = ChannelGraph.build(model, x)
    pruned = graph.apply(model, random_plan(graph, 0.5))
    err = export_onnx(pruned, x, tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").is_file()
    assert err < 1e-4


@pytest.mark.parametrize("name", ["depthwise", "cifar_option_a", "tokens_mha", "grouped"])
def test_inplace_apply_equals_copy(name):
    model, x = make(name)
    graph = ChannelGraph.build(model, x)
    plan = random_plan(graph, 0.5, seed=2)
    copied = graph.apply(model, plan)
    same = graph.apply(model, plan, inplace=True)
    assert same is model or isinstance(same, torch.fx.GraphModule)
    with torch.no_grad():
        a, b = copied(*x), same.eval()(*x)
    a, b = (a[0], b[0]) if isinstance(a, tuple) else (a, b)
    torch.testing.assert_close(a, b)
