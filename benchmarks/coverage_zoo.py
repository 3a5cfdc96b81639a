"""Coverage beyond torchvision: timm (one model per architecture family), Hugging Face
transformers (small configs) and Ultralytics YOLO (package YAMLs), prunekit and
Torch-Pruning side by side in one run.

The checks are those of ``benchmarks/coverage.py``: prunekit prunes a random 50% of every
prunable group and ``check_plan`` compares the pruned model with its masked reference and
its analytic cost with FlopCounterMode; Torch-Pruning (MetaPruner, random importance,
pruning_ratio 0.5, the layers producing the model's outputs ignored) is compared with a
copy of the original whose layers zero the removed output channels (``hook_reference``).

Statuses, prunekit: *verified*; *WRONG* (the pruned model's outputs differ from the
masked reference, or apply modified the input model); *cost-mismatch* (analytic params or
MACs differ from the measured ones); *crash* (applying the plan or running the pruned
model failed); *refused* (building the graph raised); *timeout* (no result within
``--ours-timeout`` seconds). Torch-Pruning: as in coverage.py (verified / WRONG / crash /
refused / nothing-pruned / unverifiable / timeout).

Torch-Pruning runs in a child process per model (time limit ``--tp-timeout``) at the same
time as prunekit runs in this process (one thread each), so a wall-clock build time is
measured on a machine that is busy with the other tool.

    PYTHONWARNINGS=ignore YOLO_OFFLINE=1 python benchmarks/coverage_zoo.py
    python benchmarks/coverage_zoo.py --report      # only re-render the markdown
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from coverage import _kept_rows, hook_reference, judge_tp  # noqa: E402

from prunekit import ChannelGraph  # noqa: E402
from prunekit.conformance import check_plan, outputs_close, random_plan  # noqa: E402
from prunekit.zoo import randomize  # noqa: E402

OUT = "benchmarks/results/coverage_zoo.jsonl"
REPORT = "benchmarks/coverage_zoo.md"
FAM_FILE = "/tmp/probe/fam1.txt"
MAX_PX = 256

# --------------------------------------------------------------------------- models


def timm_families() -> list[str]:
    """One small model per timm architecture family (module of timm.models)."""
    if Path(FAM_FILE).is_file():
        return Path(FAM_FILE).read_text().split()
    from timm.models import _registry as r
    pref = ["atto", "femto", "pico", "nano", "tiny", "xxs", "xs", "small", "b0", "_s", "18",
            "lite", "mobile"]

    def score(n):
        return next(((i, len(n)) for i, p in enumerate(pref) if p in n), (99, len(n)))
    out = []
    for mod in sorted(r._module_to_models):
        names = sorted(n for n in r._module_to_models[mod] if not n.startswith("test_"))
        if names:
            out.append(min(names, key=score))
    return out


def _forward_ok(model: nn.Module, x: torch.Tensor) -> bool:
    try:
        with torch.no_grad():
            model(x)
        return True
    except Exception:
        return False


def timm_model(name: str):
    import timm
    cfg = timm.get_pretrained_cfg(name)
    size = tuple(getattr(cfg, "input_size", None) or (3, 224, 224))
    c, h, w = size
    if max(h, w) <= MAX_PX:
        return timm.create_model(name, pretrained=False), torch.randn(1, c, h, w)
    small = torch.randn(1, c, MAX_PX, MAX_PX)
    with contextlib.suppress(Exception):  # ViT-style models take img_size
        m = timm.create_model(name, pretrained=False, img_size=MAX_PX).eval()
        if _forward_ok(m, small):
            return m, small
    m = timm.create_model(name, pretrained=False).eval()
    if _forward_ok(m, small):
        return m, small
    return m, torch.randn(1, c, h, w)  # requires its exact size


TEXT = dict(vocab_size=100, max_position_embeddings=64)
BERTLIKE = dict(TEXT, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4)
DECODER = dict(TEXT, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4)
GQA = dict(DECODER, num_key_value_heads=2, head_dim=16)
VIT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
           image_size=32, patch_size=8, num_labels=5)

# name: (model class, config class, config kwargs); kind from the class name
HF = {
    "bert": ("BertForSequenceClassification", "BertConfig", dict(BERTLIKE, num_labels=3)),
    "roberta": ("RobertaForSequenceClassification", "RobertaConfig",
                dict(BERTLIKE, num_labels=3)),
    "xlm_roberta": ("XLMRobertaForSequenceClassification", "XLMRobertaConfig",
                    dict(BERTLIKE, num_labels=3)),
    "distilbert": ("DistilBertForSequenceClassification", "DistilBertConfig",
                   dict(TEXT, dim=32, hidden_dim=64, n_layers=2, n_heads=4, num_labels=3)),
    "albert": ("AlbertForSequenceClassification", "AlbertConfig",
               dict(BERTLIKE, embedding_size=16, num_labels=3)),
    "electra": ("ElectraForSequenceClassification", "ElectraConfig",
                dict(BERTLIKE, embedding_size=32, num_labels=3)),
    "deberta_v2": ("DebertaV2ForSequenceClassification", "DebertaV2Config",
                   dict(BERTLIKE, num_labels=3)),
    "mobilebert": ("MobileBertForSequenceClassification", "MobileBertConfig",
                   dict(BERTLIKE, embedding_size=16, intra_bottleneck_size=16,
                        true_hidden_size=16, num_feedforward_networks=2, num_labels=3)),
    "gpt2": ("GPT2LMHeadModel", "GPT2Config",
             dict(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                  bos_token_id=0, eos_token_id=0)),
    "gpt_neo": ("GPTNeoForCausalLM", "GPTNeoConfig",
                dict(TEXT, hidden_size=32, num_layers=2, num_heads=4, window_size=16,
                     attention_types=[[["global", "local"], 1]])),
    "gptj": ("GPTJForCausalLM", "GPTJConfig",
             dict(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                  rotary_dim=4)),
    "opt": ("OPTForCausalLM", "OPTConfig",
            dict(TEXT, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                 word_embed_proj_dim=32)),
    "bloom": ("BloomForCausalLM", "BloomConfig",
              dict(vocab_size=100, hidden_size=32, n_layer=2, n_head=4)),
    "llama_gqa": ("LlamaForCausalLM", "LlamaConfig", GQA),
    "mistral_gqa": ("MistralForCausalLM", "MistralConfig", GQA),
    "qwen2_gqa": ("Qwen2ForCausalLM", "Qwen2Config", GQA),
    "qwen3_gqa": ("Qwen3ForCausalLM", "Qwen3Config", GQA),
    "gemma": ("GemmaForCausalLM", "GemmaConfig", dict(GQA, num_key_value_heads=1)),
    "gemma2_gqa": ("Gemma2ForCausalLM", "Gemma2Config", GQA),
    "phi": ("PhiForCausalLM", "PhiConfig", DECODER),
    "phi3_gqa": ("Phi3ForCausalLM", "Phi3Config", dict(DECODER, num_key_value_heads=2,
                                                       pad_token_id=0, bos_token_id=0,
                                                       eos_token_id=0)),
    "falcon": ("FalconForCausalLM", "FalconConfig",
               dict(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=4)),
    "vit": ("ViTForImageClassification", "ViTConfig", VIT),
    "deit": ("DeiTForImageClassification", "DeiTConfig", VIT),
    "beit": ("BeitForImageClassification", "BeitConfig",
             dict(VIT, use_relative_position_bias=True)),
    "dinov2": ("Dinov2ForImageClassification", "Dinov2Config", VIT),
    "swin": ("SwinForImageClassification", "SwinConfig",
             dict(image_size=32, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 4],
                  window_size=4, num_labels=5)),
    "convnext": ("ConvNextForImageClassification", "ConvNextConfig",
                 dict(num_channels=3, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                      num_labels=5)),
}


class Skip(Exception):
    pass


def hf_model(name: str):
    import transformers as T
    mcls, ccls, kw = HF[name]
    if not hasattr(T, ccls) or not hasattr(T, mcls):
        raise Skip(f"transformers {T.__version__} has no {ccls if not hasattr(T, ccls) else mcls}")
    model = getattr(T, mcls)(getattr(T, ccls)(**kw))
    if "pixel_values" in model.forward.__code__.co_varnames[:3] or "Image" in mcls:
        return model, {"pixel_values": torch.randn(1, 3, 32, 32)}
    x = {"input_ids": torch.randint(0, 100, (1, 8)),
         "attention_mask": torch.ones(1, 8, dtype=torch.long)}
    if "CausalLM" in mcls or "LMHead" in mcls:
        x["use_cache"] = False
    return model, x


YOLO = ["yolov3u.yaml", "yolov5n.yaml", "yolov6n.yaml", "yolov8n.yaml", "yolov8n-seg.yaml",
        "yolov8n-pose.yaml", "yolov8n-obb.yaml", "yolov8n-cls.yaml", "yolov9t.yaml",
        "yolov10n.yaml", "yolo11n.yaml", "yolo11n-seg.yaml", "yolo12n.yaml", "yolo26n.yaml"]


def yolo_model(name: str):
    from ultralytics.nn import tasks
    task = tasks.guess_model_task(tasks.yaml_model_load(name))
    cls = {"detect": tasks.DetectionModel, "segment": tasks.SegmentationModel,
           "pose": tasks.PoseModel, "obb": tasks.OBBModel,
           "classify": tasks.ClassificationModel}[task]
    with contextlib.redirect_stdout(sys.stderr):
        model = cls(name, verbose=False)
    return Predictions(model), torch.randn(1, 3, 64, 64)


class Predictions(nn.Module):
    """An Ultralytics model returning its predictions only: in eval mode the heads also
    return their input feature maps, which would make the neck's channels model outputs."""

    def __init__(self, m: nn.Module):
        super().__init__()
        self.m = m

    def forward(self, x):
        out = self.m(x)
        return out[0] if isinstance(out, (tuple, list)) else out


