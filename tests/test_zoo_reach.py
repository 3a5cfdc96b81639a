"""Zoo conformance beyond torchvision: a timm subset (several families), tiny Hugging Face
configs, and Ultralytics YOLO from its YAMLs. Random weights; nothing is downloaded.
The full tables are in benchmarks/coverage_zoo.md."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from prunekit import ChannelGraph
from prunekit.conformance import check_plan, random_plan
from prunekit.graph.trace import as_inputs
from prunekit.io import load_pruned, save_pruned

warnings.filterwarnings("ignore")

# one model per family, chosen to cover functional norm-act layers, LayerNorm streams,
# fx-untraceable models (recorded) and models earlier versions pruned and then crashed
TIMM = [("efficientnet_b0", 64), ("densenet121", 64), ("repvgg_b0", 64), ("dpn48b", 64),
        ("resnetv2_18", 64), ("convnext_atto", 64), ("vit_tiny_patch16_224", 224),
        ("edgenext_small", 64), ("nextvit_small", 64), ("pit_xs_224", 224),
        ("mobilevit_xxs", 64), ("efficientvit_m0", 224), ("nf_regnet_b0", 64),
        ("coat_tiny", 224)]


@pytest.mark.slow
@pytest.mark.parametrize("name,size", TIMM)
def test_timm(name, size):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=5).eval()
    x = torch.randn(1, 3, size, size)
    graph = ChannelGraph.build(model, x)
    assert graph.prunable_groups, graph.explain()
    for ratio in (0.3, 0.6):
        check_plan(model, x, graph, random_plan(graph, ratio, seed=1))


def _hf_cases():
    t = pytest.importorskip("transformers")
    small = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, max_position_embeddings=64)
    return {
        "llama": (t.LlamaForCausalLM, t.LlamaConfig(**small, num_key_value_heads=2)),
        "qwen2": (t.Qwen2ForCausalLM, t.Qwen2Config(**small, num_key_value_heads=2)),
        "gpt2": (t.GPT2LMHeadModel, t.GPT2Config(vocab_size=100, n_embd=32, n_layer=2,
                                                 n_head=4, n_positions=64)),
        "bert": (t.BertModel, t.BertConfig(**small)),
        "vit": (t.ViTForImageClassification, t.ViTConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            image_size=32, patch_size=8, num_labels=5)),
        "swin": (t.SwinForImageClassification, t.SwinConfig(
            image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4],
            window_size=4, num_labels=5)),
    }


def _hf(name):
    cls, cfg = _hf_cases()[name]
    torch.manual_seed(0)
    model = cls(cfg).eval()
    if name in ("vit", "swin"):
        return model, {"pixel_values": torch.randn(1, 3, 32, 32)}
    x = {"input_ids": torch.randint(0, 100, (1, 8)), "attention_mask": torch.ones(1, 8,
                                                                                dtype=torch.long)}
    if "CausalLM" in cls.__name__ or "LMHead" in cls.__name__:
        x["use_cache"] = False
    return model, x


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama", "qwen2", "gpt2", "bert", "vit", "swin"])
def test_hugging_face(name, tmp_path):
    model, x = _hf(name)
    graph = ChannelGraph.build(model, x)
    assert graph.options["capture"] == "record"
    plan = random_plan(graph, 0.5, seed=2)
    check_plan(model, x, graph, plan)
    pruned = graph.apply(model, plan)
    save_pruned(tmp_path / name, pruned, plan, x, graph_options=graph.options)
    fresh, _ = _hf(name)
    loaded, _ = load_pruned(tmp_path / name, fresh)
    inputs = as_inputs(x)
    with torch.no_grad():
        a, b = inputs.call(pruned), inputs.call(loaded.eval())
    key = "logits" if "logits" in a else "last_hidden_state"
    assert torch.equal(a[key], b[key])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_pruned_causal_lm_generates(name):
    model, x = _hf(name)
    graph = ChannelGraph.build(model, x)
    pruned = graph.apply(model, random_plan(graph, 0.5, seed=3))
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    out = pruned.generate(x["input_ids"], attention_mask=x["attention_mask"], max_new_tokens=4,
                          do_sample=False)
    assert out.shape == (1, 12)


@pytest.mark.slow
@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo11n.yaml"])
def test_yolo(cfg):
    os.environ.setdefault("YOLO_OFFLINE", "1")
    tasks = pytest.importorskip("ultralytics.nn.tasks")
    torch.manual_seed(0)
    model = tasks.DetectionModel(cfg, verbose=False).eval()
    x = torch.randn(1, 3, 64, 64)
    graph = ChannelGraph.build(model, x)
    plan = random_plan(graph, 0.5)
    check_plan(model, x, graph, plan)
    pruned = graph.apply(model, plan)
    head = pruned.model[-1]
    assert [m[-1].out_channels for m in head.cv2] == [m[-1].out_channels for m in
                                                      model.model[-1].cv2]  # Detect head kept
    from ultralytics.utils.nms import non_max_suppression
    with torch.no_grad():
        preds = pruned.predict(x)
    assert len(non_max_suppression(preds)) == 1


@pytest.mark.slow
def test_config_follows_uniform_widths(tmp_path):
    """A plan with one width per field: the pruned config rebuilds the pruned model
    (save_pretrained / from_pretrained work); the user's config is untouched."""
    model, x = _hf("llama")
    graph = ChannelGraph.build(model, x)
    plan = graph.make_plan({g.id: range(g.width // 2) for g in graph.prunable_groups})
    pruned = graph.apply(model, plan)
    cfg = pruned.config
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.intermediate_size) == (16, 2, 1, 32)
    assert not hasattr(cfg, "prunekit_stale_fields")
    assert model.config.hidden_size == 32 and model.config.num_attention_heads == 4
    pruned.save_pretrained(tmp_path / "llama")
    again = type(pruned).from_pretrained(tmp_path / "llama").eval()
    inputs = as_inputs(x)
    with torch.no_grad():
        assert torch.allclose(inputs.call(pruned).logits, inputs.call(again).logits, atol=1e-6)


@pytest.mark.slow
def test_config_says_when_it_cannot_carry_the_head_size():
    """BERT derives its head size from hidden_size // num_attention_heads: with heads gone
    and the (output) stream kept, that no longer holds, and the config says so."""
    model, x = _hf("bert")
    graph = ChannelGraph.build(model, x)
    pruned = graph.apply(model, graph.make_plan(
        {g.id: range(g.width // 2) for g in graph.prunable_groups}))
    assert pruned.config.num_attention_heads == 2 and pruned.config.intermediate_size == 32
    assert pruned.config.prunekit_stale_fields == ["num_attention_heads"]


@pytest.mark.slow
def test_config_lists_uneven_widths():
    model, x = _hf("llama")
    graph = ChannelGraph.build(model, x)
    keep = {g.id: range(g.width // 2) for g in graph.prunable_groups}
    mlp = [g.id for g in graph.prunable_groups if g.id.endswith("gate_proj")]
    keep[mlp[0]] = range(graph.group(mlp[0]).width - 4)     # layer 0 keeps more MLP width
    pruned = graph.apply(model, graph.make_plan(keep))
    assert pruned.config.prunekit_stale_fields == ["intermediate_size"]
    assert pruned.config.intermediate_size == 64                  # the original value stays
    assert pruned.config.hidden_size == 16
