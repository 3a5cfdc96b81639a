"""Attention heads: the rule for nn.MultiheadAttention and its prunable replacement.

``nn.MultiheadAttention`` ties the width of its projections to ``embed_dim`` (the
query's feature size), so a model with fewer heads, or a narrower residual
stream, cannot be expressed with it. Surgery swaps it for
:class:`PrunedMultiheadAttention`, which computes the same function with
independent input width, head count and output width (head size unchanged, so
the 1/sqrt(head_dim) scale is the original's). Heads are pruned whole.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .builder import Builder, module_rule
from .layout import Block, Layout

_MHA_ARGS = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask",
             "average_attn_weights", "is_causal")


def _arg(node: fx.Node, name: str, default: Any = None) -> Any:
    i = _MHA_ARGS.index(name)
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


@module_rule(nn.MultiheadAttention)
def mha(b: Builder, node: fx.Node, mod: nn.MultiheadAttention) -> Any:
    shapes = node.meta.get("pk_shape")
    lq, lk, lv = (b.layout(_arg(node, n)) for n in ("query", "key", "value"))
    if not all(isinstance(l, Layout) for l in (lq, lk, lv)) or not isinstance(shapes, tuple):
        return b.unknown(node)
    fqn, h, d = str(node.target), mod.num_heads, mod.head_dim
    ins = []
    for lay in (lq, lk, lv):
        nd = len(lay.shape)
        for blk in lay.blocks:
            if blk.dims != (nd - 1,):
                b.freeze(blk.ids, f"{b.where(node)} attends over a channel-tracked dim")
        ins.append(lay.ids_1d(nd - 1))
    heads = b.new(f"{fqn}:heads", h, "heads")
    pos = np.repeat(heads, d)
    if mod._qkv_same_embed_dim:
        b.record(f"{fqn}.in_proj_weight", 0, np.tile(pos, 3))
        tracked = [i for i in ins if i is not None]
        if tracked and len(tracked) < 3:
            for t in tracked:
                b.freeze(t, f"{b.where(node)} shares projection columns with a fixed input")
        elif tracked:
            b.uf.union_arrays(ins[0], ins[1])
            b.uf.union_arrays(ins[0], ins[2])
            b.record(f"{fqn}.in_proj_weight", 1, ins[0])
    else:
        for name, ids in zip(("q", "k", "v"), ins):
            b.record(f"{fqn}.{name}_proj_weight", 0, pos)
            if ids is not None:
                b.record(f"{fqn}.{name}_proj_weight", 1, ids)
    if mod.in_proj_bias is not None:
        b.record(f"{fqn}.in_proj_bias", 0, np.tile(pos, 3))
    if mod.bias_k is not None:
        b.record(f"{fqn}.bias_k", 2, pos)
        b.record(f"{fqn}.bias_v", 2, pos)
    out = b.new(f"{fqn}.out_proj", mod.out_proj.out_features, "linear")
    b.record(f"{fqn}.out_proj.weight", 1, pos)
    b.record(f"{fqn}.out_proj.weight", 0, out)
    if mod.out_proj.bias is not None:
        b.record(f"{fqn}.out_proj.bias", 0, out)
    if _weights_used(node):
        b.freeze(heads, f"{b.where(node)} returns attention weights that are used")
    b.fix(fqn, "mha")
    _mha_cost(b, node, mod, lq, lk, ins, pos, out)
    out_shape = shapes[0]
    w_shape = shapes[1] if len(shapes) > 1 else None
    return (Layout(out_shape, (Block((len(out_shape) - 1,), out),)),
            Layout(w_shape, ()) if w_shape else None)


def _weights_used(node: fx.Node) -> bool:
    for u in node.users:
        if u.target is operator.getitem and u.args[1] == 1 and u.users:
            return True
        if u.target is not operator.getitem:
            return True
    return False


def _mha_cost(b: Builder, node: fx.Node, mod: nn.MultiheadAttention, lq: Layout, lk: Layout,
              ins: list, pos: np.ndarray, out: np.ndarray) -> None:
    bf = mod.batch_first and len(lq.shape) == 3
    if len(lq.shape) == 3:
        n = lq.shape[0] if bf else lq.shape[1]
        seq_q = lq.shape[1] if bf else lq.shape[0]
        seq_k = lk.shape[1] if bf else lk.shape[0]
    else:
        n, seq_q, seq_k = 1, lq.shape[0], lk.shape[0]
    s_attn = seq_k + int(mod.bias_k is not None) + int(mod.add_zero_attn)
    where = b.where(node)
    widths = (mod.embed_dim, mod.kdim, mod.vdim)
    for seq, ids, width in ((seq_q, ins[0], widths[0]), (seq_k, ins[1], widths[1]),
                            (seq_k, ins[2], widths[2])):
        b.macs(seq * n * (width if ids is None else 1), [ids, pos], where)
    b.macs(2 * n * seq_q * s_attn, [pos], where)
    b.macs(seq_q * n, [pos, out], where)


class PrunedMultiheadAttention(nn.Module):
    """Multi-head attention with independent input, head and output widths.

    Same call signature and outputs as ``nn.MultiheadAttention`` (parameters keep
    their names), computed with explicit matmuls so FLOP counters see them.
    """

    def __init__(self, num_heads: int, head_dim: int, in_dims: tuple[int, int, int],
                 out_dim: int, *, bias: bool, add_bias_kv: bool, add_zero_attn: bool,
                 dropout: float, batch_first: bool, same_embed: bool) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.batch_first, self.dropout = batch_first, dropout
        self.add_zero_attn, self.same_embed = add_zero_attn, same_embed
        inner = num_heads * head_dim
        if same_embed:
            self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, in_dims[0]))
        else:
            self.q_proj_weight = nn.Parameter(torch.empty(inner, in_dims[0]))
            self.k_proj_weight = nn.Parameter(torch.empty(inner, in_dims[1]))
            self.v_proj_weight = nn.Parameter(torch.empty(inner, in_dims[2]))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner)) if bias else None
        self.bias_k = nn.Parameter(torch.zeros(1, 1, inner)) if add_bias_kv else None
        self.bias_v = nn.Parameter(torch.zeros(1, 1, inner)) if add_bias_kv else None
        self.out_proj = nn.Linear(inner, out_dim, bias=bias)

    @classmethod
    def from_module(cls, mod: nn.Module, head_dim: int) -> "PrunedMultiheadAttention":
        """Build from an ``nn.MultiheadAttention`` whose tensors were already sliced."""
        same = getattr(mod, "_qkv_same_embed_dim", getattr(mod, "same_embed", True))
        if same:
            w = mod.in_proj_weight
            inner, dims = w.shape[0] // 3, (w.shape[1],) * 3
        else:
            inner = mod.q_proj_weight.shape[0]
            dims = (mod.q_proj_weight.shape[1], mod.k_proj_weight.shape[1],
                    mod.v_proj_weight.shape[1])
        new = cls(inner // head_dim, head_dim, dims, mod.out_proj.weight.shape[0],
                  bias=mod.in_proj_bias is not None, add_bias_kv=mod.bias_k is not None,
                  add_zero_attn=mod.add_zero_attn, dropout=mod.dropout,
                  batch_first=mod.batch_first, same_embed=same)
        own = dict(mod.named_parameters())
        with torch.no_grad():
            for name, p in new.named_parameters():
                p.copy_(own[name])
        new.out_proj.bias = new.out_proj.bias if mod.out_proj.bias is not None else None
        new.train(mod.training)
        return new.to(dtype=mod.out_proj.weight.dtype)

    def _proj(self, x: torch.Tensor, i: int) -> torch.Tensor:
        inner = self.num_heads * self.head_dim
        if self.same_embed:
            w = self.in_proj_weight[i * inner:(i + 1) * inner]
        else:
            w = (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)[i]
        bias = None if self.in_proj_bias is None else self.in_proj_bias[i * inner:(i + 1) * inner]
        return F.linear(x, w, bias)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = (t.unsqueeze(1) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        L, N, _ = query.shape
        h, d = self.num_heads, self.head_dim
        q, k, v = self._proj(query, 0), self._proj(key, 1), self._proj(value, 2)
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.repeat(1, N, 1)])
            v = torch.cat([v, self.bias_v.repeat(1, N, 1)])
            attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
            key_padding_mask = None if key_padding_mask is None else F.pad(key_padding_mask, (0, 1))
        q = q.reshape(L, N * h, d).transpose(0, 1)
        k = k.reshape(k.shape[0], N * h, d).transpose(0, 1)
        v = v.reshape(v.shape[0], N * h, d).transpose(0, 1)
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(N * h, 1, d)], dim=1)
            v = torch.cat([v, v.new_zeros(N * h, 1, d)], dim=1)
            attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
            key_padding_mask = None if key_padding_mask is None else F.pad(key_padding_mask, (0, 1))
        S = k.shape[1]
        scores = torch.bmm(q * (1.0 / math.sqrt(d)), k.transpose(1, 2))
        if is_causal and attn_mask is None:
            attn_mask = torch.ones(L, S, dtype=torch.bool, device=q.device).triu(1)
        if attn_mask is not None:
            mask = attn_mask if attn_mask.dim() == 3 else attn_mask.unsqueeze(0)
            scores = scores.masked_fill(mask, float("-inf")) if mask.dtype == torch.bool \
                else scores + mask
        if key_padding_mask is not None:
            kpm = key_padding_mask.view(N, 1, 1, S).expand(N, h, 1, S).reshape(N * h, 1, S)
            scores = scores.masked_fill(kpm, float("-inf")) if kpm.dtype == torch.bool \
                else scores + kpm
        attn = F.softmax(scores, dim=-1)
        attn_used = F.dropout(attn, p=self.dropout, training=self.training)
        out = torch.bmm(attn_used, v).transpose(0, 1).reshape(L, N, h * d)
        out = self.out_proj(out)
        if self.batch_first and not unbatched:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(1)
        if not need_weights:
            return out, None
        weights = attn.view(N, h, L, S)
        weights = weights.mean(dim=1) if average_attn_weights else weights
        return out, (weights.squeeze(0) if unbatched else weights)
