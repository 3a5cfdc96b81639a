"""Heads of torchvision's Swin window attention (v1 and v2).

torchvision's ``shifted_window_attention`` derives the head size from the input
width (``C // num_heads``), so a Swin block with fewer heads cannot be expressed
with it. The rule below makes heads prunable units; surgery wraps the sliced
module in :class:`PrunedWindowAttention`, which computes the same window
attention with an explicit head size (the original's, so the 1/sqrt(d) scale is
unchanged) and keeps torchvision's relative-position-bias code.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .builder import Builder
from .layout import Block, Layout

try:  # torchvision is optional
    from torchvision.models.swin_transformer import (ShiftedWindowAttention,
                                                     ShiftedWindowAttentionV2)
    TORCHVISION_WINDOW: tuple[type, ...] = (ShiftedWindowAttention, ShiftedWindowAttentionV2)
except Exception:  # pragma: no cover
    TORCHVISION_WINDOW = ()


class PrunedWindowAttention(nn.Module):
    """A torchvision (Shifted)WindowAttention(V2) whose heads were pruned."""

    def __init__(self, inner: nn.Module, head_dim: int) -> None:
        super().__init__()
        self.inner, self.head_dim = inner, head_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.inner
        return window_attention(
            x, m.qkv.weight, m.qkv.bias, m.proj.weight, m.proj.bias,
            m.get_relative_position_bias(), list(m.window_size), list(m.shift_size),
            m.num_heads, self.head_dim, getattr(m, "logit_scale", None), m.attention_dropout,
            m.dropout, self.training)


def window_attention(x: torch.Tensor, qkv_w: torch.Tensor, qkv_b: torch.Tensor | None,
                     proj_w: torch.Tensor, proj_b: torch.Tensor | None, bias: torch.Tensor,
                     window: list[int], shift: list[int], heads: int, head_dim: int,
                     logit_scale: torch.Tensor | None, attn_drop: float, drop: float,
                     training: bool) -> torch.Tensor:
    """(Shifted) window self-attention over (B, H, W, C) with an explicit head size."""
    B, H, W, _ = x.shape
    wh, ww = window
    x = F.pad(x, (0, 0, 0, (-W) % ww, 0, (-H) % wh))
    Hp, Wp = x.shape[1], x.shape[2]
    sh = 0 if wh >= Hp else shift[0]
    sw = 0 if ww >= Wp else shift[1]
    if sh or sw:
        x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
    nh, nw, n_tok = Hp // wh, Wp // ww, wh * ww
    tokens = x.reshape(B, nh, wh, nw, ww, -1).permute(0, 1, 3, 2, 4, 5).reshape(
        B * nh * nw, n_tok, -1)
    if logit_scale is not None and qkv_b is not None:
        qkv_b = qkv_b.clone()
        third = qkv_b.numel() // 3
        qkv_b[third:2 * third] = 0.0  # v2 has no key bias
    qkv = F.linear(tokens, qkv_w, qkv_b).reshape(tokens.shape[0], n_tok, 3, heads, head_dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    if logit_scale is not None:
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(logit_scale, max=math.log(100.0)).exp()
    else:
        attn = (q * head_dim ** -0.5) @ k.transpose(-2, -1)
    attn = attn + bias
    if sh or sw:
        mask = _shift_mask(Hp, Wp, wh, ww, sh, sw, x)
        attn = (attn.view(B, nh * nw, heads, n_tok, n_tok) + mask[None, :, None]).view(
            -1, heads, n_tok, n_tok)
    attn = F.dropout(F.softmax(attn, dim=-1), p=attn_drop, training=training)
    out = (attn @ v).transpose(1, 2).reshape(tokens.shape[0], n_tok, heads * head_dim)
    out = F.dropout(F.linear(out, proj_w, proj_b), p=drop, training=training)
    out = out.view(B, nh, nw, wh, ww, -1).permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, -1)
    if sh or sw:
        out = torch.roll(out, shifts=(sh, sw), dims=(1, 2))
    return out[:, :H, :W, :].contiguous()


def _shift_mask(Hp: int, Wp: int, wh: int, ww: int, sh: int, sw: int,
                like: torch.Tensor) -> torch.Tensor:
    """-100 between tokens of one window that came from different regions after the roll."""
    label = like.new_zeros((Hp, Wp))
    rows = (slice(0, Hp - wh), slice(Hp - wh, Hp - sh), slice(Hp - sh, Hp))
    cols = (slice(0, Wp - ww), slice(Wp - ww, Wp - sw), slice(Wp - sw, Wp))
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            label[r, c] = 3 * i + j
    label = label.view(Hp // wh, wh, Wp // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)
    diff = label[:, None, :] - label[:, :, None]
    return torch.where(diff != 0, torch.full_like(diff, -100.0), torch.zeros_like(diff))


def window_rule(b: Builder, node: fx.Node, mod: nn.Module) -> Any:
    lay, out_shape = b.layout(node.args[0]), b.shape(node)
    if not isinstance(lay, Layout) or out_shape is None or len(lay.shape) != 4:
        return b.unknown(node)
    wrapped = isinstance(mod, PrunedWindowAttention)
    inner = mod.inner if wrapped else mod
    pfx = f"{node.target}.inner" if wrapped else str(node.target)
    h = inner.num_heads
    d = mod.head_dim if wrapped else inner.qkv.out_features // 3 // h
    for blk in lay.blocks:
        if blk.dims != (3,):
            b.freeze(blk.ids, f"{b.where(node)} attends over a channel-tracked dim")
    ids_in = lay.ids_1d(3)
    heads = b.new(f"{node.target}:heads", h, "heads")
    pos = np.repeat(heads, d)
    b.record(f"{pfx}.qkv.weight", 0, np.tile(pos, 3))
    if ids_in is not None:
        b.record(f"{pfx}.qkv.weight", 1, ids_in)
    if inner.qkv.bias is not None:
        b.record(f"{pfx}.qkv.bias", 0, np.tile(pos, 3))
    out = b.new(f"{node.target}.proj", inner.proj.out_features, "linear")
    b.record(f"{pfx}.proj.weight", 1, pos)
    b.record(f"{pfx}.proj.weight", 0, out)
    if inner.proj.bias is not None:
        b.record(f"{pfx}.proj.bias", 0, out)
    if hasattr(inner, "cpb_mlp"):
        b.record(f"{pfx}.logit_scale", 0, heads)
        b.record(f"{pfx}.cpb_mlp.2.weight", 0, heads)
    else:
        b.record(f"{pfx}.relative_position_bias_table", 1, heads)
    b.fix(str(node.target), "window_attention")
    _cost(b, node, inner, lay, ids_in, heads, pos, out)
    return Layout(out_shape, (Block((3,), out),))


def _cost(b: Builder, node: fx.Node, inner: nn.Module, lay: Layout, ids_in: np.ndarray | None,
          heads: np.ndarray, pos: np.ndarray, out: np.ndarray) -> None:
    bsz, hgt, wid, c = lay.shape
    wh, ww = inner.window_size
    tokens = bsz * (-(-hgt // wh) * wh) * (-(-wid // ww) * ww)
    where = b.where(node)
    b.macs(3 * tokens * (c if ids_in is None else 1), [ids_in, pos], where)
    b.macs(2 * tokens * wh * ww, [pos], where)
    b.macs(tokens, [pos, out], where)
    if hasattr(inner, "cpb_mlp"):
        rows = int(np.prod(inner.relative_coords_table.shape[:-1]))
        first, last = inner.cpb_mlp[0], inner.cpb_mlp[2]
        b.macs(rows * first.in_features * first.out_features, [], where)
        b.macs(rows * last.in_features, [heads], where)


def fix_window(model: nn.Module, fqn: str, original: nn.Module) -> nn.Module | None:
    """Set the new head count and wrap (once) so the head size is explicit."""
    mod = model.get_submodule(fqn)
    wrapped = isinstance(mod, PrunedWindowAttention)
    inner = mod.inner if wrapped else mod
    orig = original.get_submodule(fqn)
    orig_inner = orig.inner if isinstance(orig, PrunedWindowAttention) else orig
    d = mod.head_dim if wrapped else orig_inner.qkv.out_features // 3 // orig_inner.num_heads
    inner.num_heads = inner.qkv.weight.shape[0] // (3 * d)
    inner.qkv.out_features = inner.qkv.weight.shape[0]
    inner.qkv.in_features = inner.qkv.weight.shape[1]
    inner.proj.out_features, inner.proj.in_features = inner.proj.weight.shape
    if hasattr(inner, "cpb_mlp"):
        inner.cpb_mlp[2].out_features = inner.cpb_mlp[2].weight.shape[0]
    return None if wrapped else PrunedWindowAttention(inner, d)
