"""Intercepts for least-squares reweighting: which consumers' constant output offset can
be re-solved (their own bias, or the running mean of the batch norm that alone reads
them), and reading/writing a consumer's weight matrix with that offset as its last row."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.fx as fx
from torch import nn

from ..graph import ChannelGraph
from .lsq import set_weight, weight_matrix

__all__ = ["Intercepts", "sinks"]


def sinks(graph: ChannelGraph, names: Sequence[str]) -> dict[str, str | None]:
    """The consumers whose constant output offset can be re-solved, and where it lives:
    ``None`` for the consumer's own bias, else the name of the batch norm (with running
    statistics) that is the only reader of the consumer's only call."""
    traced = graph.traced
    calls: dict[str, list[fx.Node]] = {}
    for node in traced.graph.nodes:
        if node.op == "call_module":
            calls.setdefault(str(node.target), []).append(node)
    out: dict[str, str | None] = {}
    for name in names:
        nodes = calls.get(name, [])
        if getattr(traced.root.get_submodule(name), "bias", None) is not None:
            out[name] = None
            continue
        users = list(nodes[0].users) if len(nodes) == 1 else []
        if len(users) != 1 or users[0].op != "call_module" or \
                len(calls.get(str(users[0].target), [])) != 1:
            continue
        bn = traced.root.get_submodule(str(users[0].target))
        if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.running_mean is not None:
            out[name] = str(users[0].target)
    return out


@dataclass
class Intercepts:
    """Weight matrices of consumers in networks derived from ``original``; the consumers in
    ``sinks`` (see :func:`sinks`) carry their output offset as an extra last row."""

    original: nn.Module
    sinks: dict[str, str | None] = field(default_factory=dict)

    def offset(self, net: nn.Module, name: str) -> torch.Tensor:
        """The consumer's constant output offset in ``net`` (relative to the original's batch
        norm statistics when it lives in a batch norm)."""
        sink = self.sinks[name]
        if sink is None:
            return net.get_submodule(name).bias.detach().double()
        ref = self.original.get_submodule(sink).running_mean
        return (ref - net.get_submodule(sink).running_mean).detach().double()

    def matrix(self, net: nn.Module, name: str) -> torch.Tensor:
        """The consumer's weight matrix in ``net``, with its offset as last row when it has
        an intercept."""
        W = weight_matrix(net.get_submodule(name))
        return torch.cat([W, self.offset(net, name)[None]], 0) if name in self.sinks else W

    def write(self, net: nn.Module, name: str, W: torch.Tensor) -> None:
        """Write a :meth:`matrix`-shaped matrix back into ``net``."""
        mod = net.get_submodule(name)
        n = mod.weight[0].numel()
        set_weight(mod, W[:n])
        if name not in self.sinks:
            return
        sink = self.sinks[name]
        with torch.no_grad():
            if sink is None:
                mod.bias.copy_(W[n].to(mod.bias.dtype))
            else:
                rm = net.get_submodule(sink).running_mean
                mean = self.original.get_submodule(sink).running_mean.double()
                rm.copy_((mean - W[n]).to(rm.dtype))
