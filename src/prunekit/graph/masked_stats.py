"""The reference for normalised channels: statistics over the kept channels only.

A LayerNorm, RMSNorm, single-group GroupNorm, or a mean/variance over a pruned
channel dim computes, in the pruned model, its statistics over the channels
that are left. The masked reference defines correctness for these ops as the
same op run on the kept channels of its input (weights sliced alike), the
result scattered back with zeros at the removed positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .builder import Stat


def kept_statistics(root: nn.Module, node: fx.Node, args: tuple, kwargs: dict, stat: Stat,
                    idx: torch.Tensor) -> Any:
    x = args[0]
    idx = idx.to(x.device)
    sub = x.index_select(stat.dim, idx)
    if node.op == "call_module":
        out = _module(root.get_submodule(str(node.target)), sub, stat, idx, x.dim())
    elif stat.kind == "reduce":
        fn = getattr(sub, str(node.target)) if node.op == "call_method" else None
        return fn(*args[1:], **kwargs) if fn else node.target(sub, *args[1:], **kwargs)
    else:
        out = _functional(node, sub, args, kwargs, stat, idx, x.dim())
    return x.new_zeros(x.shape).index_copy(stat.dim, idx, out)


def _vec(t: torch.Tensor | None, dim: int, idx: torch.Tensor) -> torch.Tensor | None:
    return None if t is None else t.index_select(dim, idx)


def _module(mod: nn.Module, sub: torch.Tensor, stat: Stat, idx: torch.Tensor,
            nd: int) -> torch.Tensor:
    if isinstance(mod, nn.GroupNorm):
        return F.group_norm(sub, 1, _vec(mod.weight, 0, idx), _vec(mod.bias, 0, idx), mod.eps)
    shape = list(mod.normalized_shape)
    pos = stat.dim - (nd - len(shape))
    shape[pos] = len(idx)
    w = _vec(mod.weight, pos, idx)
    if isinstance(mod, nn.RMSNorm):
        return F.rms_norm(sub, shape, w, mod.eps)
    return F.layer_norm(sub, shape, w, _vec(mod.bias, pos, idx), mod.eps)


def _functional(node: fx.Node, sub: torch.Tensor, args: tuple, kwargs: dict, stat: Stat,
                idx: torch.Tensor, nd: int) -> torch.Tensor:
    a = list(args) + [None] * 5
    get = lambda i, name, default=None: a[i] if i < len(args) else kwargs.get(name, default)  # noqa: E731
    if node.target is F.group_norm:
        return F.group_norm(sub, 1, _vec(get(2, "weight"), 0, idx), _vec(get(3, "bias"), 0, idx),
                            get(4, "eps", 1e-5))
    shape = get(1, "normalized_shape")
    shape = [shape] if isinstance(shape, int) else [int(s) for s in shape]
    pos = stat.dim - (nd - len(shape))
    shape[pos] = len(idx)
    w = _vec(get(2, "weight"), pos, idx)
    if node.target is F.rms_norm:
        return F.rms_norm(sub, shape, w, get(3, "eps"))
    return F.layer_norm(sub, shape, w, _vec(get(3, "bias"), pos, idx), get(4, "eps", 1e-5))


@dataclass(frozen=True)
class Normalisation:
    """A captured layer whose statistics run over pruned channels (a public record of
    :meth:`prunekit.graph.ChannelGraph.normalisations`): the traced ``node``'s name, its
    ``module`` (qualified name; None for a functional op), the ``dim`` of its first input
    the statistics run over, the op's ``kind`` and the ``units`` along that dim."""

    node: str
    module: str | None
    dim: int
    kind: str
    units: np.ndarray
