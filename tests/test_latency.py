"""Latency models with a synthetic timer (no timed assertions): the table's cache key and
invalidation, the allocator meeting a latency budget, staircase rounding, calibration,
bad targets refused, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from prunekit import ChannelGraph
from prunekit.errors import TargetError
from prunekit.latency import LatencyModel, LayerTable, Target
from prunekit.latency.table import signature
from prunekit.methods import OneShotConfig, prune_oneshot
from prunekit.models import CifarResNet

X = torch.randn(1, 3, 16, 16)


def _conv_cost(m: nn.Module, x: torch.Tensor, staircase: float, hot: float) -> float:
    """Seconds of one conv/linear: its MACs (1 ns each), widths off multiples of 8 paying
    a full multiple of 8 times ``staircase`` (SIMD lanes), layers at 16x16 and above
    ``hot`` times as much per MAC (a high-resolution stage bound by memory)."""
    if isinstance(m, nn.Conv2d):
        lanes = -(-m.out_channels // 8) * 8 * (staircase if m.out_channels % 8 else 1.0) \
            if staircase > 1 else m.out_channels
        per_group_in = m.in_channels / m.groups
        positions = int(np.prod(x.shape[2:])) / int(np.prod(m.stride))
        return 1e-9 * lanes * per_group_in * x.shape[0] * positions * \
            int(np.prod(m.kernel_size)) * (hot if positions >= 256 else 1.0)
    if isinstance(m, nn.Linear):
        return 1e-9 * m.in_features * m.out_features * (x.numel() // x.shape[-1])
    return 0.0


class SyntheticTimer:
    """Deterministic 'measurements': a layer costs :func:`_conv_cost`; a whole model the
    sum over its layers (on their real inputs) plus ``fixed`` seconds."""

    def __init__(self, staircase: float = 1.0, hot: float = 1.0, fixed: float = 1e-3,
                 context: float = 0.0, block: int = 8) -> None:
        self.calls, self.staircase, self.hot, self.fixed = 0, staircase, hot, fixed
        self.context = context    # seconds per output element of a conv off multiples of
        self.block = block        # block, paid only inside a whole model (layout reorders)

    def time(self, module: nn.Module, inputs) -> float:
        self.calls += 1
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            return _conv_cost(module, inputs[0], self.staircase, self.hot)
        total = [self.fixed]
        hooks = [m.register_forward_pre_hook(
            lambda m, a: total.append(_conv_cost(m, a[0], self.staircase, self.hot)))
            for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        hooks += [m.register_forward_hook(
            lambda m, a, y: total.append(self.context * y.numel() * bool(m.out_channels % self.block)))
            for m in module.modules() if isinstance(m, nn.Conv2d)]
        try:
            with torch.no_grad():
                module.eval()(*inputs)
        finally:
            for h in hooks:
                h.remove()
        return float(sum(total))


@pytest.fixture
def resnet():
    model = CifarResNet(8, widths=(16, 32, 64)).eval()
    return model, ChannelGraph.build(model, X)


def _model(resnet, tmp_path, **machine):
    model, graph = resnet
    lm = LatencyModel(graph, Target(batch=4, threads=1), SyntheticTimer(**machine), tmp_path)
    lm.measure_tables()
    lm.calibrate(model)
    return lm


def test_tables_are_cached_and_reused(resnet, tmp_path):
    model, graph = resnet
    first = LatencyModel(graph, Target(batch=4, threads=1), SyntheticTimer(), tmp_path)
    assert first.measure_tables() > 0
    files = sorted(p.name for p in tmp_path.iterdir())
    again = LatencyModel(graph, Target(batch=4, threads=1), SyntheticTimer(), tmp_path)
    assert again.measure_tables() == 0 and again.timer.calls == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == files
    doc = json.loads((tmp_path / files[0]).read_text())
    assert {"target", "layer", "points"} <= set(doc) and doc["target"]["batch"] == 4


@pytest.mark.parametrize("change", [{"batch": 8}, {"threads": 2}, {"backend": "onnxruntime"}])
def test_a_changed_target_measures_afresh(resnet, tmp_path, change):
    if change.get("backend"):
        pytest.importorskip("onnxruntime")
    model, graph = resnet
    LatencyModel(graph, Target(batch=4, threads=1), SyntheticTimer(), tmp_path).measure_tables()
    before = set(tmp_path.iterdir())
    other = LatencyModel(graph, Target(**{"batch": 4, "threads": 1, **change}),
                         SyntheticTimer(), tmp_path)
    assert other.measure_tables() > 0 and set(tmp_path.iterdir()) > before


def test_a_changed_library_version_measures_afresh(resnet, tmp_path, monkeypatch):
    model, graph = resnet
    LatencyModel(graph, Target(batch=4, threads=1), SyntheticTimer(), tmp_path).measure_tables()
    monkeypatch.setattr(torch, "__version__", "0.0.0-other")
    other = LatencyModel(graph, Target(batch=4, threads=1), SyntheticTimer(), tmp_path)
    assert other.measure_tables() > 0


def test_a_corrupt_cache_file_is_measured_again(resnet, tmp_path):
    model, graph = resnet
    lm = LatencyModel(graph, Target(batch=4, threads=1), SyntheticTimer(), tmp_path)
    lm.measure_tables()
    for p in tmp_path.iterdir():
        p.write_text("{not json")
    again = LatencyModel(graph, Target(batch=4, threads=1), SyntheticTimer(), tmp_path)
    assert again.measure_tables() == lm.measure_tables() + sum(
        len(t.grid_in) * len(t.grid_out) for t in lm.tables)


def test_calibrated_prediction_matches_the_synthetic_machine(resnet, tmp_path):
    model, graph = resnet
    lm = _model(resnet, tmp_path)
    for f in (1.0, 0.6, 0.3):
        keep = lm.uniform(f)
        assert lm.predict(keep) == pytest.approx(lm.measure(model, keep), rel=0.1)


@pytest.mark.parametrize("allocation", ["uniform", "global", "marginal"])
def test_allocator_meets_a_latency_budget(resnet, tmp_path, allocation):
    model, graph = resnet
    lm = _model(resnet, tmp_path)
    res = prune_oneshot(model, X, OneShotConfig(target=0.5, metric="latency",
                                                allocation=allocation), latency=lm)
    ratio = lm.predict(graph.keep_mask(res.plan)) / lm.predict()
    assert 0.5 * 0.97 <= ratio <= 0.5 and res.plan.meta["achieved"] == pytest.approx(ratio,
                                                                                   abs=1e-5)


def test_marginal_allocation_keeps_more_macs_at_equal_latency(resnet, tmp_path):
    model, graph = resnet
    lm = _model(resnet, tmp_path, hot=8.0)     # the 16x16 stage: 8x the seconds per MAC
    macs = {a: prune_oneshot(model, X, OneShotConfig(target=0.5, metric="latency",
                                                     allocation=a), latency=lm).after.macs
            for a in ("global", "marginal")}
    assert macs["marginal"] > macs["global"]


def test_marginal_counts_every_weight_tensor_a_unit_spans(resnet):
    from prunekit.methods.allocate import Budget, _coupled_weights, allocate
    _, graph = resnet
    groups = graph.prunable_groups
    stream = max(groups, key=_coupled_weights)       # option A: one stream through all stages
    assert _coupled_weights(stream) > max(_coupled_weights(g) for g in groups
                                          if g is not stream) >= 3
    keep = graph.keep_mask(allocate(graph, np.ones(graph.n_units), Budget(0.5), "marginal"))
    frac = {g.id: keep[g.units].sum() / g.width for g in groups}
    # equal importance per layer: a stream unit weighs as much as the layers it spans,
    # so it is not thinned before block-inner units that span three
    assert frac[stream.id] >= max(v for k, v in frac.items() if k != stream.id)
    assert min(frac.values()) < 1


def test_rounding_picks_the_faster_width_on_the_staircase(resnet, tmp_path):
    model, graph = resnet
    lm = _model(resnet, tmp_path, staircase=2.0)
    g = graph.group("layer3.0.conv1")                  # 64 wide, read only by layer3.0.conv2
    keep = np.ones(graph.n_units, dtype=bool)
    keep[g.units[13:]] = False                         # 13 kept: off the multiple of 8
    rounded = lm.round_widths(keep, [g], np.zeros(graph.n_units))
    assert rounded[g.units].sum() == 16                # the staircase's step is faster
    on_step = keep.copy()
    on_step[g.units[:16]] = True
    assert lm.round_widths(on_step, [g], np.zeros(graph.n_units))[g.units].sum() == 16


def test_rounding_never_breaks_the_budget(resnet, tmp_path):
    model, graph = resnet
    lm = _model(resnet, tmp_path, staircase=2.0)
    g = graph.group("layer3.0.conv1")
    keep = np.ones(graph.n_units, dtype=bool)
    keep[g.units[13:]] = False
    assert lm.round_widths(keep, [g], np.zeros(graph.n_units),
                           fits=lambda k: False)[g.units].sum() == 13


@pytest.mark.parametrize("kw, match", [({"device": "tpu"}, "device"),
                                       ({"backend": "tensorrt"}, "backend"),
                                       ({"batch": 0}, "batch"), ({"threads": True}, "threads")])
def test_bad_targets_refused(kw, match):
    with pytest.raises(TargetError, match=match):
        Target(**kw)


def test_cuda_refused_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(TargetError, match="no GPU"):
        Target(device="cuda").check_available()


def test_latency_budget_needs_a_model_and_a_method_that_takes_it(resnet):
    from prunekit.methods import Context, get_method
    from prunekit.methods.protocol import prepare
    from prunekit.methods.protocol import MethodBase, MethodConfig

    class _MacsOnly(MethodBase):        # a plugin that declares no latency support
        name = "test-macs-only"
        config = type("MacsOnlyConfig", (MethodConfig,), {})

        def run(self, model, config, context):
            raise AssertionError("never reached")
    model, _ = resnet
    with pytest.raises(TargetError, match="latency model"):
        prepare(get_method("oneshot"), OneShotConfig(metric="latency"), Context(X), model)
    with pytest.raises(TargetError, match="does not take metric 'latency'"):
        prepare(_MacsOnly(), _MacsOnly.config(metric="latency"), Context(X), model)


def test_pruning_spaces_draw_a_latency_band(resnet, tmp_path):
    from prunekit.methods import Context, prune
    from prunekit.methods.spaces_method import SpacesConfig
    model, graph = resnet
    lm = _model(resnet, tmp_path)
    x = torch.randn(32, 3, 16, 16)
    y = torch.randint(0, 10, (32,))
    cfg = SpacesConfig(target=0.6, metric="latency", band=0.1, samples=8, steps=1,
                       step_batch=4, held=8)
    res = prune(model, cfg, Context(X, labelled=(x, y), latency=lm))
    assert all(0.5 <= p.cost_ratio <= 0.7 for p in res.front)
    ratio = lm.predict(graph.keep_mask(res.plan)) / lm.predict()
    assert 0.6 * 0.97 <= ratio <= 0.6


def test_spaces_config_of_version_1_reads_batch_as_step_batch():
    from prunekit.methods.spaces_method import SpacesConfig
    cfg = SpacesConfig.from_dict({"method": "space", "version": 1, "batch": 16})
    assert cfg.step_batch == 16 and SpacesConfig.from_json(cfg.to_json()) == cfg


def test_emo_searches_a_latency_objective(resnet, tmp_path):
    from prunekit.methods import Context, prune
    from prunekit.methods.emo import EmoConfig
    model, graph = resnet
    lm = _model(resnet, tmp_path)
    cfg = EmoConfig(target=0.6, metric="latency", pop_size=4, generations=1, chain_points=4,
                    parts=2)
    res = prune(model, cfg, Context(X, calibration=torch.randn(16, 3, 16, 16), latency=lm))
    ratio = lm.predict(graph.keep_mask(res.plan)) / lm.predict()
    assert 0.6 * 0.97 <= ratio <= 0.6
    costs = [p.cost_ratio for p in res.front]
    assert min(costs) < 0.9 and max(costs) == pytest.approx(1.0, abs=0.02)


def test_submodular_meets_a_latency_budget(resnet, tmp_path):
    from prunekit.methods.submodular import SubmodularConfig, prune_submodular
    model, graph = resnet
    lm = _model(resnet, tmp_path)
    res = prune_submodular(model, X, torch.randn(16, 3, 16, 16),
                           SubmodularConfig(target=0.6, metric="latency", calib_batch_size=8),
                           latency=lm)
    ratio = lm.predict(graph.keep_mask(res.plan)) / lm.predict()
    assert 0.6 * 0.97 <= ratio <= 0.6


def test_signature_names_what_latency_depends_on(resnet):
    model, graph = resnet
    layer = next(lay for lay in graph.layers() if lay.module == "layer2.0.conv1")
    sig = signature(layer, model.get_submodule(layer.module), 32)
    assert sig["stride"] == [2, 2] and sig["input"] == [32, -1, 16, 16]
    assert sig["cin"] == 16 and sig["cout"] == 32


def test_grouped_conv_table_runs_along_whole_groups(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 16, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, groups=4),
                          nn.ReLU(), nn.Conv2d(16, 4, 1)).eval()
    graph = ChannelGraph.build(model, X)
    layer = next(lay for lay in graph.layers() if lay.module == "2")
    tb = LayerTable(signature(layer, model[2], 2), Target(batch=2, threads=1),
                    SyntheticTimer(), tmp_path)
    tb.fill()
    assert tb.grid_in == [16] and len(tb.grid_out) > 1
    assert tb.seconds(9, 8) == tb.seconds(16, 8)       # input follows the kept groups
    assert tb.seconds(16, 8) < tb.seconds(16, 16)


# ------------------------------------------------------------------ command line
@pytest.fixture
def synthetic_machine(monkeypatch):
    """The command line's timers replaced by the synthetic machine (deterministic)."""
    import prunekit.latency.model as model_mod
    monkeypatch.setattr(model_mod, "timer_for", lambda target: SyntheticTimer())


