"""Tiny models for the rules that real zoos need (timm, Hugging Face, YOLO), each in milliseconds.

Each is built the way those libraries write their blocks (functional norms,
hand-written attention with head reshapes, rotary embeddings, grouped-query
attention, C2f's chunk/cat, factory-made positional inputs), without importing them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class BatchNormAct(nn.BatchNorm2d):
    """timm's norm-act layer: a BatchNorm2d subclass that calls F.batch_norm itself."""

    def forward(self, x):
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         False, 0.0, self.eps)
        return F.relu(x)


class NormAct(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(3, 8, 3, padding=1), BatchNormAct(8)
        self.c2, self.n2 = nn.Conv2d(8, 8, 3, padding=1), BatchNormAct(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.n1(self.c1(x))
        x = x + self.n2(self.c2(x))
        return self.fc(x.mean((2, 3)))


class PreNormBlock(nn.Module):
    """A ViT/ConvNeXt-style residual stream under LayerNorm, with layer scale."""

    def __init__(self, d: int = 12) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, 24), nn.Linear(24, d)
        self.gamma = nn.Parameter(torch.rand(d) + 0.5)

    def forward(self, x):
        return x + self.gamma * self.fc2(F.gelu(self.fc1(self.norm(x))))


class LayerNormStream(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 12)
        self.blocks = nn.Sequential(PreNormBlock(), PreNormBlock())
        self.norm = nn.LayerNorm(12)
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        return self.head(self.norm(self.blocks(self.embed(x))).mean(1))


class RMSNorm(nn.Module):
    """Hugging Face's RMSNorm: pow, mean over channels, rsqrt, weight."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.rand(d) + 0.5)

    def forward(self, x):
        var = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + 1e-6))


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


class GQAttention(nn.Module):
    """Llama-style attention: head reshape with -1, rotary embedding, grouped-query SDPA."""

    def __init__(self, d: int = 16, heads: int = 4, kv_heads: int = 2) -> None:
        super().__init__()
        self.head_dim = d // heads
        self.q = nn.Linear(d, heads * self.head_dim, bias=False)
        self.k = nn.Linear(d, kv_heads * self.head_dim, bias=False)
        self.v = nn.Linear(d, kv_heads * self.head_dim, bias=False)
        self.o = nn.Linear(heads * self.head_dim, d, bias=False)
        inv = 1.0 / (10000 ** (torch.arange(0, self.head_dim, 2).float() / self.head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)

    def forward(self, x):
        b, n, _ = x.shape
        shape = (b, n, -1, self.head_dim)
        q, k, v = (p(x).view(shape).transpose(1, 2) for p in (self.q, self.k, self.v))
        pos = torch.arange(n, dtype=torch.float32)
        freqs = torch.outer(pos, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True,
                                             scale=self.head_dim ** -0.5)
        return self.o(out.transpose(1, 2).reshape(b, n, -1))


class TinyLM(nn.Module):
    """A two-block decoder with an RMSNorm residual stream and a SwiGLU MLP."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, d)
        self.n1, self.n2, self.n3 = RMSNorm(d), RMSNorm(d), RMSNorm(d)
        self.attn = GQAttention(d)
        self.gate, self.up, self.down = nn.Linear(d, 24), nn.Linear(d, 24), nn.Linear(24, d)
        self.head = nn.Linear(d, 20)

    def forward(self, input_ids):
        h = self.embed(input_ids)
        h = h + self.attn(self.n1(h))
        x = self.n2(h)
        h = h + self.down(F.silu(self.gate(x)) * self.up(x))
        return self.head(self.n3(h))


class ViTAttention(nn.Module):
    """timm's attention: one qkv linear, reshape(B, N, 3, heads, C // heads), SDPA."""

    def __init__(self, d: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)

    def forward(self, x):
        b, n, c = x.shape
        y = self.norm(x)
        qkv = self.qkv(y).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(1, 2).reshape(b, n, -1))


class EagerAttention(ViTAttention):
    """The same attention written with matmul and softmax (HF's eager path)."""

    def forward(self, x):
        b, n, c = x.shape
        y = self.norm(x)
        head_dim = 16 // self.heads   # a constant head size: heads prune whole
        qkv = self.qkv(y).reshape(b, n, 3, -1, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
        out = attn.softmax(dim=-1) @ v
        return x + self.proj(out.transpose(1, 2).reshape(b, n, -1))


class EagerNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.attn, self.head = nn.Linear(6, 16), EagerAttention(), nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.attn(self.embed(x)).mean(1))


class TinyViT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, 16))
        self.pos = nn.Parameter(torch.randn(1, 5, 16))
        self.attn = ViTAttention()
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        return self.head(self.attn(x)[:, 0])


