"""ChannelGraph: groups of coupled channels of a model, their cost, and surgery."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import PlanError, PlanMismatchError
from ..plan import Plan
from . import (attention, rules_extra, rules_index, rules_layers, rules_norm,  # noqa: F401
               rules_reduce, rules_reshape, rules_sdpa, rules_shape)
from .builder import Builder, Source
from .layout import UnionFind
from .trace import Inputs, as_inputs, trace_modes


@dataclass(frozen=True)
class Group:
    """Channels that must be removed together, as an ordered list of units.

    A unit is one removable channel of the group; it may span several tensor
    channels (a depthwise conv's input and output, the same local index of every
    conv group, a whole attention head).
    """

    id: str
    kind: str
    units: np.ndarray          # global unit indices, in channel order
    prunable: np.ndarray       # bool per unit
    reasons: tuple[str, ...]   # why units are frozen
    members: tuple[str, ...]   # "param:dim" touched by the group

    @property
    def width(self) -> int:
        return len(self.units)

    @property
    def n_prunable(self) -> int:
        return int(self.prunable.sum())

    @property
    def frozen(self) -> bool:
        return self.n_prunable == 0


def fingerprint(model: nn.Module) -> str:
    h = hashlib.sha256(type(model).__name__.encode())
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        h.update(f"{name}:{tuple(t.shape)};".encode())
    return h.hexdigest()[:16]


class ChannelGraph:
    """Build once per model architecture with :meth:`build`; then cost, apply, explain."""

    def __init__(self, builder: Builder, graphs: list, model_fingerprint: str,
                 min_width: int = 1) -> None:
        self._b = builder
        self.graphs = graphs
        self.fingerprint = model_fingerprint
        uf: UnionFind = builder.uf
        roots = uf.roots(np.arange(len(uf.parent), dtype=np.int64))
        uniq, self.unit_of = np.unique(roots, return_inverse=True)
        self.n_units = len(uniq)
        self.unit_frozen = np.zeros(self.n_units, dtype=bool)
        self.unit_reasons: dict[int, list[str]] = {}
        for e, rs in builder.reasons.items():
            self._freeze_unit(int(self.unit_of[e]), rs)
        self._freeze_whole_dims(builder.slices)
        self.groups: list[Group] = self._make_groups(builder.sources)
        self._by_id = {g.id: g for g in self.groups}
        self.slices = {k: self.unit_of[v] for k, v in builder.slices.items()}
        self.min_width = min_width
        from .cost import CostModel
        self._cost = CostModel(self, builder)
        self.inputs: Inputs | None = None
        self.options: dict[str, Any] = {}

    # ------------------------------------------------------------------- build
    @classmethod
    def build(cls, model: nn.Module, example_inputs: Any,
              ignore: Sequence[str] = (), protect_outputs: bool = True,
              capture: str = "auto", freeze_normalised: bool = False) -> "ChannelGraph":
        """Capture ``model`` on ``example_inputs`` and find its groups of coupled channels.

        ``example_inputs``: a tensor, a tuple of positional arguments, or a dict of
        keyword arguments (``{"input_ids": ..., "attention_mask": ...}``).
        ``ignore``: fnmatch patterns of module names whose output channels are kept.
        ``protect_outputs``: keep every channel of the model's outputs (classifier rows).
        ``capture``: ``"fx"`` (symbolic tracing), ``"record"`` (one eager forward pass), or
        ``"auto"`` (fx where it works, else record).
        ``freeze_normalised``: keep channels that a LayerNorm/RMSNorm/GroupNorm (or a mean
        or variance over channels) normalises; by default they prune, the statistics
        taken over the kept channels.
        """
        inputs = as_inputs(example_inputs)
        graphs = trace_modes(model, inputs, capture)
        fp = fingerprint(model)

        def attempt(whole: frozenset[str]) -> "ChannelGraph":
            builder = Builder(model, tuple(ignore), protect_outputs,
                              freeze_normalised=freeze_normalised, whole_groups=whole)
            for mode, gm in graphs:
                builder.count_cost = mode == "eval"
                builder.mode = mode
                builder.layouts = {}
                builder.run(gm)
                if mode == "eval":
                    eval_layouts = builder.layouts
            builder.layouts = eval_layouts
            return cls(builder, graphs, fp)
        graph = attempt(frozenset())
        merged = graph._merged_grouped_convs()
        if merged:          # columns coupled away: try losing whole conv groups there
            other = attempt(merged)
            if other._prunable_channels() > graph._prunable_channels():
                graph = other
        graph.inputs = inputs
        graph.options = {"ignore": list(ignore), "protect_outputs": protect_outputs,
                         "capture": graphs[0][1].capture, "freeze_normalised": freeze_normalised}
        return graph

    def _prunable_channels(self) -> int:
        """How many channels (over every layer) lie in units that may go."""
        return int((~self.unit_frozen[self.unit_of]).sum())

    def _merged_grouped_convs(self) -> frozenset[str]:
        """Grouped convs pruned column-wise (the same local index in every group) whose
        columns another coupling merged (fewer units than columns among their inputs or
        outputs)."""
        def merged(ids: np.ndarray | None, per: int) -> bool:
            return ids is not None and len(np.unique(self.unit_of[ids])) < per
        return frozenset(fqn for fqn, (ids_in, cin_g, ids_out, cout_g) in self._b.grouped.items()
                         if merged(ids_in, cin_g) or merged(ids_out, cout_g))

    def _freeze_whole_dims(self, slices: dict) -> None:
        """A unit holding every channel of a weight's dim cannot go: the layer would be
        left with no channels there."""
        for (fqn, dim), ids in slices.items():
            units = self.unit_of[ids]
            if len(units) and (units == units[0]).all():
                self._freeze_unit(int(units[0]), [f"holds every channel of {fqn} (dim {dim})"])

    def _freeze_unit(self, u: int, reasons: Sequence[str]) -> None:
        """Mark unit ``u`` frozen, keeping up to four distinct reasons."""
        self.unit_frozen[u] = True
        lst = self.unit_reasons.setdefault(u, [])
        lst.extend(r for r in reasons if r not in lst and len(lst) < 4)

    def _make_groups(self, sources: list[Source]) -> list[Group]:
        parent = list(range(len(sources)))

        def find(x: int) -> int:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        first = np.full(self.n_units, -1, dtype=np.int64)
        for s, src in enumerate(sources):
            for u in np.unique(self.unit_of[src.ids]).tolist():
                if first[u] < 0:
                    first[u] = s
                else:
                    a, b = find(s), find(int(first[u]))
                    if a != b:
                        parent[max(a, b)] = min(a, b)
        members: dict[int, list[int]] = {}
        for s in range(len(sources)):
            members.setdefault(find(s), []).append(s)
        slice_units: dict[int, list[str]] = {}
        for (fqn, dim), ids in self._b.slices.items():
            u = int(self.unit_of[ids[0]]) if len(ids) else -1
            slice_units.setdefault(u, []).append(f"{fqn}:{dim}")
        groups, seen = [], set()
        for root, idxs in sorted(members.items()):
            units = np.unique(np.concatenate([self.unit_of[sources[i].ids] for i in idxs]))
            name = sources[idxs[0]].name
            gid, k = name, 1
            while gid in seen:
                k += 1
                gid = f"{name}#{k}"
            seen.add(gid)
            reasons: list[str] = []
            for u in units.tolist():
                for r in self.unit_reasons.get(u, []):
                    if r not in reasons and len(reasons) < 6:
                        reasons.append(r)
            mem = sorted({m for u in units.tolist() for m in slice_units.get(u, [])})
            groups.append(Group(gid, sources[idxs[0]].kind, units, ~self.unit_frozen[units],
                                tuple(reasons), tuple(mem)))
        return groups

    # ------------------------------------------------------------------- query
    def group(self, gid: str) -> Group:
        try:
            return self._by_id[gid]
        except KeyError:
            raise PlanError(f"no group {gid!r} in this graph") from None

    @property
    def prunable_groups(self) -> list[Group]:
        return [g for g in self.groups if not g.frozen]

    def full_plan(self, meta: dict | None = None) -> Plan:
        return Plan({}, self.fingerprint, meta or {})

    def make_plan(self, keep: dict[str, Sequence[int]], meta: dict | None = None) -> Plan:
        plan = Plan({k: tuple(sorted(int(i) for i in v)) for k, v in keep.items()},
                    self.fingerprint, meta or {})
        self.keep_mask(plan)
        return plan

    def plan_of_mask(self, keep: np.ndarray, meta: dict | None = None) -> Plan:
        """The (validated) plan of a bool keep flag per unit."""
        kept = {g.id: np.nonzero(keep[g.units])[0].tolist() for g in self.groups
                if not keep[g.units].all()}
        return self.make_plan(kept, meta)

    def keep_mask(self, plan: Plan) -> np.ndarray:
        """Validate ``plan`` and return a bool keep flag per unit."""
        if plan.fingerprint != self.fingerprint:
            raise PlanMismatchError(
                f"plan was made for a different model (fingerprint {plan.fingerprint}, this model "
                f"{self.fingerprint}); build the plan on this architecture")
        keep = np.ones(self.n_units, dtype=bool)
        for gid, idx in plan.keep.items():
            g = self.group(gid)
            arr = np.asarray(idx, dtype=np.int64)
            if len(arr) < 1:
                raise PlanError(f"group {gid!r}: a plan must keep at least one channel")
            if (np.diff(arr) <= 0).any() or arr.min() < 0 or arr.max() >= g.width:
                raise PlanError(f"group {gid!r}: kept indices must be sorted, unique and in "
                                f"[0, {g.width})")
            mask = np.zeros(g.width, dtype=bool)
            mask[arr] = True
            bad = ~mask & ~g.prunable
            if bad.any():
                raise PlanError(f"group {gid!r}: removes frozen channel(s) "
                                f"{np.nonzero(bad)[0][:5].tolist()}: "
                                f"{'; '.join(g.reasons[:2])}")
            keep[g.units] = mask
        self._check_nonempty(keep)
        return keep

    def _check_nonempty(self, keep: np.ndarray) -> None:
        """A plan may not remove every channel of a layer's dim (a group can hold several
        layers' channels, e.g. a stream with zero-padded shortcut channels)."""
        for (fqn, dim), units in self.slices.items():
            if len(units) and not keep[units].any():
                gid = next((g.id for g in self.groups if np.isin(units, g.units).any()), "?")
                raise PlanError(f"group {gid!r}: the plan removes every channel of {fqn} "
                                f"(dim {dim}); keep at least one of them")

    # -------------------------------------------------------------------- cost
    def cost(self, plan: Plan | None = None) -> "Cost":
        """Params and MACs of the model ``apply(plan)`` returns, for the example inputs."""
        from .cost import Cost
        keep = self.keep_mask(plan) if plan is not None else np.ones(self.n_units, dtype=bool)
        return Cost(self._cost.params(keep), self._cost.macs(keep))

    def cost_polynomial(self, metric: str = "macs") -> "CostPolynomial":
        """The engine's cost (``"macs"`` or ``"params"``) as a polynomial in the kept
        units of each factor (:class:`prunekit.graph.cost.CostPolynomial`), for methods
        that need a differentiable cost."""
        if metric not in ("macs", "params"):
            raise ValueError(f"metric must be 'macs' or 'params', got {metric!r}")
        return self._cost.polynomial(metric)

    def cost_of_mask(self, keep: np.ndarray) -> "Cost":
        """Like :meth:`cost` for a raw unit mask (no validation: for search loops)."""
        from .cost import Cost
        return Cost(self._cost.params(keep), self._cost.macs(keep))

    def layers_cost(self, group_ids: Sequence[str]) -> "Cost":
        """Params and MACs of the layers (parameters, cost terms) the given groups touch,
        at full width: the base of a target that counts only those layers."""
        from .cost import Cost
        units = np.zeros(self.n_units, dtype=bool)
        for gid in group_ids:
            units[self.group(gid).units] = True
        params, macs = self._cost.touching(units)
        return Cost(params, macs)

    # ----------------------------------------------------------------- surgery
    def apply(self, model: nn.Module, plan: Plan, inplace: bool = False,
              verify: bool = True) -> nn.Module:
        """The physically pruned model; the input model is untouched unless ``inplace``.

        ``verify`` (default): run the pruned model and the masked reference on the
        example inputs and raise :class:`VerificationError`, naming the group, when they
        differ or the pruned model fails; turn it off only inside search loops.
        """
        from .surgery import apply_plan
        from .verify import expected_outputs, verify_pruned
        if fingerprint(model) != self.fingerprint:
            raise PlanMismatchError("this model is not the architecture the graph was built on")
        keep = self.keep_mask(plan)
        expected = expected_outputs(self, model, plan) if verify and inplace else None
        pruned = apply_plan(self, model, keep, inplace)
        if verify:
            verify_pruned(self, model, plan, pruned, expected)
        return pruned

    def masked_reference(self, plan: Plan | np.ndarray, root: nn.Module | None = None,
                         snapshot: bool = True) -> nn.Module:
        """The original model with every removed channel zeroed at every op (eval graph),
        and normalised channels' statistics over the kept ones: what ``apply`` computes.

        ``plan``: a Plan, or a keep mask over the units (``n_units`` booleans, for search
        loops). ``root``: use this model's weights (same architecture) instead of the
        traced one's. The result also runs any stretch of the graph on its own
        (:meth:`prunekit.graph.masked.MaskedReference.run_nodes`)."""
        from .masked import MaskedReference
        if root is not None and fingerprint(root) != self.fingerprint:
            raise PlanMismatchError("root is not the architecture the graph was built on")
        if isinstance(plan, np.ndarray):
            if plan.shape != (self.n_units,) or plan.dtype != bool:
                raise PlanError(f"a keep mask must be {self.n_units} booleans, got "
                                f"{plan.dtype} of shape {plan.shape}")
            keep = plan
        else:
            keep = self.keep_mask(plan)
        return MaskedReference(self, keep, root, snapshot)

    # ------------------------------------------------------- the traced graph, for methods
    @property
    def traced(self) -> "fx.GraphModule":
        """The captured model (eval mode): the nodes every per-node query below refers to."""
        return self.graphs[0][1]

    @property
    def replay_batch(self) -> int | None:
        """The batch size :attr:`traced` and the masked reference run at: the example's for
        a graph recorded from one eager pass (its shapes are constants), None (any) for a
        symbolically traced one. Feed a recorded graph's reference in chunks of it."""
        if self.options.get("capture") != "record":
            return None
        tensors = self.inputs.tensors()
        return int(tensors[0].shape[0]) if tensors and tensors[0].dim() else None

    def value_kind(self, node: "fx.Node") -> str | None:
        """``"tensor"`` when the node's value is one tensor the engine follows, ``"tuple"``
        for several, ``None`` for anything else (a size, a shape query, a constant)."""
        from .layout import Layout
        value = self._b.layouts.get(node)
        if isinstance(value, Layout):
            return "tensor"
        return "tuple" if isinstance(value, tuple) else None

    def node_units(self) -> dict["fx.Node", np.ndarray]:
        """The units (sorted, unique) each node of :attr:`traced` carries in its value, for
        the nodes that carry any; computed once."""
        cached = self.__dict__.get("_node_units")
        if cached is None:
            from .builder import iter_layouts
            cached = {}
            for node in self.traced.graph.nodes:
                ids = [blk.ids.ravel() for lay in iter_layouts(self._b.layouts.get(node))
                       for blk in lay.blocks]
                if ids:
                    cached[node] = np.unique(self.unit_of[np.concatenate(ids)])
            self.__dict__["_node_units"] = cached
        return cached

    def producers(self) -> list["Producer"]:
        """Every block of elements the capture created, in creation order, with the unit of
        each element (:class:`~prunekit.graph.entries.Producer` records)."""
        from .entries import Producer
        return [Producer(s.name, s.kind, self.unit_of[s.ids]) for s in self._b.sources]

    def normalisations(self) -> list["Normalisation"]:
        """The layers of :attr:`traced` whose statistics run over prunable channels (a
        LayerNorm, RMSNorm, single-group GroupNorm, a mean over channels), each with its
        module, dim and units: where a method that masks channels must normalise over the
        kept ones to compute what the pruned model computes."""
        from .masked_stats import Normalisation
        nodes = {n.name: n for n in self.traced.graph.nodes}
        out = []
        for name, st in self._b.stats.items():
            node = nodes.get(name)
            module = str(node.target) if node is not None and node.op == "call_module" else None
            out.append(Normalisation(name, module, st.dim, st.kind, self.unit_of[st.ids]))
        return out

    def layers(self) -> list["Layer"]:
        """The conv/linear module calls of :attr:`traced` with their real shapes and the
        units of their channels (:class:`~prunekit.graph.profile.Layer` records): what a
        per-layer latency table measures."""
        from .profile import layers
        return layers(self)

    def activations(self) -> list["Activation"]:
        """Every other op's output size as a product of kept channel counts
        (:class:`~prunekit.graph.profile.Activation` records)."""
        from .profile import activations
        return activations(self)

    def op_macs(self) -> list["Activation"]:
        """The MACs of every op other than the conv/linear calls (matmuls, attention) as
        products of kept channel counts (:class:`~prunekit.graph.profile.Activation`
        records whose size is the MACs)."""
        from .profile import op_macs
        return op_macs(self)

    def node_macs(self) -> dict[str, int]:
        """MACs of each node of :attr:`traced` (by name) at full width, for the nodes that
        have any."""
        out: dict[str, int] = {}
        for t in self._b.terms:
            if t.node:
                out[t.node] = out.get(t.node, 0) + t.coeff * int(
                    np.prod([len(f) for f in t.factors]))
        return out

    def explain(self, show_frozen: bool = True) -> str:
        from .report import explain
        return explain(self, show_frozen)