def test_real_timers_time_a_layer():
    layer, x = nn.Conv2d(8, 8, 3), torch.randn(2, 8, 8, 8)
    from prunekit.latency import TorchTimer
    assert TorchTimer(Target(threads=1, reps=2, warmup=1)).time(layer, (x,)) > 0
    pytest.importorskip("onnxruntime")
    from prunekit.latency import OrtTimer
    assert OrtTimer(Target(backend="onnxruntime", threads=1, reps=2, warmup=1)).time(
        layer, (x,)) > 0


def test_cli_latency_builds_validates_and_writes(tmp_path, capsys, monkeypatch,
                                                 synthetic_machine):
    from prunekit.cli import main
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "lat"
    assert main(["latency", "--model", "resnet20", "--batch", "2", "--threads", "1",
                 "--target", "0.7", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "predicted (ms)" in printed and "marginal/latency" in printed
    doc = json.loads((out / "latency.json").read_text())
    assert doc["target"]["batch"] == 2 and doc["tables"] and doc["validation"]
    assert {r["plan"] for r in doc["validation"]} >= {"dense", "global/macs"}
    assert (out / "latency.png").is_file() and any((tmp_path / "cache" / "latency").iterdir())


def test_cli_prune_to_a_latency_target_reports_speedups(tmp_path, capsys, monkeypatch,
                                                         synthetic_machine):
    from prunekit.cli import main
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(["prune", "--model", "resnet20", "--metric", "latency", "--target", "0.7",
                 "--batch", "2", "--threads", "1", "--set", "allocation=marginal",
                 "--out", str(out)]) == 0
    assert "speed-up on torch/cpu" in capsys.readouterr().out
    report = json.loads((out / "metrics.json").read_text())["latency"]
    assert report["requested"] == pytest.approx(1 / 0.7)
    assert report["predicted"] > 1 and report["measured"] > 0
    plan = json.loads((out / "plan.json").read_text())
    assert plan["meta"]["metric"] == "latency"


@pytest.mark.parametrize("args, match", [
    (["latency", "--backend", "tensorrt"], "backend must be one of"),
    (["latency", "--device", "tpu"], "device must be one of"),
    (["prune", "--device", "cpu"], "only apply with --metric latency"),
    (["prune", "--metric", "latency", "--threads", "0"], "threads must be"),
])
def test_cli_refuses_bad_latency_options(tmp_path, capsys, args, match):
    from prunekit.cli import main
    code = main([*args, "--model", "resnet20", "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_keyword_inputs_are_timed_as_the_model_takes_them(tmp_path):
    transformers = pytest.importorskip("transformers")
    from prunekit.latency import Bound
    cfg = transformers.LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=1, num_attention_heads=4,
                                   num_key_value_heads=2)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    ex = {"input_ids": torch.randint(0, 50, (1, 8)), "use_cache": False}
    graph = ChannelGraph.build(model, ex)
    bound = Bound(model, graph.inputs)
    (ids,) = bound.tensors(3)
    assert ids.shape == (3, 8)
    with torch.no_grad():
        torch.testing.assert_close(bound(ids).logits, model(input_ids=ids, use_cache=False).logits)
    lm = LatencyModel(graph, Target(batch=3, threads=1), SyntheticTimer(fixed=1e-6), tmp_path)
    lm.measure_tables()
    lm.calibrate(model)
    res = prune_oneshot(model, ex, OneShotConfig(target=0.8, metric="latency"), latency=lm)
    assert lm.predict(graph.keep_mask(res.plan)) / lm.predict() <= 0.8


def test_polynomial_is_the_prediction_where_layers_are_bilinear(resnet, tmp_path):
    from prunekit.methods.soft_cost import SoftCost
    model, graph = resnet
    lm = _model(resnet, tmp_path)                    # synthetic layers: exactly bilinear
    soft = SoftCost(graph, polynomial=lm.polynomial())
    for keep in (lm.uniform(1.0), lm.uniform(0.5), lm.mixed(3)):
        got = float(soft(torch.as_tensor(keep, dtype=torch.float64)))
        assert got == pytest.approx(lm.predict(keep), rel=1e-6)


def test_lapp_meets_a_latency_budget(resnet, tmp_path):
    from prunekit.data import CIFAR_NORM, Batches
    from prunekit.methods.lapp import LappConfig
    from prunekit.methods.lapp_method import train_lapp
    from prunekit.train import TrainConfig
    model, graph = resnet
    lm = _model(resnet, tmp_path / "cache")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (64, 16, 16, 3)).astype(np.uint8)
    y = rng.integers(0, 10, 64)
    train = Batches(x, y, 16, CIFAR_NORM, train=True, drop_last=True)
    cfg = LappConfig(target=0.6, metric="latency", prune_epochs=1, threshold_lr=0.1)
    res = train_lapp(model, X, train, None, cfg,
                     TrainConfig(epochs=2, lr=0.05, channels_last=False), tmp_path / "run",
                     progress=False, latency=lm)
    ratio = lm.predict(graph.keep_mask(res.plan)) / lm.predict()
    assert 0.6 * 0.97 <= ratio <= 0.6
    with pytest.raises(TargetError, match="bypass"):
        train_lapp(CifarResNet(8, widths=(16, 32, 64)), X, train, None,
                   LappConfig(metric="latency", bypass=True), TrainConfig(epochs=1),
                   tmp_path / "b", latency=lm)


def test_a_biased_model_still_meets_the_measured_target(resnet, tmp_path):
    from prunekit.latency import meet_measured
    model, graph = resnet
    lm = _model(resnet, tmp_path)
    lm.coef = lm.coef * np.array([1.0, 1.0, 1.0, 0.0]) + np.array([0.0, 0.0, 0.0, 4e-3])  # wrong fixed cost
    cfg = OneShotConfig(target=0.5, metric="latency", allocation="marginal")
    res, rounds = meet_measured(lm, model, lambda c: prune_oneshot(model, X, c, latency=lm), cfg)
    first, last = rounds[0]["measured"], rounds[-1]["measured"]
    assert abs(first / 0.5 - 1) > 0.03                    # the prediction alone misses
    assert abs(last / 0.5 - 1) <= 0.03 and len(rounds) > 1
    measured = lm.measure(model, graph.keep_mask(res.plan)) / lm.measure(
        model, np.ones(graph.n_units, dtype=bool))
    assert measured == pytest.approx(last)


def test_secant_steps_stay_inside_the_bracket():
    from prunekit.latency.measured import _next
    # noisy pairs: the raw secant through the last two would leave (0.2, 0.3)
    tried = [(0.3, 0.55), (0.2, 0.45), (0.25, 0.549)]
    nxt = _next(tried, 0.5)
    assert 0.2 < nxt < 0.25
    assert _next([(0.4, 0.8)], 0.5, floor=0.3) > 0.3          # never below a refused target


def test_a_refused_target_falls_back_between_the_floor_and_the_last_success(
        resnet, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from prunekit.errors import UnreachableTargetError
    from prunekit.latency import measured as measured_mod
    model, graph = resnet
    lm = _model(resnet, tmp_path)
    asked = []

    def run(c):                        # this method cannot go below 0.3 of its cost
        asked.append(c.target)
        if c.target < 0.3:
            raise UnreachableTargetError(f"target {c.target} unreachable")
        plan = prune_oneshot(model, X, c.__class__(target=0.5), graph=graph).plan
        return SimpleNamespace(plan=plan, model=c.target)
    # measured latency = asked + 0.1: the secant asks 0.25 for 0.35, below the floor
    monkeypatch.setattr(measured_mod, "measured_ratio", lambda lm, m, pruned: pruned + 0.1)
    res, rounds = measured_mod.meet_measured(lm, model, run, OneShotConfig(target=0.35),
                                             rounds=6, refine=False)
    refused = [r["asked"] for r in rounds if r.get("unreachable")]
    assert refused, rounds
    later = asked[asked.index(refused[0]) + 1:]
    assert later and all(refused[0] < a for a in later)
    assert res.model == min(a for a in asked if a >= 0.3)        # the closest it could get
    with pytest.raises(UnreachableTargetError):           # refused on the first round: raised
        measured_mod.meet_measured(lm, model, run, OneShotConfig(target=0.1))


def test_refined_rounds_stop_rather_than_ask_below_a_refused_target(resnet, monkeypatch):
    from types import SimpleNamespace

    from prunekit.errors import UnreachableTargetError
    from prunekit.latency import measured as measured_mod
    model, graph = resnet
    state = {"asked": None}
    asked = []
    # a calibrated model that predicts each plan at the ratio it was asked for
    lm = SimpleNamespace(graph=graph, calibrated=True, refine=lambda keep, got: None,
                         predict=lambda keep=None: 1.0 if keep is None else state["asked"])

    def run(c):                        # this method cannot go below 0.3 of its cost
        asked.append(c.target)
        if c.target < 0.3:
            raise UnreachableTargetError(f"target {c.target} unreachable")
        state["asked"] = c.target
        return SimpleNamespace(plan=prune_oneshot(model, X, OneShotConfig(target=0.5),
                                                  graph=graph).plan, model=c.target)
    monkeypatch.setattr(measured_mod, "measured_ratio", lambda lm, m, pruned: pruned + 0.15)
    res, rounds = measured_mod.meet_measured(lm, model, run, OneShotConfig(target=0.35),
                                             rounds=8)
    refused = [r["asked"] for r in rounds if r.get("unreachable")]
    assert refused and len(rounds) < 8, rounds           # stopped early, not out of rounds
    for i, a in enumerate(asked):                        # never re-asks at or below a refusal
        assert all(a > r for r in asked[:i] if r < 0.3), asked
    assert res.model == min(a for a in asked if a >= 0.3)


def test_retain_memory_is_in_the_key_of_eager_cpu_only():
    assert Target(retain_memory=False).key() != Target().key()
    assert "retain_memory" not in Target(backend="onnxruntime").key()
    with pytest.raises(TargetError, match="retain_memory"):
        Target(retain_memory="yes")


def test_a_misalignment_paid_only_in_context_is_fitted_and_budgets_keep_multiples(
        resnet, tmp_path):
    model, graph = resnet
    plain = _model(resnet, tmp_path / "plain")
    assert plain.align == 1 and plain.penalty == 0
    lm = _model(resnet, tmp_path / "ctx", context=2e-8)
    assert lm.align == 8 and lm.penalty > 0               # not 4 (nested) nor 16
    res = prune_oneshot(model, X, OneShotConfig(target=0.5, metric="latency",
                                                allocation="marginal"), latency=lm)
    keep = graph.keep_mask(res.plan)
    widths = {g.id: int(keep[g.units].sum()) for g in graph.prunable_groups}
    full = {g.id: g.width for g in graph.prunable_groups}
    assert all(w % lm.align == 0 or w == full[i] for i, w in widths.items()), widths
    assert any(w < full[i] for i, w in widths.items())
    got = lm.measure(model, keep) / lm.measure(model, np.ones(graph.n_units, dtype=bool))
    assert got <= 0.5 * 1.02
    # the penalty is part of the prediction: an off-multiple plan is predicted closer
    odd = lm.mixed(11)
    truth = lm.measure(model, odd)
    with_penalty = abs(lm.predict(odd) / truth - 1)
    lm.penalty = 0.0
    assert with_penalty < abs(lm.predict(odd) / truth - 1)


@pytest.mark.parametrize("block", [4, 16])
def test_the_fitted_multiple_is_the_backends_block_not_a_nested_one(resnet, tmp_path, block):
    lm = _model(resnet, tmp_path, context=2e-8, block=block)
    assert lm.align == block and lm.penalty > 0, lm.fit
