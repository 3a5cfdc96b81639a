"""Bad input fails fast with a typed error that says what to fix."""

from __future__ import annotations

import json
import re

import subprocess
import sys

import pytest
import torch
from torch import nn

from prunekit import (ChannelGraph, ExampleInputError, Plan, PlanError, PlanFormatError,
                      PlanMismatchError, TargetError, TraceError, UnreachableTargetError,
                      WeightsMismatchError)
from prunekit.conformance import random_plan
from prunekit.io import load_pruned, save_pruned
from prunekit.methods import OneShotConfig, prune_oneshot
from prunekit.models import CifarResNet
from tiny_models import make


@pytest.fixture(scope="module")
def r20():
    model = CifarResNet(20).eval()
    x = torch.randn(1, 3, 32, 32)
    return model, x, ChannelGraph.build(model, x)


@pytest.mark.parametrize("target", [0, 0.0, -0.5, 1.01, 2, "half", None])
def test_target_outside_unit_interval(target):
    with pytest.raises(TargetError, match=r"\(0, 1\]"):
        OneShotConfig(target=target)


def test_bad_metric_and_criterion():
    with pytest.raises(TargetError, match="metric"):
        OneShotConfig(metric="flops")
    with pytest.raises(TargetError, match="criterion"):
        OneShotConfig(criterion="magic")
    with pytest.raises(TargetError, match="allocation"):
        OneShotConfig(allocation="weird")


def test_unreachable_target(r20):
    model, x, graph = r20
    with pytest.raises(UnreachableTargetError, match="unreachable"):
        prune_oneshot(model, x, OneShotConfig(target=0.001, min_width=4), graph=graph)


def test_plan_for_other_model(r20):
    model, x, graph = r20
    other = CifarResNet(32).eval()
    g32 = ChannelGraph.build(other, x)
    plan = random_plan(g32, 0.5)
    with pytest.raises(PlanMismatchError, match="different model"):
        graph.apply(model, plan)
    with pytest.raises(PlanMismatchError):
        graph.apply(other, random_plan(graph, 0.5))


def test_malformed_and_newer_plan_json():
    with pytest.raises(PlanFormatError, match="not valid JSON"):
        Plan.from_json("{not json")
    with pytest.raises(PlanFormatError, match="not a prunekit plan"):
        Plan.from_json(json.dumps([1, 2]))
    doc = Plan({"a": (0, 1)}, "abc").to_dict()
    doc["version"] = 99
    with pytest.raises(PlanFormatError, match="newer"):
        Plan.from_dict(doc)
    doc["version"] = 1
    doc["keep"] = {"a": ["x"]}
    with pytest.raises(PlanFormatError, match="list of ints"):
        Plan.from_dict(doc)


def test_invalid_plan_contents(r20):
    model, x, graph = r20
    fp = graph.fingerprint
    with pytest.raises(PlanError, match="no group"):
        graph.keep_mask(Plan({"nope": (0,)}, fp))
    gid = graph.prunable_groups[0].id
    with pytest.raises(PlanError, match="sorted"):
        graph.keep_mask(Plan({gid: (3, 1)}, fp))
    with pytest.raises(PlanError, match="at least one"):
        graph.keep_mask(Plan({gid: ()}, fp))
    frozen = next(g for g in graph.groups if g.frozen and g.width > 1)
    with pytest.raises(PlanError, match="frozen"):
        graph.keep_mask(Plan({frozen.id: (0,)}, fp))


def test_example_inputs_rejected():
    model = CifarResNet(20)
    with pytest.raises(ExampleInputError, match="rejected the example inputs"):
        ChannelGraph.build(model, torch.randn(1, 5, 32, 32))


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        if x.sum() > 0:
            return self.c(x)
        return x


def test_untraceable_model():
    with pytest.raises(TraceError, match="cannot be traced"):
        ChannelGraph.build(DataDependent(), torch.randn(1, 3, 8, 8), capture="fx")


def test_untraceable_model_is_recorded():
    """capture='auto' falls back to recording one forward pass, which follows the branch taken."""
    x = torch.rand(1, 3, 8, 8)
    graph = ChannelGraph.build(DataDependent(), x)
    assert graph.options["capture"] == "record"
    assert graph.group("c").width == 4


def test_weights_do_not_match_plan(tmp_path, r20):
    model, x, graph = r20
    plan = random_plan(graph, 0.5)
    save_pruned(tmp_path / "m", graph.apply(model, plan), plan, (x,))
    other = random_plan(graph, 0.25, seed=5)
    doc = json.loads((tmp_path / "m" / "plan.json").read_text())
    doc["keep"] = {k: list(v) for k, v in other.keep.items()}
    (tmp_path / "m" / "plan.json").write_text(json.dumps(doc))
    with pytest.raises(WeightsMismatchError, match="do not match"):
        load_pruned(tmp_path / "m", CifarResNet(20))


