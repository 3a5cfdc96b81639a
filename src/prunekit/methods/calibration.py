"""Calibration activations: the inputs of chosen layers on unlabeled batches, the original
network's reference inputs, and the Gram statistics least-squares selection and reweighting
solve on (used by submodular selection and :func:`prunekit.methods.reweight.reweight`)."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import nn

from ..errors import TargetError
from .lsq import Gram, patches, weight_matrix, with_ones

__all__ = ["Reference", "as_batches", "grams", "layer_inputs"]


class _Stop(Exception):
    pass


def layer_inputs(model: nn.Module, modules: dict[str, nn.Module], x: torch.Tensor,
            chunk: int | None = None) -> dict[str, torch.Tensor]:
    """The inputs of ``modules`` (hooked inside ``model``) on batch ``x``; the forward
    stops once all of them have run. ``chunk``: run ``x`` that many at a time (a graph
    recorded from one eager pass replays only at its example's batch size)."""
    if chunk and len(x) != chunk:
        parts = [layer_inputs(model, modules, p, chunk) for p in x.split(chunk)]
        return {n: torch.cat([p[n] for p in parts]) for n in parts[0]}
    got: dict[str, torch.Tensor] = {}
    handles = []

    def hook(name: str):
        def fn(_m, args):
            got[name] = args[0].detach()
            if len(got) == len(modules):
                raise _Stop
        return fn
    for n, mod in modules.items():
        handles.append(mod.register_forward_pre_hook(hook(n)))
    try:
        with torch.inference_mode():
            model(x)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    missing = set(modules) - set(got)
    if missing:
        raise RuntimeError(f"layers {sorted(missing)[:3]} never ran on the calibration data")
    return got


class Reference:
    """The original network's consumer inputs per calibration batch: computed once and
    kept (``cache``), or recomputed on demand (bounded memory)."""

    def __init__(self, model: nn.Module, names: Sequence[str], batches: list[torch.Tensor],
                 cache: bool) -> None:
        self.model, self.batches, self.cache = model, batches, cache
        self.store: list[dict[str, torch.Tensor]] = []
        if cache:
            mods = {n: model.get_submodule(n) for n in names}
            self.store = [layer_inputs(model, mods, x) for x in batches]

    def __call__(self, i: int, names: Sequence[str]) -> dict[str, torch.Tensor]:
        if self.cache:
            return {n: self.store[i][n] for n in names}
        return layer_inputs(self.model, {n: self.model.get_submodule(n) for n in names},
                       self.batches[i])


def as_batches(data: torch.Tensor | Iterable[Any], size: int) -> list[torch.Tensor]:
    if isinstance(data, torch.Tensor):
        return list(data.split(size))
    out = []
    for item in data:
        out.append(item[0] if isinstance(item, (tuple, list)) else item)
    if not out:
        raise TargetError("the calibration data is empty")
    return out


def grams(forward: nn.Module, hooked: dict[str, nn.Module], geometry: nn.Module,
           batches: list[torch.Tensor], ref: Reference | None,
           targets: dict[str, torch.Tensor] | None = None,
           ones: frozenset[str] | set[str] = frozenset(),
           chunk: int | None = None) -> dict[str, Gram]:
    """Gram statistics of the consumers ``hooked`` (modules inside ``forward``): B from
    ``forward``'s activations; with ``ref``, the target is the reference input times
    ``targets[name]`` (default: ``geometry``'s weight), else it is symmetric (A = B).
    ``geometry`` holds the consumers' kernel sizes, strides and padding. Consumers in
    ``ones`` get a last, constant column (their targets then have the offset as last row)."""
    out: dict[str, Gram] = {}
    names = list(hooked)
    for i, x in enumerate(batches):
        b_in = layer_inputs(forward, hooked, x, chunk)
        a_in = ref(i, names) if ref is not None else None
        for n in names:
            mod = geometry.get_submodule(n)
            aug = with_ones if n in ones else (lambda p: p)
            if n not in out:
                out[n] = Gram(mod.weight[0].numel() + (n in ones), ref is None)
            if ref is None:
                out[n].add(aug(patches(mod, b_in[n])))
            else:
                W = targets[n] if targets and n in targets else weight_matrix(mod)
                out[n].add(aug(patches(mod, b_in[n])), aug(patches(mod, a_in[n])), W)
    return out