def names_of(table: str) -> list[str]:
    return {"timm": timm_families, "hf": lambda: list(HF), "yolo": lambda: list(YOLO)}[table]()


def get_model(key: str):
    """(model in eval mode with random weights, example inputs: tuple or dict)."""
    table, name = key.split(":", 1)
    torch.manual_seed(0)
    model, x = {"timm": timm_model, "hf": hf_model, "yolo": yolo_model}[table](name)
    model.eval()
    torch.manual_seed(1)
    randomize(model)
    return model, (x if isinstance(x, dict) else (x,))


def describe(x) -> str:
    if isinstance(x, dict):
        return ", ".join(f"{k} {'x'.join(map(str, v.shape))}" for k, v in x.items()
                         if isinstance(v, torch.Tensor))
    return "x".join(map(str, x[0].shape))


def call(model: nn.Module, x):
    return model(**x) if isinstance(x, dict) else model(*x)


# ------------------------------------------------------------------------- prunekit

OUTPUT_ONLY = "model output (protected)"


def shares(graph: ChannelGraph) -> dict:
    """Prunable share of producer channels (conv/linear/heads/embedding), not counting
    channels frozen only because they are model outputs, and the top freezing reasons."""
    n = graph.n_units
    out_only = np.zeros(n, dtype=bool)
    for u, rs in graph.unit_reasons.items():
        out_only[u] = bool(rs) and all(OUTPUT_ONLY in r for r in rs)
    out_only &= graph.unit_frozen
    total = kept = 0
    why: Counter = Counter()
    for src in graph.producers():
        if src.kind in ("conv", "linear", "heads", "embedding"):
            units = src.units
            units = units[~out_only[units]]
            total += len(units)
            kept += int((~graph.unit_frozen[units]).sum())
            for u in units[graph.unit_frozen[units]].tolist():
                for r in graph.unit_reasons.get(u, [])[:1]:
                    why[r[:90]] += 1
    base = graph.cost().macs
    pr = graph.layers_cost([g.id for g in graph.prunable_groups]).macs if graph.prunable_groups \
        else 0
    return {"prunable_share": kept / max(total, 1), "prunable_macs_share": pr / max(base, 1),
            "frozen_top": [f"{c}x {r}" for r, c in why.most_common(3)]}


