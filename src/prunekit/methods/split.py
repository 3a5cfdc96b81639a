"""Divide a network into sub-networks at single-tensor cut points, and run one of them.

A *cut point* is a node of the (eval-mode) graph after which exactly one value is
still needed: its own output. Between consecutive chosen cuts lies a sub-network
that maps one tensor to one tensor, so it can be evaluated (and trained) on its
own, on the features the original network produces at its input. A group is
*local* to a sub-network when every node that carries its channels lies inside it;
groups that cross a cut (a residual stream through zero-padded shortcuts, for
example) are not searched per sub-network and stay whole.
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from ..errors import TargetError
from ..graph import ChannelGraph


@dataclass(frozen=True)
class Segment:
    index: int
    start: int          # node index of the input value (a cut, or the placeholder)
    stop: int           # node index of the output value (a cut, or the output's argument)
    groups: tuple[str, ...]


def cut_points(graph: ChannelGraph) -> tuple[list[fx.Node], list[int]]:
    """All nodes and the indices of single-tensor cut points, in execution order."""
    nodes = list(graph.traced.graph.nodes)
    pos = {n: i for i, n in enumerate(nodes)}
    tensors = [n for n in nodes if n.op == "placeholder" and graph.value_kind(n) == "tensor"]
    if len(tensors) != 1:
        raise TargetError("sub-network division needs a model with exactly one tensor input, "
                          f"got {len(tensors)}: {', '.join(n.name for n in tensors)}")
    # the other inputs (attn_mask=None, a flag) are constants, available everywhere: they
    # do not keep a cut from being one
    constant = {pos[n] for n in constant_inputs(graph)}
    last = [max([pos[u] for u in n.users], default=i) for i, n in enumerate(nodes)]
    cuts, live = [], set()
    for i, n in enumerate(nodes):
        live.add(i)
        live = {j for j in live if last[j] > i and j not in constant}
        if n.op != "output" and live == {i} and graph.value_kind(n) == "tensor":
            cuts.append(i)
    return nodes, cuts


def constant_inputs(graph: ChannelGraph) -> dict[fx.Node, object]:
    """The model's inputs that are not tensors the engine follows, with the value the
    capture gave them (their default): ``attn_mask=None``, ``is_causal=False``."""
    return {n: (n.args[0] if n.args else None) for n in graph.traced.graph.nodes
            if n.op == "placeholder" and graph.value_kind(n) != "tensor"}


def output_node(graph: ChannelGraph) -> fx.Node:
    """Where the last sub-network ends: the node of the model's one tensor output (the
    output itself, or the one tensor in an output record such as Hugging Face's
    ``ModelOutput(logits=...)``), else the output node (a detector's several outputs:
    the last sub-network then returns the whole output structure)."""
    from torch.utils._pytree import tree_flatten
    last = list(graph.traced.graph.nodes)[-1]
    leaves, _ = tree_flatten(last.args[0])
    tensors = [n for n in leaves if isinstance(n, fx.Node) and graph.value_kind(n) == "tensor"]
    return tensors[0] if len(tensors) == 1 else last


def split(graph: ChannelGraph, parts: int, group_ids: list[str]) -> list[Segment]:
    """``parts`` consecutive sub-networks of about equal MACs (a ResNet's stages), each
    with the groups local to it."""
    nodes, cuts = cut_points(graph)
    out = output_node(graph)
    end = nodes.index(out)
    cuts = [c for c in cuts if c < end]
    pos = {n.name: i for i, n in enumerate(nodes)}
    macs = np.zeros(len(nodes))
    for name, m in graph.node_macs().items():
        if name in pos:
            macs[pos[name]] += m
    cum = np.cumsum(macs)
    chosen = [cuts[0]]
    for p in range(1, parts):
        goal = cum[end] * p / parts
        best = min(cuts, key=lambda c: abs(cum[c] - goal))
        if best > chosen[-1]:
            chosen.append(best)
    bounds = chosen + [end]
    span = _spans(graph, nodes, group_ids)
    segs = []
    for s in range(len(bounds) - 1):
        lo, hi = bounds[s], bounds[s + 1]
        local = tuple(g for g, (a, b) in span.items() if lo < a and b <= hi)
        segs.append(Segment(s, lo, hi, local))
    return segs


def _spans(graph: ChannelGraph, nodes: list[fx.Node], ids: list[str]) -> dict[str, tuple]:
    """First and last node index carrying each group's channels."""
    pos = {n: i for i, n in enumerate(nodes)}
    member = {}
    for gid in ids:
        m = np.zeros(graph.n_units, dtype=bool)
        m[graph.group(gid).units] = True
        member[gid] = m
    span: dict[str, list[int]] = {}
    for node, u in graph.node_units().items():
        for gid, m in member.items():
            if m[u].any():
                i = pos[node]
                lo, hi = span.get(gid, [i, i])
                span[gid] = [min(lo, i), max(hi, i)]
    return {g: tuple(v) for g, v in span.items()}


class Runner:
    """Runs the nodes of one segment of the graph on a given input value, optionally with
    removed channels zeroed (the engine's masked reference: equal to the pruned model)."""

    def __init__(self, graph: ChannelGraph, root: nn.Module, keep: np.ndarray | None = None):
        self.nodes = list(graph.traced.graph.nodes)
        keep = np.ones(graph.n_units, dtype=bool) if keep is None else keep
        self.ref = graph.masked_reference(keep, root)
        self.root = self.ref.root       # the reference's own (zeroed) copy of the weights
        self.constants = constant_inputs(graph)

    def run(self, seg: Segment, x: torch.Tensor, grad: bool = False) -> Any:
        """The segment's output on ``x`` (a tensor; the model's output structure for the
        last segment of a model with several outputs)."""
        return self.ref.run_nodes(self.nodes[seg.start + 1: seg.stop + 1],
                                  {**self.constants, self.nodes[seg.start]: x}, grad)

    def recalibrate(self, seg: Segment, inputs: list[torch.Tensor]) -> None:
        """Re-estimate the running statistics of the segment's batch norms on ``inputs``."""
        bns = []
        for node in self.nodes[seg.start + 1: seg.stop + 1]:
            if node.op == "call_module":
                mod = self.root.get_submodule(node.target)
                if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.track_running_stats:
                    bns.append(mod)
        if not bns:
            return
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None        # cumulative average over the calibration batches
            bn.train()
        try:
            for x in inputs:
                self.run(seg, x)
        finally:
            for bn in bns:
                bn.eval()


def features(graph: ChannelGraph, model: nn.Module, segments: list[Segment],
             batches: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """The original network's value at every segment boundary, per batch:
    ``out[s][b]`` is segment s's input on batch b; ``out[len(segments)]`` the output."""
    runner = Runner(graph, model)
    feats = [list(batches)]
    for seg in segments:
        feats.append([runner.run(seg, x) for x in feats[-1]])
    return feats
