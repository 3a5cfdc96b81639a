"""The layers through which LAPP masks a group's channels (see :mod:`.lapp`).

A group's channels are masked where the pruned model would lose them: at its affine
batch norms (scale and shift times the mask: exact, as the paper does), else at its
LayerNorm-like layers (normalised over the kept channels, output masked) and at the
conv/linear layers that produce them (weight rows and bias times the mask). LAPP's
``verify`` checks that this equals physical pruning, group by group.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.overrides import TorchFunctionMode

from ..graph import ChannelGraph


def _own(mod: nn.Module, name: str = "weight") -> torch.Tensor | None:
    """A layer's own tensor, whether or not a mask parametrizes it."""
    if parametrize.is_parametrized(mod, name):
        return getattr(mod.parametrizations, name).original
    return getattr(mod, name, None)


_PRODUCERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)   # and their subclasses (timm's, HF's)


class _Masked(nn.Module):
    """Parametrization: a tensor (a BN scale or shift; a producer's weight rows or bias)
    times its channels' current LAPP mask along dim 0 (the mask carries the
    straight-through gradient to the thresholds)."""

    def __init__(self, lapp: nn.Module, gi: int, member: "Member") -> None:
        super().__init__()
        self._owner = (lapp,)      # a tuple: not registered as a submodule (no cycle)
        self.gi, self.idx, self.pos = gi, member.idx, member.pos

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        masks = self._owner[0]._applied
        if masks is None:          # accessed outside a forward pass of the model
            return t
        m = masks[self.gi][self.idx].to(t.dtype)
        if len(self.pos) != t.shape[0]:     # the group owns some of the rows (a fused qkv)
            m = torch.ones(t.shape[0], dtype=t.dtype).index_put((self.pos,), m)
        return t * m.view(-1, *([1] * (t.dim() - 1)))


class Member:
    """One layer through which LAPP masks a group's channels: ``kind`` "bn" (its scale
    and shift are masked), "norm" (a LayerNorm-like layer: its normalisation, a
    ``layer_norm``/``rms_norm``/``group_norm`` call with its weight, runs over the kept
    channels and its output is masked; see :class:`KeptNorms`) or "producer" (a conv/linear whose output rows and bias
    are masked); ``pos``: the dim-0 positions that carry the group's channels, ``idx``:
    which local channel of the group each one is."""

    def __init__(self, kind: str, name: str, module: nn.Module, pos: torch.Tensor,
                 idx: torch.Tensor) -> None:
        self.kind, self.name, self.module = kind, name, module
        self.pos, self.idx = pos, idx

    def scale(self) -> torch.Tensor:
        """Per channel (at ``idx``), the importance this member gives: |scale| of a norm;
        the L2 norm of a producer's weight row."""
        w = _own(self.module).detach().float()[self.pos]
        return w.abs() if self.kind != "producer" else w.flatten(1).norm(dim=1)


def find_members(model: nn.Module, graph: ChannelGraph, groups: list[Any]
                 ) -> list[list[Member]]:
    """Per group, the layers that mask it: its affine BatchNorms; else its LayerNorm-like
    layers and its producers (conv/linear rows), both. One pass over the weight slices."""
    owner = {int(u): (gi, i) for gi, g in enumerate(groups) for i, u in enumerate(g.units)}
    mods = dict(model.named_modules())
    norms = {n.module for n in graph.normalisations() if n.module is not None}
    bn: list[list[Member]] = [[] for _ in groups]
    other: list[list[Member]] = [[] for _ in groups]
    for (fqn, dim), units in graph.slices.items():
        name, _, leaf = fqn.rpartition(".")
        if dim != 0 or leaf != "weight" or name not in mods:
            continue
        mod = mods[name]
        at: dict[int, tuple[list[int], list[int]]] = {}   # group -> (positions, local ids)
        for p, u in enumerate(units.tolist()):
            if int(u) in owner:
                gi, i = owner[int(u)]
                at.setdefault(gi, ([], []))[0].append(p)
                at[gi][1].append(i)
        for gi, (pos, idx) in at.items():
            parts = (name, mod, torch.as_tensor(pos), torch.as_tensor(idx))
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.affine:
                bn[gi].append(Member("bn", *parts))
            elif (name in norms or isinstance(mod, _NORMS)) and \
                    getattr(mod, "weight", None) is not None and mod.weight.dim() == 1:
                other[gi].append(Member("norm", *parts))
            elif isinstance(mod, _PRODUCERS):
                other[gi].append(Member("producer", *parts))
    return [b or o for b, o in zip(bn, other)]


