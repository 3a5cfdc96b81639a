"""Which layers read a group's channels, and whether reweighting them is exact.

A group is *closed* when every path from its channels ends at the input of a
conv/linear consumer (groups=1), passing only through one-input ops (batch norm,
activations, pooling, flatten, a depthwise conv, ...). Then the change a removal
makes is all in the consumers' inputs, which is what the least-squares
objective measures and what reweighting corrects. A group is *open* when its
channels also reach an addition, a concatenation, a multiplication or the model
output (a residual stream, for example): the consumers see only part of the
change, so selection is weaker and reweighting is not offered.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from ..graph import ChannelGraph
from .lsq import is_consumer, taps

@dataclass(frozen=True)
class Consumer:
    """A layer that reads the group: ``col_unit[c]`` is the local unit index of input
    column c (-1: the column belongs to another group or is never removed)."""

    name: str
    col_unit: np.ndarray
    taps: int = 1        # columns per input channel (kernel area; 1 for linear layers)

    def unit_cols(self, n_units: int) -> list[np.ndarray]:
        return [np.nonzero(self.col_unit == u)[0] for u in range(n_units)]

    @property
    def fixed(self) -> np.ndarray:
        return np.nonzero(self.col_unit < 0)[0]


@dataclass(frozen=True)
class GroupInfo:
    gid: str
    consumers: tuple[Consumer, ...]
    closed: bool
    reason: str          # why the group is open ("" when closed)
    position: int        # execution order of its first consumer


def analyse(graph: ChannelGraph, group_ids: list[str]) -> list[GroupInfo]:
    """Consumers and closedness of each group, sorted by execution order."""
    traced = graph.traced
    nodes = list(traced.graph.nodes)
    pos = {n: i for i, n in enumerate(nodes)}
    units_of = graph.node_units()
    infos = []
    for gid in group_ids:
        g = graph.group(gid)
        local = {int(u): i for i, u in enumerate(g.units)}
        member = np.zeros(graph.n_units, dtype=bool)
        member[g.units] = True
        carrying = {n for n, us in units_of.items() if member[us].any()}
        consumers: dict[str, Consumer] = {}
        reason = ""
        first = len(nodes)
        for n in sorted(carrying, key=pos.__getitem__):
            for user in n.users:
                mod = traced.root.get_submodule(user.target) if user.op == "call_module" else None
                if mod is not None and is_consumer(mod) and user.args and user.args[0] is n:
                    if user.target not in consumers:
                        consumers[user.target] = _consumer(graph, user.target, mod, g.prunable,
                                                           local)
                    first = min(first, pos[user])
                    continue
                tensor_inputs = [a for a in user.all_input_nodes
                                 if graph.value_kind(a) == "tensor"]
                if user in carrying and len(tensor_inputs) == 1:
                    continue
                if user.op != "output" and user not in carrying and \
                        graph.value_kind(user) is None:
                    continue  # a shape query (x.size(0), x.shape), not a use of the values
                if not reason:
                    what = user.target if user.op != "call_function" else \
                        getattr(user.target, "__name__", str(user.target))
                    reason = f"channels reach {user.op} {what!s} (node {user.name})"
        if not consumers and not reason:
            reason = "no conv/linear layer reads these channels"
        infos.append(GroupInfo(gid, tuple(consumers.values()), not reason, reason, first))
    return sorted(infos, key=lambda i: i.position)


def _consumer(graph: ChannelGraph, name: str, mod: nn.Module, prunable: np.ndarray,
              local: dict[int, int]) -> Consumer:
    units = graph.slices.get((f"{name}.weight", 1))
    if units is None:
        raise RuntimeError(f"the graph recorded no input slice for {name}")
    loc = np.array([local.get(int(u), -1) for u in units], dtype=np.int64)
    loc = np.where((loc >= 0) & prunable[np.maximum(loc, 0)], loc, -1)
    return Consumer(name, np.repeat(loc, taps(mod)), taps(mod))