@pytest.mark.parametrize("edit,needle", [
    (lambda d: d["keep"].update({next(iter(d["keep"])): ["1", "2"]}), "list of ints"),
    (lambda d: d["graph"].update(input_shapes=[["1", "3", "32", "32"]]), "shape of input 0"),
    (lambda d: d["graph"].update(input_shapes="1x3x32x32"), "input_shapes"),
    (lambda d: d.update(graph=[1]), "\"graph\" must be an object"),
])
def test_hand_edited_plan_is_named_not_a_torch_error(tmp_path, r20, edit, needle):
    model, x, graph = r20
    plan = random_plan(graph, 0.5)
    save_pruned(tmp_path / "m", graph.apply(model, plan), plan, (x,))
    doc = json.loads((tmp_path / "m" / "plan.json").read_text())
    edit(doc)
    (tmp_path / "m" / "plan.json").write_text(json.dumps(doc))
    with pytest.raises(PlanFormatError, match=re.escape(needle)):
        load_pruned(tmp_path / "m", CifarResNet(20))


def test_missing_or_corrupt_files(tmp_path):
    with pytest.raises(PlanFormatError, match="no plan.json"):
        load_pruned(tmp_path, CifarResNet(20))
    (tmp_path / "plan.json").write_text("{")
    with pytest.raises(PlanFormatError):
        load_pruned(tmp_path, CifarResNet(20))


def test_failed_save_leaves_nothing(tmp_path, r20, monkeypatch):
    model, x, graph = r20
    plan = random_plan(graph, 0.5)
    import errno

    import prunekit.outputs as outputs

    def full(f, data):     # the disk fills half-way through the weights
        if len(data) > 10_000:
            f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        f.write(data)
    monkeypatch.setattr(outputs, "_write_all", full)
    with pytest.raises(outputs.OutputError, match="no space left on device while writing "
                       r".*m/weights\.safetensors"):
        save_pruned(tmp_path / "m", graph.apply(model, plan), plan, (x,))
    assert list(tmp_path.iterdir()) == []


def test_unknown_op_freezes_with_reason():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 4, 1)

        def forward(self, x):
            return self.b(torch.logcumsumexp(self.a(x), dim=1))

    graph = ChannelGraph.build(Odd(), torch.randn(1, 3, 4, 4))
    g = graph.group("a")
    assert g.frozen
    assert "logcumsumexp" in g.reasons[0] and "not understood" in g.reasons[0]
    assert "logcumsumexp" in graph.explain()


def test_model_not_the_graphs(r20):
    model, x, graph = r20
    _, xx = make("chain")
    with pytest.raises(PlanMismatchError):
        graph.apply(make("chain")[0], graph.full_plan())


def test_outputs_honour_the_umask(tmp_path, r20):
    """Atomic writes go through tempfile (0600/0700); the results get the modes a plain
    write would: readable by group and others under umask 022, private under 077."""
    import os
    model, x, graph = r20
    plan = random_plan(graph, 0.5)
    pruned = graph.apply(model, plan)
    old = os.umask(0o022)
    try:
        save_pruned(tmp_path / "m", pruned, plan, (x,))
        plan.save(tmp_path / "p.json")
        os.umask(0o077)
        plan.save(tmp_path / "private.json")
    finally:
        os.umask(old)
    assert (tmp_path / "m").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "p.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "private.json").stat().st_mode & 0o777 == 0o600


def test_conformance_checks_still_check_under_python_O():
    """The checks raise ConformanceError explicitly, never through ``assert``, so LAPP's
    safety check and the conformance suite stay on under ``python -O``."""
    code = ("import torch\n"
            "from prunekit.conformance import ConformanceError, outputs_close\n"
            "for a, b in ((torch.zeros(3), torch.ones(3)), (torch.zeros(3), torch.zeros(4)),\n"
            "             ((torch.zeros(1),), (torch.zeros(1), torch.zeros(1)))):\n"
            "    try:\n"
            "        outputs_close(a, b)\n"
            "    except ConformanceError:\n"
            "        continue\n"
            "    raise SystemExit('no error for ' + repr((a, b)))\n"
            "assert False, 'asserts are on: not running under -O'\n")
    res = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_info_all_shows_the_frozen_groups(capsys):
    from prunekit.cli import main
    assert main(["info", "--model", "resnet20"]) == 0
    plain = capsys.readouterr().out
    assert main(["info", "--model", "resnet20", "--all"]) == 0
    full = capsys.readouterr().out
    assert "frozen" not in plain and "model output (protected)" in full
