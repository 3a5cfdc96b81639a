"""Importance of every unit (removable channel), aggregated over all layers of its group.

Each criterion scores the indices of every weight slice the graph recorded (a
conv's output rows, the next conv's input columns, the BN scale, ...). A
member's scores are divided by their mean before they are summed into the
units, so a wide 3x3 conv does not drown a BN scale or a 1x1 conv: every layer
of a group has an equal say. Higher means more important.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from ..graph import ChannelGraph

CRITERIA = ("l1", "l2", "bn", "taylor", "fpgm", "random")


def unit_scores(graph: ChannelGraph, model: nn.Module, criterion: str = "l1", *,
                data: Iterable[Any] | None = None,
                loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
                seed: int = 0) -> np.ndarray:
    """One score per unit of ``graph`` (index with ``group.units``)."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown importance criterion {criterion!r}; choose from {CRITERIA}")
    if criterion == "random":
        return np.random.default_rng(seed).random(graph.n_units)
    if criterion == "taylor":
        grads = _gradients(model, data, loss_fn)
        return _aggregate(graph, model, lambda name, t, d: _taylor(t, grads.get(name), d),
                          weights_only=False)
    if criterion == "bn":
        bn = _aggregate(graph, model, _magnitude(1), only=_is_norm_weight(model))
        fallback = _aggregate(graph, model, _magnitude(1))
        has_bn = _aggregate(graph, model, lambda n, t, d: np.ones(t.shape[d]),
                            only=_is_norm_weight(model)) > 0
        return np.where(has_bn, bn, fallback)
    if criterion == "fpgm":
        return _aggregate(graph, model, _fpgm, only=lambda name, t, d: d == 0 and t.dim() >= 2)
    return _aggregate(graph, model, _magnitude(1 if criterion == "l1" else 2))


def _aggregate(graph: ChannelGraph, model: nn.Module, score: Callable, only: Callable | None = None,
               weights_only: bool = True) -> np.ndarray:
    tensors = dict(model.named_parameters())
    total = np.zeros(graph.n_units, dtype=np.float64)
    for (name, dim), units in graph.slices.items():
        t = tensors.get(name)
        if t is None or (weights_only and not name.endswith("weight")):
            continue
        if only is not None and not only(name, t, dim):
            continue
        with torch.no_grad():
            vals = np.asarray(score(name, t.detach().float(), dim), dtype=np.float64)
        mean = vals.mean() if vals.size else 0.0
        if mean > 0:
            np.add.at(total, units, vals / mean)
    return total


def _magnitude(p: int) -> Callable:
    def score(_name: str, t: torch.Tensor, dim: int) -> np.ndarray:
        moved = t.movedim(dim, 0).reshape(t.shape[dim], -1)
        return moved.norm(p=p, dim=1).numpy()
    return score


def _fpgm(_name: str, t: torch.Tensor, dim: int) -> np.ndarray:
    flat = t.movedim(dim, 0).reshape(t.shape[dim], -1)
    return torch.cdist(flat, flat).sum(dim=1).numpy()


def _taylor(t: torch.Tensor, grad: torch.Tensor | None, dim: int) -> np.ndarray:
    if grad is None:
        return np.zeros(t.shape[dim])
    prod = (t * grad).movedim(dim, 0).reshape(t.shape[dim], -1)
    return prod.sum(dim=1).abs().numpy()


def _is_norm_weight(model: nn.Module) -> Callable:
    norms = {f"{n}.weight" for n, m in model.named_modules()
             if isinstance(m, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm))}
    return lambda name, t, d: name in norms


def _gradients(model: nn.Module, data: Iterable[Any] | None,
               loss_fn: Callable[[Any, Any], torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """Accumulated gradients of the loss over ``data`` (batches of (inputs, targets))."""
    if data is None:
        raise ValueError("the 'taylor' criterion needs data: pass data=[(inputs, targets), ...]")
    loss_fn = loss_fn or nn.functional.cross_entropy
    params = dict(model.named_parameters())
    grads = {n: torch.zeros_like(p) for n, p in params.items()}
    was = model.training
    model.eval()
    n_batches = 0
    try:
        for batch in data:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ValueError("the 'taylor' criterion needs (inputs, targets) batches")
            x, y = batch[0], batch[1]
            model.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            for n, p in params.items():
                if p.grad is not None:
                    grads[n] += p.grad.detach()
            n_batches += 1
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was)
    if not n_batches:
        raise ValueError("the 'taylor' criterion got an empty data iterable")
    return grads
