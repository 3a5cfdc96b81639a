"""Try the engine on models nobody tuned it for: build, a random 50% plan, and the
equivalence check (``conformance.check_plan``), for the timm names given on the command
line (random weights, 64 px where the model allows), three Hugging Face configs and a
custom gated block. Prints one line per model: verified or the error, and the share of
prunable channels.

    .venv/bin/python benchmarks/probe_unseen.py $(python -c 'import timm, random;
        print(" ".join(random.sample(timm.list_models(), 8)))')
"""
import sys
import time

import timm
import torch
import transformers
from torch import nn
from prunekit import ChannelGraph
from prunekit.conformance import random_plan, check_plan
torch.manual_seed(0)

def timm_model(name):
    for kw in (dict(img_size=64, depth=2), dict(img_size=64), {}):
        try:
            m = timm.create_model(name, pretrained=False, num_classes=10, **kw).eval()
            size = kw.get("img_size", m.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
            return m, torch.randn(1, 3, size, size)
        except Exception:
            continue
    raise RuntimeError("cannot create")

def hf(cls, cfgcls, **kw):
    cfg = getattr(transformers, cfgcls)(**kw)
    m = getattr(transformers, cls)(cfg).eval()
    return m

class GatedBlock(nn.Module):
    """custom: a conv, split into value/gate halves, a depthwise conv on the value, a gated
    product, channel attention (SE) via einsum, a residual."""
    def __init__(self, c=16):
        super().__init__()
        self.inp = nn.Conv2d(3, c, 3, padding=1)
        self.expand = nn.Conv2d(c, 4 * c, 1)
        self.dw = nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c)
        self.se = nn.Linear(2 * c, 2 * c)
        self.proj = nn.Conv2d(2 * c, c, 1)
        self.norm = nn.GroupNorm(4, c)
        self.head = nn.Linear(c, 10)
    def forward(self, x):
        x = self.inp(x)
        v, g = self.expand(x).chunk(2, dim=1)
        v = self.dw(v) * torch.sigmoid(g)
        w = torch.sigmoid(self.se(v.mean((2, 3))))
        v = torch.einsum("bchw,bc->bchw", v, w)
        x = self.norm(x + self.proj(v))
        return self.head(x.mean((2, 3)))

cases = [(f"timm:{n}", lambda n=n: timm_model(n)) for n in sys.argv[1:]]
GQA = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
ids = torch.randint(0, 128, (1, 16))
cases += [
    ("hf:starcoder2", lambda: (hf("Starcoder2ForCausalLM", "Starcoder2Config", **GQA), ids)),
    ("hf:olmo", lambda: (hf("OlmoForCausalLM", "OlmoConfig", **GQA), ids)),
    ("hf:granite", lambda: (hf("GraniteForCausalLM", "GraniteConfig", **GQA), ids)),
    ("custom:gated", lambda: (GatedBlock(), torch.randn(2, 3, 16, 16))),
]
for name, make in cases:
    t = time.time()
    try:
        m, x = make()
        g = ChannelGraph.build(m, x)
        prunable = sum(gr.n_prunable for gr in g.prunable_groups)
        total = sum(gr.width for gr in g.groups)
        plan = random_plan(g, 0.5)
        r = check_plan(m, x, g, plan)
        print(f"{name:45s} OK   prunable {prunable}/{total} ch, err {r['error']:.1e}, "
              f"{time.time()-t:.0f}s", flush=True)
    except Exception as e:
        print(f"{name:45s} FAIL {type(e).__name__}: {str(e)[:300]}", flush=True)