class GroupNorms(nn.Module):
    """GroupNorm with several groups (whole groups go) and with one (kept statistics)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.g1 = nn.Conv2d(3, 12, 3, padding=1), nn.GroupNorm(4, 12)
        self.c2, self.g2 = nn.Conv2d(12, 8, 3, padding=1), nn.GroupNorm(1, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.g1(self.c1(x)))
        x = F.relu(self.g2(self.c2(x)))
        return self.fc(x.mean((2, 3)))


class GroupedGroupNorm(nn.Module):
    """Grouped convs between GroupNorms of 3 groups of 8 channels (6 conv groups of 4, then
    3 of 8): keeping the same local index in every conv group would merge every GroupNorm
    group into one unit, so those convs lose whole conv groups; the last grouped conv (2
    groups, batch norms around it) keeps losing the same local index in every group."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(3, 24, 3, padding=1), nn.GroupNorm(3, 24)
        self.g, self.n2 = nn.Conv2d(24, 24, 3, padding=1, groups=6), nn.GroupNorm(3, 24)
        self.g2, self.bn = nn.Conv2d(24, 24, 1, groups=3, bias=False), nn.BatchNorm2d(24)
        self.c3, self.bn2 = nn.Conv2d(24, 16, 1, bias=False), nn.BatchNorm2d(16)
        self.g3, self.bn3 = nn.Conv2d(16, 16, 3, padding=1, groups=2), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        x = F.silu(self.n1(self.c1(x)))
        x = F.silu(self.n2(self.g(x)))
        x = F.relu(self.bn(self.g2(x)))
        x = F.relu(self.bn2(self.c3(x)))
        x = F.relu(self.bn3(self.g3(x)))
        return self.fc(x.mean((2, 3)))


class C2f(nn.Module):
    """Ultralytics' C2f: chunk(2) of one conv, a chain on the last part, cat of all parts."""

    def __init__(self, c: int = 8, n: int = 2) -> None:
        super().__init__()
        self.cv1 = nn.Conv2d(c, 2 * c, 1)
        self.m = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for _ in range(n))
        self.cv2 = nn.Conv2d((2 + n) * c, c, 1)

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(F.silu(m(y[-1])) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class C2fNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.c2f = nn.Conv2d(3, 8, 3, padding=1), C2f()
        self.det = nn.Conv2d(8, 6, 1)   # a detection head: its outputs are model outputs

    def forward(self, x):
        return self.det(self.c2f(F.silu(self.stem(x))))


class FourierPos(nn.Module):
    """edgenext/xcit: a positional input built by factory ops at a fixed size, then a conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.proj = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        b, _, h, w = x.shape
        grid = torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w) / (h * w)
        dim = torch.arange(8, dtype=torch.float32).reshape(1, 8, 1, 1)
        pos = torch.sin(grid * math.pi * (dim + 1))
        y = F.relu(self.stem(x)) + self.proj(pos)
        return self.fc(y.mean((2, 3)))


@dataclass
class Output:
    logits: torch.Tensor
    hidden: torch.Tensor


class DictInOut(nn.Module):
    """Keyword inputs, shape-dependent control flow (not fx-traceable), a dataclass output."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 10), nn.Linear(10, 4)

    def forward(self, features, mask=None, scale: float = 1.0):
        h = F.relu(self.a(features))
        if h.shape[1] > 1:            # Python control flow on a shape: fx cannot trace this
            h = h * mask.unsqueeze(-1)
        return Output(self.b(h) * scale, h.sum(-1))


class RelPosAttention(nn.Module):
    """An undeclared attention class: ``reshape(B, N, 3, self.num_heads, self.head_dim)``
    with three heads (the literal 3 beside them), a rotary ``chunk`` over each head's
    features and a per-head relative-position bias gathered by a tensor index."""

    def __init__(self, d: int = 12, num_heads: int = 3, n: int = 5) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, d // num_heads
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.table = nn.Parameter(torch.randn(2 * n - 1, num_heads))
        pos = torch.arange(n)
        self.register_buffer("index", (pos[:, None] - pos[None, :] + n - 1).reshape(-1),
                             persistent=False)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q1, q2 = q.chunk(2, dim=-1)
        q = torch.cat([q2, q1], dim=-1)
        bias = self.table[self.index].reshape(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return x + self.proj(out.transpose(1, 2).reshape(b, n, c))


class RelPosNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.attn, self.head = nn.Linear(6, 12), RelPosAttention(), nn.Linear(12, 3)

    def forward(self, x):
        return self.head(self.attn(self.embed(x)).mean(1))


def make(name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = REACH[name][0]()
    for m in model.modules():   # non-trivial norm statistics and affine parameters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
        if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)) and m.weight is not None:
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    torch.manual_seed(1000 + seed)
    return model.eval(), REACH[name][1]()


REACH = {
    "norm_act": (NormAct, lambda: (torch.randn(2, 3, 8, 8),)),
    "layernorm_stream": (LayerNormStream, lambda: (torch.randn(2, 5, 6),)),
    "tiny_lm_gqa_rope": (TinyLM, lambda: {"input_ids": torch.randint(0, 20, (2, 6))}),
    "tiny_vit_sdpa": (TinyViT, lambda: (torch.randn(2, 3, 8, 8),)),
    "eager_attention": (EagerNet, lambda: (torch.randn(2, 5, 6),)),
    "relpos_attention": (RelPosNet, lambda: (torch.randn(2, 5, 6),)),
    "group_norms": (GroupNorms, lambda: (torch.randn(2, 3, 8, 8),)),
    "grouped_group_norm": (GroupedGroupNorm, lambda: (torch.randn(2, 3, 8, 8),)),
    "c2f": (C2fNet, lambda: (torch.randn(1, 3, 8, 8),)),
    "fourier_pos": (FourierPos, lambda: (torch.randn(2, 3, 6, 6),)),
    "dict_in_out": (DictInOut, lambda: {"features": torch.randn(2, 3, 6),
                                        "mask": torch.ones(2, 3), "scale": 2.0}),
}