def roles(graph: ChannelGraph) -> dict:
    """What a transformer user asks of the groups, found from the graph's structure:
    *hidden* = the stream group (holding the token embedding, else the group with most
    members); *heads* = linear groups whose units each span four or more output channels
    of their producer (a head's features; a span of 2-3 is a fused gate/up or q/k/v
    pair); *MLP* = the other linear groups with two or more members (an up/gate
    projection and its down projection). Each as [groups with something prunable,
    groups]; hidden as true/false."""
    by_name = {src.name: src for src in graph.producers()}
    groups = [g for g in graph.groups if OUTPUT_ONLY not in " ".join(g.reasons)]
    if not groups:
        return {"heads": [0, 0], "mlp": [0, 0], "hidden": False}
    emb = [g for g in groups if g.kind == "embedding"]
    hidden = emb[0] if emb else max(groups, key=lambda g: len(g.members))
    heads, mlp = [0, 0], [0, 0]
    for g in groups:
        src = by_name.get(g.id)
        if g is hidden or src is None or g.kind not in ("linear", "heads"):
            continue
        span = len(src.units.ravel()) / max(g.width, 1)
        slot = heads if span >= 4 else mlp if len(g.members) >= 2 else None
        if slot is not None:
            slot[1] += 1
            slot[0] += int(g.n_prunable > 0)
    return {"heads": heads, "mlp": mlp, "hidden": bool(hidden.n_prunable > 0)}


