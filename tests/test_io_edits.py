"""Structural edits named in a plan are redone on load; only registered ones run."""

import json

import pytest
import torch
from torch import nn

from prunekit.errors import PlanFormatError
from prunekit.graph import ChannelGraph
from prunekit.io import load_pruned, register_edit, save_pruned
from prunekit.io.edits import apply_edits, edits_of
from prunekit.methods.lapp import add_bypass, has_bypass
from prunekit.models import CifarResNet

X = torch.randn(2, 3, 16, 16)


def _saved_with_bypass(tmp_path, meta: dict):
    model = CifarResNet(8, widths=(8, 16, 32)).eval()
    add_bypass(model)
    graph = ChannelGraph.build(model, X)
    keep = torch.ones(graph.n_units, dtype=torch.bool).numpy()
    keep[graph.prunable_groups[0].units[:2]] = False
    plan = graph.plan_of_mask(keep, meta)
    pruned = graph.apply(model, plan)
    save_pruned(tmp_path / "m", pruned, plan, X)
    return pruned


@pytest.mark.parametrize("meta", [{"edits": ["bypass"]}, {"bypass": True}],
                         ids=["edits", "legacy-flag"])
def test_load_rebuilds_the_bypass_the_plan_names(tmp_path, meta):
    pruned = _saved_with_bypass(tmp_path, meta)
    fresh = CifarResNet(8, widths=(8, 16, 32))
    assert not has_bypass(fresh)
    loaded, _ = load_pruned(tmp_path / "m", fresh)
    assert has_bypass(loaded)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(X), pruned(X))


def test_without_the_edit_the_weights_do_not_match(tmp_path):
    _saved_with_bypass(tmp_path, {})                 # the plan forgets to name its edit
    with pytest.raises(Exception):
        load_pruned(tmp_path / "m", CifarResNet(8, widths=(8, 16, 32)))


def test_unknown_edit_refused_before_any_change(tmp_path):
    _saved_with_bypass(tmp_path, {"edits": ["bypass", "rm -rf"]})
    fresh = CifarResNet(8, widths=(8, 16, 32))
    with pytest.raises(PlanFormatError, match="'rm -rf'.*register_edit"):
        load_pruned(tmp_path / "m", fresh)
    assert not has_bypass(fresh)                     # bypass was not applied either


def test_malformed_edits_refused(tmp_path):
    _saved_with_bypass(tmp_path, {"edits": "bypass"})
    with pytest.raises(PlanFormatError, match="list of edit names"):
        load_pruned(tmp_path / "m", CifarResNet(8, widths=(8, 16, 32)))


def test_registered_edit_runs_on_load(tmp_path):
    calls = []

    def widen_head(model: nn.Module) -> None:        # idempotent: marks the model once
        calls.append(type(model).__name__)
        model.tagged = True

    register_edit("test-tag", widen_head)
    assert edits_of({"edits": ["test-tag"]}) == ["test-tag"]
    m = nn.Linear(2, 2)
    apply_edits(m, ["test-tag"])
    assert calls == ["Linear"] and m.tagged
    with pytest.raises(ValueError):
        register_edit("", widen_head)


def test_plan_file_keeps_the_edit_names(tmp_path):
    _saved_with_bypass(tmp_path, {"edits": ["bypass"]})
    doc = json.loads((tmp_path / "m" / "plan.json").read_text())
    assert doc["meta"]["edits"] == ["bypass"]
