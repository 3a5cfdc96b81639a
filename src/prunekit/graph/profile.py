"""What a latency model needs from a captured graph: the conv/linear layer calls with their
real input and output shapes and the units of their channels (:class:`Layer`), and the
size of every other op's output as a product of kept channel counts (:class:`Activation`).
Both are public records of :meth:`prunekit.graph.ChannelGraph.layers` and
:meth:`~prunekit.graph.ChannelGraph.activations`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch.fx as fx
from torch import nn

from .builder import iter_layouts
from .layout import Layout

if TYPE_CHECKING:
    from .core import ChannelGraph

__all__ = ["Activation", "Layer", "layers", "activations", "op_macs"]

# ops that only re-index a tensor: no work of their own
_VIEWS = {"view", "reshape", "flatten", "permute", "transpose", "unsqueeze", "squeeze",
          "expand", "getitem", "size", "chunk", "split", "unbind", "t", "narrow", "unflatten",
          "expand_as", "view_as", "dim", "Identity", "Dropout", "dropout"}


@dataclass(frozen=True)
class Layer:
    """One call of a conv or linear module: ``module`` (qualified name) of ``kind``
    ``"conv"`` or ``"linear"``, its input and output shapes for the example inputs, and
    the unit of each input and output channel (None where the channels are not tracked:
    an image's colour channels, a fixed width)."""

    node: str
    module: str
    kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    in_units: np.ndarray | None
    out_units: np.ndarray | None


@dataclass(frozen=True)
class Activation:
    """The output of one other op (a norm, an activation, an add, a pooling, a matmul):
    ``coeff`` elements per kept element of every factor (the output's size is ``coeff *
    prod(kept(f) for f in factors)``; ``factors``: units per element of each tracked
    block)."""

    node: str
    op: str
    coeff: int
    factors: tuple[np.ndarray, ...]


def _channel_units(graph: "ChannelGraph", lay: Any, dim: int) -> np.ndarray | None:
    if not isinstance(lay, Layout) or not lay.shape:
        return None
    blk = lay.block_at(dim)
    if blk is None or blk.dims != (dim % len(lay.shape),):
        return None
    return graph.unit_of[blk.ids.ravel()]


def layers(graph: "ChannelGraph") -> list[Layer]:
    """The conv/linear module calls of ``graph.traced``, in execution order."""
    layouts = graph._b.layouts
    out = []
    for node in graph.traced.graph.nodes:
        if node.op != "call_module":
            continue
        mod = graph.traced.get_submodule(str(node.target))
        kind = "conv" if isinstance(mod, nn.modules.conv._ConvNd) and not mod.transposed \
            else "linear" if isinstance(mod, nn.Linear) else None
        arg = node.args[0] if node.args else None
        in_shape, out_shape = _shape(arg), _shape(node)
        if kind is None or in_shape is None or out_shape is None:
            continue
        dim = 1 if kind == "conv" else -1
        out.append(Layer(node.name, str(node.target), kind, in_shape, out_shape,
                         _channel_units(graph, layouts.get(arg), dim),
                         _channel_units(graph, layouts.get(node), dim)))
    return out


def activations(graph: "ChannelGraph") -> list[Activation]:
    """Every op of ``graph.traced`` other than the conv/linear calls and pure views whose
    output the engine tracks, with its size as a product of kept channel counts."""
    layer_nodes = {lay.node for lay in layers(graph)}
    out = []
    for node in graph.traced.graph.nodes:
        if node.op not in ("call_function", "call_method", "call_module") or \
                node.name in layer_nodes or _op_name(graph, node) in _VIEWS:
            continue
        for lay in iter_layouts(graph._b.layouts.get(node)):
            if not lay.blocks:
                continue
            tracked = {d for b in lay.blocks for d in b.dims}
            coeff = int(np.prod([s for d, s in enumerate(lay.shape) if d not in tracked]))
            out.append(Activation(node.name, _op_name(graph, node), coeff,
                                  tuple(graph.unit_of[b.ids.ravel()] for b in lay.blocks)))
    return out


def op_macs(graph: "ChannelGraph") -> list[Activation]:
    """The multiply-accumulates of every op other than the conv/linear calls (matmuls,
    attention, einsums): one record per cost term, ``coeff * prod(kept(f))`` MACs, with
    the op named as in :func:`activations`."""
    layer_nodes = {lay.node for lay in layers(graph)}
    nodes = {n.name: n for n in graph.traced.graph.nodes}
    out = []
    for t in graph._b.terms:
        node = nodes.get(t.node)
        if node is None or node.name in layer_nodes:
            continue
        out.append(Activation(node.name, _op_name(graph, node), int(t.coeff),
                              tuple(graph.unit_of[f] for f in t.factors)))
    return out


def _shape(node: Any) -> tuple[int, ...] | None:
    s = node.meta.get("pk_shape") if isinstance(node, fx.Node) else None
    return s if isinstance(s, tuple) and all(isinstance(v, int) for v in s) else None


def _op_name(graph: "ChannelGraph", node: fx.Node) -> str:
    if node.op == "call_module":
        return type(graph.traced.get_submodule(str(node.target))).__name__
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))