class Timeout(BaseException):  # not swallowed by the library's `except Exception`
    pass


def _alarm(_sig, _frame):
    raise Timeout()


def ours(model: nn.Module, x, seconds: int) -> dict:
    """coverage.ours with the cost check told apart from wrong outputs, the capture mode,
    the share of MACs in prunable layers and a time limit."""
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(seconds)
    try:
        t = time.perf_counter()
        try:
            graph = ChannelGraph.build(model, x)
            plan = random_plan(graph, 0.5)
        except Timeout:
            raise
        except Exception as exc:
            return {"status": "refused", "reason": f"{type(exc).__name__}: {exc}"[:300]}
        row = {"capture": graph.options["capture"], "build_s": time.perf_counter() - t}
        try:
            row.update(shares(graph))
            row["roles"] = roles(graph)
        except Timeout:
            raise
        except Exception as exc:
            row["share_error"] = f"{type(exc).__name__}: {exc}"[:200]
        try:
            res = check_plan(model, x, graph, plan)
        except AssertionError as exc:
            msg = str(exc)
            status = "cost-mismatch" if msg.startswith("analytic") else "WRONG"
            return {**row, "status": status, "reason": msg[:300]}
        except Timeout:
            raise
        except Exception as exc:
            return {**row, "status": "crash", "reason": f"{type(exc).__name__}: {exc}"[:300]}
        base = graph.cost()
        return {**row, "status": "verified" if plan.keep else "nothing-prunable",
                "error": res["error"], "macs_kept": res["macs"] / max(base.macs, 1),
                "params_kept": res["params"] / max(base.params, 1)}
    except Timeout:
        return {"status": "timeout", "reason": f"no result within {seconds} s"}
    finally:
        signal.alarm(0)


# -------------------------------------------------------------------- Torch-Pruning


def output_layers(key: str, model: nn.Module, x) -> list[nn.Module]:
    """The layers producing the model's outputs, ignored by Torch-Pruning (prunekit
    protects model outputs by itself)."""
    table = key.split(":", 1)[0]
    if table == "yolo":
        return [model.m.model[-1]]  # the head, as in Torch-Pruning's YOLOv8 example
    if table == "hf":
        cfg = model.config
        dims = {getattr(cfg, "vocab_size", -1), getattr(cfg, "num_labels", -1)}
        return [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features in dims]
    n_out = getattr(model, "num_classes", 0) or 0
    if n_out <= 0:  # no classifier (num_classes=0): the layers producing the features
        with torch.no_grad():
            out = call(model, x)
        out = out[0] if isinstance(out, (tuple, list)) else out
        n_out = out.shape[-1] if out.dim() <= 2 else out.shape[1]
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))
              and n_out in (getattr(m, "out_features", None), getattr(m, "out_channels", None))]
    return layers[-2:]  # distilled models have two heads


