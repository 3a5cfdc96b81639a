"""Representative torchvision classifiers (one or more per family) through the contract."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torchvision")

from prunekit import ChannelGraph  # noqa: E402
from prunekit.conformance import check_plan, random_plan  # noqa: E402
from prunekit.zoo import build  # noqa: E402

SUBSET = ["alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "googlenet",
          "maxvit_t", "mnasnet0_5", "mobilenet_v2", "mobilenet_v3_small", "regnet_y_400mf",
          "resnet18", "resnext50_32x4d", "shufflenet_v2_x0_5", "squeezenet1_1", "swin_t",
          "vgg11_bn", "vit_b_32", "wide_resnet50_2"]


@pytest.mark.slow
@pytest.mark.parametrize("name", SUBSET)
def test_torchvision_model(name):
    model, x = build(name)
    graph = ChannelGraph.build(model, x)
    assert graph.prunable_groups, graph.explain()
    plan = random_plan(graph, 0.5)
    result = check_plan(model, x, graph, plan)
    with torch.no_grad():
        assert not torch.allclose(result["pruned"](*x), model(*x))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["swin_t", "swin_v2_t"])
def test_swin_heads_prune_twice_and_reload(name, tmp_path):
    """Heads of Swin prune; the pruned model can be pruned again and saved/loaded."""
    from prunekit.io import load_pruned, save_pruned
    model, x = build(name)
    graph = ChannelGraph.build(model, x)
    heads = [g for g in graph.prunable_groups if g.kind == "heads"]
    assert heads, "Swin heads should be prunable"
    plan = graph.make_plan({g.id: list(range(1, g.width)) for g in heads})
    result = check_plan(model, x, graph, plan)
    pruned = result["pruned"]
    save_pruned(tmp_path / "m", pruned, plan, x)
    loaded, _ = load_pruned(tmp_path / "m", build(name, seed=1)[0])
    with torch.no_grad():
        assert torch.equal(loaded.eval()(*x), pruned(*x))
    again = ChannelGraph.build(pruned, x)
    check_plan(pruned, x, again, random_plan(again, 0.3))