class KeptNorms(TorchFunctionMode):
    """While the model runs, every ``F.layer_norm``, ``F.rms_norm`` or ``F.group_norm``
    called with the weight of a "norm" member (recognised by identity, so a module's own
    forward, a subclass's or a permuted channels-first one are all caught) normalises
    over the channel dim's kept channels, as the pruned layer does, and its output is
    masked. A masked channel keeps its full-statistics value before the mask (the leak
    and the straight-through gradient need one)."""

    def __init__(self, masks: Any, members: list[list[Member]]) -> None:
        super().__init__()
        self.masks = masks      # () -> (hard masks, applied masks) of this forward
        self.table = {id(m.module.weight): (gi, m) for gi, mem in enumerate(members)
                      for m in mem if m.kind == "norm"}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _NORM_FUNCS and self.table:
            weight = _arg(args, kwargs, 2, "weight")
            entry = self.table.get(id(weight))
            if entry is not None:
                return self._kept(func, args, kwargs, *entry)
        return func(*args, **kwargs)

    def _kept(self, func, args: tuple, kwargs: dict, gi: int, m: Member) -> torch.Tensor:
        out = func(*args, **kwargs)
        x = args[0]
        d = 1 if func is F.group_norm else x.dim() - 1
        if func is not F.group_norm and len(_arg(args, kwargs, 1, "normalized_shape")) != 1 or \
                func is F.group_norm and _arg(args, kwargs, 1, "num_groups") != 1:
            return out      # statistics over more than the channels: verify refuses it
        hard_masks, applied = self.masks()
        shape = [1] * out.dim()
        shape[d] = -1
        hard = torch.ones(out.shape[d], dtype=torch.bool)
        hard[m.pos] = hard_masks[gi][m.idx].detach() > 0.5
        exact = out
        if not hard.all():
            kept = torch.nonzero(hard).flatten().to(x.device)
            exact = torch.where(hard.view(shape).to(out.device),
                                _on_kept(func, args, kwargs, x, d, kept), out)
        mask = applied[gi][m.idx].to(out.dtype)
        full = torch.ones(out.shape[d], dtype=out.dtype).index_put((m.pos,), mask)
        return exact * full.view(shape).to(out.device)


_NORM_FUNCS = (F.layer_norm, F.rms_norm, F.group_norm)


def _arg(args: tuple, kwargs: dict, i: int, name: str, default: Any = None) -> Any:
    return args[i] if len(args) > i else kwargs.get(name, default)


def _on_kept(func, args: tuple, kwargs: dict, x: torch.Tensor, d: int,
             kept: torch.Tensor) -> torch.Tensor:
    """The norm on the kept channels of ``x`` (weights sliced alike), scattered back."""
    sub = x.index_select(d, kept)
    w = _arg(args, kwargs, 2, "weight")
    if func is F.group_norm:
        b, eps = _arg(args, kwargs, 3, "bias"), _arg(args, kwargs, 4, "eps", 1e-5)
        y = F.group_norm(sub, 1, w[kept] if w is not None else None,
                         b[kept] if b is not None else None, eps)
    elif func is F.rms_norm:
        y = F.rms_norm(sub, [len(kept)], w[kept] if w is not None else None,
                       _arg(args, kwargs, 3, "eps"))
    else:
        b, eps = _arg(args, kwargs, 3, "bias"), _arg(args, kwargs, 4, "eps", 1e-5)
        y = F.layer_norm(sub, [len(kept)], w[kept] if w is not None else None,
                         b[kept] if b is not None else None, eps)
    return x.new_zeros(x.shape).index_copy(d, kept, y)