def heads_of(model: nn.Module) -> dict:
    """num_heads for Torch-Pruning: q/k/v projections of HF attention modules."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return {}
    nh = getattr(cfg, "num_attention_heads", None)
    nkv = getattr(cfg, "num_key_value_heads", None) or nh
    if not isinstance(nh, int):
        return {}
    out = {}
    for m in model.modules():
        for q, k, v in (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"),
                        ("q_lin", "k_lin", "v_lin")):
            mods = [getattr(m, a, None) for a in (q, k, v)]
            if all(isinstance(t, nn.Linear) for t in mods):
                out[mods[0]] = nh
                out[mods[1]] = out[mods[2]] = nkv if q == "q_proj" else nh
    return out


def norm_kept_reference(orig: nn.Module, pruned: nn.Module) -> nn.Module:
    """``hook_reference`` whose LayerNorms over pruned channels take their statistics over
    the kept channels only: the semantics prunekit gives such channels by default (its
    masked reference does the same), so Torch-Pruning is also judged by that rule."""
    import types

    import torch.nn.functional as F
    ref = hook_reference(orig, pruned)
    new_mods = dict(pruned.named_modules())
    for name, m in ref.named_modules():
        p = new_mods.get(name)
        if not isinstance(m, nn.LayerNorm) or m.weight is None or len(m.normalized_shape) != 1 \
                or getattr(p, "weight", None) is None or p.weight.shape == m.weight.shape:
            continue
        kept = _kept_rows(m.weight.detach(), p.weight.detach(), 0)
        if kept is None:
            raise RuntimeError(f"cannot match pruned rows of {name}")
        first = "2d" in type(m).__name__.lower() or getattr(m, "data_format", "") \
            == "channels_first"

        def forward(self, x, kept=torch.tensor(kept), first=first):
            xs = x.movedim(1, -1) if first else x
            y = torch.zeros_like(xs)
            b = self.bias[kept] if self.bias is not None else None
            y[..., kept] = F.layer_norm(xs[..., kept], (len(kept),), self.weight[kept], b,
                                        self.eps)
            return y.movedim(-1, 1) if first else y
        m.forward = types.MethodType(forward, m)
    return ref


def theirs(key: str, model: nn.Module, x) -> dict:
    """coverage.theirs for tuple or dict inputs and per-table output layers."""
    import torch_pruning as tp
    work = copy.deepcopy(model)
    t = time.perf_counter()
    try:
        pruner = tp.pruner.MetaPruner(work, x if isinstance(x, dict) else x[0],
                                      importance=tp.importance.RandomImportance(),
                                      pruning_ratio=0.5, num_heads=heads_of(work),
                                      ignored_layers=output_layers(key, work, x))
        pruner.step()
    except Exception as exc:
        return {"status": "refused", "reason": f"{type(exc).__name__}: {exc}"[:300]}
    secs = time.perf_counter() - t

    def normkept(row: dict, exc: AssertionError, out, secs: float) -> dict:
        try:  # is it only the LayerNorm statistics? judge it by prunekit's rule too
            with torch.no_grad():
                expect = call(norm_kept_reference(model, work), x)
            return {"status": "verified-normkept", "error": outputs_close(out, expect),
                    "reason": f"vs zeroing reference: {exc}"[:300],
                    "params_kept": row["params_kept"], "prune_s": secs}
        except AssertionError as exc2:
            row["normkept"] = str(exc2)[:200]
        except Exception as exc2:
            row["normkept"] = f"{type(exc2).__name__}: {exc2}"[:200]
        return row

    return judge_tp(model, work, x, secs, call, normkept)


def start_tp(key: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--tp-one", key], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish_tp(proc: subprocess.Popen, started: float, seconds: float) -> dict:
    try:
        stdout, stderr = proc.communicate(timeout=max(1.0, seconds - (time.time() - started)))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"status": "timeout", "reason": f"no result within {seconds:.0f} s"}
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"status": "harness-error", "reason": stderr[-300:]}
    return json.loads(lines[-1])


# --------------------------------------------------------------------------- report


def _fmt_err(r: dict) -> str:
    if r.get("status") == "verified":
        return f"{r['error']:.1e}"
    if r.get("status") == "verified-normkept":
        return f"{r['error']:.1e} ({r.get('reason', '')})"
    text = (r.get("reason") or "")[:140]
    if r.get("normkept"):
        text += f"; with kept-channel LayerNorm statistics: {r['normkept'][:100]}"
    return text.replace("|", "/").replace("\n", " ")


def _pct(v) -> str:
    return "" if v is None else f"{100 * v:.0f}%"


def summary(rows: list[dict], tool: str) -> str:
    c = Counter(r.get(tool, {}).get("status", "not run") for r in rows)
    return ", ".join(f"{n} {s}" for s, n in sorted(c.items(), key=lambda t: (-t[1], t[0])))


def _all_roles(r: dict | None) -> bool:
    return bool(r) and r["heads"][1] > 0 and r["heads"][0] == r["heads"][1] and \
        r["mlp"][1] > 0 and r["mlp"][0] == r["mlp"][1] and r["hidden"]


def _roles(r: dict | None) -> str:
    if not r:
        return ""
    return f"{r['heads'][0]}/{r['heads'][1]} · {r['mlp'][0]}/{r['mlp'][1]} · " \
        f"{'yes' if r['hidden'] else 'no'}"


def render(out: Path, report: Path, command: str, complete: bool, rev: str | None = None,
           when: str | None = None) -> None:
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    import timm
    import importlib.metadata
    import transformers
    import ultralytics
    tp_version = importlib.metadata.version("torch-pruning")
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if "model name" in line), "?")
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    lines = [
        "# Coverage: timm families, Hugging Face transformers, Ultralytics YOLO", "",
        f"Machine: {os.cpu_count()}-core {platform.machine()} CPU VM ({cpu}), {mem:.0f} GiB, "
        f"no GPU; torch {torch.__version__}, timm {timm.__version__}, transformers "
        f"{transformers.__version__}, ultralytics {ultralytics.__version__}, Torch-Pruning "
        f"{tp_version}. One thread per tool; prunekit in the driver process and "
        f"Torch-Pruning in a child process per model, running at the same time.", "",
        f"Command: `{command}`"
        + (f" (prunekit: the working tree of commit {rev}, clean when the run started)."
           if rev else ""), "",
        f"Date: {when or time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
        + ("The run completed." if complete else
           f"**The run did not complete**: this report holds the {len(rows)} rows written "
           f"before the deadline; the missing models were not run."), "",
        "What is checked is the same as in [coverage.md](coverage.md): prunekit prunes a "
        "random 50% of every prunable group and `check_plan` compares the pruned model with "
        "the masked reference (relative error <= 1e-4) and the analytic params/MACs with "
        "FlopCounterMode; Torch-Pruning (MetaPruner, random importance, pruning_ratio 0.5, "
        "output layers ignored, `num_heads` given for HF q/k/v projections, no per-model "
        "fix-ups of attention attributes after pruning) is compared with the original whose "
        "layers zero the channels it removed. Weights are random (every parameter and BN "
        "statistic re-drawn). Statuses: *verified*; *WRONG* = outputs differ (silently "
        "wrong); *verified-normkept* (Torch-Pruning only, see the notes); *cost-mismatch* = prunekit's outputs were checked equal but its analytic "
        "cost differs from the measured one; *crash* = the pruned model fails to run; "
        "*refused* = the tool raised; *timeout* = no result within the limit "
        "(prunekit 120 s, Torch-Pruning 60 s, on this busy 2-core machine: no verdict). "
        "*Prunable share* = fraction of producer channels (conv/linear outputs, attention "
        "heads, embeddings) prunekit may remove, not counting those frozen only because they "
        "are model outputs; *MACs share* = MACs of the layers the prunable groups touch / "
        "dense MACs. Capture = how prunekit captured the graph (fx trace or one recorded "
        "eager forward).", "",
        "Notes. Ultralytics models are wrapped to return their predictions only (in eval "
        "mode their heads also return the input feature maps, which would make the neck's "
        "channels model outputs); Torch-Pruning ignores the whole head, as in its YOLOv8 "
        "example. HF encoders and vision models carry a classification head, decoders their "
        "LM head, so the hidden size is not a model output. LayerNorm: prunekit prunes "
        "channels a LayerNorm normalises over (default `freeze_normalised=False`), the "
        "statistics then taken over the kept channels, and its masked reference does the "
        "same; Torch-Pruning shrinks such LayerNorms too, which the zeroing reference of "
        "coverage.py (statistics over all channels) calls WRONG. So each Torch-Pruning "
        "WRONG result is checked again against a reference whose LayerNorms over pruned "
        "channels use the kept channels only: *verified-normkept* = equal to that "
        "reference (the only difference was the LayerNorm statistics, the same semantics "
        "prunekit uses); rows still WRONG differ for another reason as well (e.g. attention "
        "modules whose head layout no longer matches their pruned projections).", ""]
    titles = {"timm": "timm: one model per architecture family",
              "hf": "Hugging Face transformers (small configs)",
              "yolo": "Ultralytics YOLO (package YAMLs, built offline)"}
    for table in ("timm", "hf", "yolo"):
        sub = [r for r in rows if r["table"] == table]
        lines += [f"## {titles[table]}", ""]
        if not sub:
            lines += ["No rows.", ""]
            continue
        lines.append(f"{len(sub)} models. prunekit: {summary(sub, 'ours')}.  ")
        lines.append(f"Torch-Pruning {tp_version}: {summary(sub, 'torch_pruning')}.")
        ver = [r for r in sub if r["ours"].get("status") == "verified"]
        if ver:
            med = np.median([r["ours"]["prunable_share"] for r in ver])
            medm = np.median([r["ours"]["prunable_macs_share"] for r in ver])
            tpv = sum(r.get("torch_pruning", {}).get("status") == "verified" for r in sub)
            what = "Families" if table == "timm" else "Models"
            lines.append(f"{what} verified: prunekit {len(ver)}/{len(sub)}, Torch-Pruning "
                         f"{tpv}/{len(sub)}; median prunable share among prunekit-verified: "
                         f"{100 * med:.0f}% of channels, {100 * medm:.0f}% of MACs.")
        if table == "hf" and ver:
            full = [r["model"] for r in ver if _all_roles(r["ours"].get("roles"))]
            tpv = sum(r.get("torch_pruning", {}).get("status") == "verified" for r in sub)
            lines.append(f"Verified with attention heads, MLP width and hidden size all "
                         f"prunable: prunekit {len(full)}/{len(sub)}; Torch-Pruning verified "
                         f"(any width) {tpv}/{len(sub)}. *Roles* column: heads and MLP as "
                         f"prunable groups / groups, hidden size yes/no (found from the "
                         f"graph's structure, `roles()` in coverage_zoo.py).")
        role_col = table == "hf"
        lines += ["", "| model | input | prunekit | capture | prunable share | MACs share | "
                  + ("roles: heads · MLP · hidden | " if role_col else "")
                  + "build s | error / reason | Torch-Pruning | error / reason |",
                  "|---|---|---|---|---|---|" + ("---|" if role_col else "")
                  + "---|---|---|---|"]
        for r in sub:
            o, t = r["ours"], r.get("torch_pruning", {})
            bs = f"{o['build_s']:.1f}" if "build_s" in o else ""
            rc = f"{_roles(o.get('roles'))} | " if role_col else ""
            lines.append(f"| {r['model']} | {r.get('input', '')} | {o['status']} | "
                         f"{o.get('capture', '')} | {_pct(o.get('prunable_share'))} | "
                         f"{_pct(o.get('prunable_macs_share'))} | {rc}{bs} | {_fmt_err(o)} | "
                         f"{t.get('status', 'not run')} | {_fmt_err(t) if t else ''} |")
        lines.append("")
    report.write_text("\n".join(lines))


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--report-to", default=REPORT)
    ap.add_argument("--tables", nargs="*", default=["yolo", "hf", "timm"])
    ap.add_argument("--models", nargs="*", help="keys such as timm:vgg11 hf:bert yolo:yolov8n.yaml")
    ap.add_argument("--skip-tp", action="store_true")
    ap.add_argument("--tp-timeout", type=float, default=60.0)
    ap.add_argument("--ours-timeout", type=int, default=120)
    ap.add_argument("--report", action="store_true", help="only render the markdown")
    ap.add_argument("--incomplete", action="store_true", help="say so in the report")
    ap.add_argument("--rev", help="the prunekit commit the run used (for the report)")
    ap.add_argument("--when", help="when the run ran (for the report; default: now)")
    ap.add_argument("--command", default="PYTHONWARNINGS=ignore YOLO_OFFLINE=1 nohup "
                    ".venv/bin/python benchmarks/coverage_zoo.py "
                    "> benchmarks/results/coverage_zoo.log 2>&1 &")
    ap.add_argument("--tp-one", help=argparse.SUPPRESS)
    ap.add_argument("--refresh-tp", nargs="*",
                    help="recompute Torch-Pruning's result for these keys (all rows whose "
                    "Torch-Pruning status is WRONG when none are named), keeping prunekit's")
    ap.add_argument("--refresh-ours", action="store_true",
                    help="recompute prunekit's result for every row (or --models), keeping "
                    "Torch-Pruning's (its result does not depend on prunekit's code)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.tp_one:
        model, x = get_model(args.tp_one)
        print(json.dumps(theirs(args.tp_one, model, x)), flush=True)
        return
    out, report = Path(args.out), Path(args.report_to)
    if args.report:
        render(out, report, args.command, not args.incomplete, args.rev, args.when)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.refresh_tp is not None:
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        want = set(args.refresh_tp) or {r["key"] for r in rows
                                        if r.get("torch_pruning", {}).get("status") == "WRONG"}
        for row in rows:
            if row["key"] in want:
                row["torch_pruning"] = finish_tp(start_tp(row["key"]), time.time(),
                                                 args.tp_timeout)
                print("refresh", row["key"], row["torch_pruning"]["status"], flush=True)
                tmp = out.with_suffix(".tmp")
                tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
                tmp.replace(out)
        render(out, report, args.command, not args.incomplete, args.rev, args.when)
        return
    if args.refresh_ours:
        refresh_ours(out, report, args)
        return
    done = {json.loads(line)["key"] for line in out.read_text().splitlines()} \
        if out.exists() else set()
    keys = args.models or [f"{t}:{n}" for t in args.tables for n in names_of(t)]
    t0 = time.time()
    for i, key in enumerate(keys):
        if key in done:
            continue
        table, name = key.split(":", 1)
        row = {"key": key, "table": table, "model": name}
        started = time.time()
        proc = None
        try:
            model, x = get_model(key)
        except Skip as exc:
            row["ours"] = {"status": "skipped", "reason": str(exc)}
            row["torch_pruning"] = {"status": "skipped", "reason": str(exc)}
        except Exception as exc:
            reason = f"model build failed: {type(exc).__name__}: {exc}"[:300]
            row["ours"] = {"status": "skipped", "reason": reason}
            row["torch_pruning"] = {"status": "skipped", "reason": reason}
        else:
            row["input"] = describe(x)
            if not args.skip_tp:
                proc = start_tp(key)
            row["ours"] = ours(model, x, args.ours_timeout)
            if proc is not None:
                try:
                    row["torch_pruning"] = finish_tp(proc, started, args.tp_timeout)
                except Exception:
                    row["torch_pruning"] = {"status": "harness-error",
                                            "reason": traceback.format_exc()[-300:]}
            del model
        row["wall_s"] = time.time() - started
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"[{i + 1}/{len(keys)} {time.time() - t0:.0f}s] {key}: "
              f"{row['ours']['status']} {row['ours'].get('reason', '')[:120]} | "
              f"tp {row.get('torch_pruning', {}).get('status')} ({row['wall_s']:.0f}s)",
              flush=True)
    render(out, report, args.command, True)


def refresh_ours(out: Path, report: Path, args: argparse.Namespace) -> None:
    """Re-run prunekit on the rows (the engine changed), Torch-Pruning's rows kept."""
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    want = set(args.models or [r["key"] for r in rows])
    t0 = time.time()
    for i, row in enumerate(rows):
        if row["key"] not in want or row["ours"].get("status") == "skipped":
            continue
        model, x = get_model(row["key"])
        row["ours"] = ours(model, x, args.ours_timeout)
        del model
        print(f"[{i + 1}/{len(rows)} {time.time() - t0:.0f}s] refresh {row['key']}: "
              f"{row['ours']['status']} {row['ours'].get('reason', '')[:120]}", flush=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tmp.replace(out)
    render(out, report, args.command, not args.incomplete, args.rev, args.when)


if __name__ == "__main__":
    main()
