"""Walks an fx graph, applies one rule per op, and records everything surgery and cost need.

Rules live in ``rules_*.py`` and register themselves here. A rule receives the
builder and the node, reads its inputs' layouts with :meth:`Builder.layout`,
and returns the node's output layout (a :class:`Layout`, a tuple of them, or
None for non-tensors). Rules record:

- ``new``: a block of fresh elements (a producer's output channels);
- ``uf.union*``: couplings;
- ``freeze``: elements that must never be removed, with the reason;
- ``record``: which element each index of a parameter/buffer dim belongs to;
- ``macs``: a cost term, coefficient times kept sizes of some dims;
- ``fix``: a module whose attributes (in_channels, ...) follow its new weights;
- ``patch``: a functional constant (pad widths) to rewrite.
"""

from __future__ import annotations

import fnmatch
import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .entries import CostTerm, Follow, Patch, Producer, Source, Stat  # noqa: F401
from .layout import Block, Layout, UnionFind, untracked
from .trace import module_stack

_INT_OPS = (operator.add, operator.sub, operator.mul, operator.floordiv, operator.mod,
            operator.neg)
Rule = Callable[["Builder", fx.Node, Any], Any]
MODULE_RULES: list[tuple[type, Rule]] = []
FUNCTION_RULES: dict[Any, Rule] = {}
METHOD_RULES: dict[str, Rule] = {}


from .attrs import SIZE_ATTRIBUTES, size_attributes  # noqa: F401  (public here too)


def module_rule(*types: type) -> Callable[[Rule], Rule]:
    def deco(fn: Rule) -> Rule:
        for t in types:
            MODULE_RULES.append((t, fn))
        return fn
    return deco


def function_rule(*targets: Any) -> Callable[[Rule], Rule]:
    def deco(fn: Rule) -> Rule:
        for t in targets:
            FUNCTION_RULES[t] = fn
        return fn
    return deco


def method_rule(*names: str) -> Callable[[Rule], Rule]:
    def deco(fn: Rule) -> Rule:
        for n in names:
            METHOD_RULES[n] = fn
        return fn
    return deco


@dataclass
class Builder:
    root: nn.Module
    ignore: tuple[str, ...] = ()
    protect_outputs: bool = True
    uf: UnionFind = field(default_factory=UnionFind)
    sources: list[Source] = field(default_factory=list)
    reasons: dict[int, list[str]] = field(default_factory=dict)
    slices: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    fixes: dict[str, str] = field(default_factory=dict)
    terms: list[CostTerm] = field(default_factory=list)
    patches: list[Patch] = field(default_factory=list)
    layouts: dict[fx.Node, Any] = field(default_factory=dict)
    count_cost: bool = True
    mode: str = "eval"
    freeze_normalised: bool = False
    stats: dict[str, Stat] = field(default_factory=dict)
    follows: list[Follow] = field(default_factory=list)
    attention: list[tuple[np.ndarray, np.ndarray | None]] = field(default_factory=list)
    whole_groups: frozenset[str] = frozenset()   # grouped convs that lose whole conv groups
    grouped: dict[str, tuple[np.ndarray | None, int, np.ndarray, int]] = field(
        default_factory=dict)    # column-wise grouped convs: (ids_in, cin_g, ids_out, cout_g)

    def __post_init__(self) -> None:
        self._by_name: dict[str, fx.Node] | None = None
        self._leaf_owned: set[str] = set()
        self._node = ""    # the node being visited, recorded with the cost terms it adds
        self._param_names = {n for n, _ in self.root.named_parameters(remove_duplicate=False)}

    # ----------------------------------------------------------------- recording
    def new(self, name: str, n: int, kind: str) -> np.ndarray:
        ids = self.uf.make(n)
        self.sources.append(Source(name, ids, kind))
        hit = [p for p in self.ignore if fnmatch.fnmatchcase(name, p)]
        if hit:
            self.freeze(ids, f"'{name}' matches ignore pattern '{hit[0]}'")
        return ids

    def freeze(self, ids: np.ndarray | None, reason: str) -> None:
        if ids is None:
            return
        for e in np.asarray(ids).ravel().tolist():
            lst = self.reasons.setdefault(e, [])
            if len(lst) < 3 and reason not in lst:
                lst.append(reason)

    def freeze_layout(self, value: Any, reason: str) -> None:
        for lay in iter_layouts(value):
            for b in lay.blocks:
                self.freeze(b.ids, reason)

    def record(self, fqn: str, dim: int, ids: np.ndarray) -> None:
        key = (fqn, dim)
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if key in self.slices:
            self.uf.union_arrays(self.slices[key], ids)
        else:
            self.slices[key] = ids

    def macs(self, coeff: int, factors: list[np.ndarray | None], where: str) -> None:
        if not self.count_cost:
            return
        kept: list[np.ndarray] = []
        for f in factors:
            if f is not None:
                kept.append(np.asarray(f, dtype=np.int64).ravel())
        self.terms.append(CostTerm(int(coeff), tuple(kept), where, self._node))

    def fix(self, fqn: str, kind: str) -> None:
        self.fixes[fqn] = kind

    def stat(self, node: fx.Node, kind: str, dim: int, ids: np.ndarray) -> None:
        """Record that ``node`` normalises over ``ids`` along ``dim`` (eval graph only)."""
        if self.mode == "eval":
            self.stats[node.name] = Stat(kind, dim, np.asarray(ids))

    def follow(self, fqn: str, attr: str, ids: np.ndarray, index: int | None = None,
               per: int = 1) -> None:
        """Surgery sets ``fqn.attr`` to the kept count of ``ids`` (// ``per``). An attribute
        followed from two places keeps one value: equal lines are coupled position by
        position, unequal ones freeze."""
        ids = np.asarray(ids).ravel()
        for f in self.follows:
            if f.fqn == fqn and f.attr == attr and f.index == index:
                if len(f.ids) == len(ids) and f.per == per:
                    self.uf.union_arrays(f.ids, ids)
                else:
                    why = f"attribute {fqn}.{attr} sizes two different widths"
                    self.freeze(f.ids, why)
                    self.freeze(ids, why)
                return
        self.follows.append(Follow(fqn, attr, index, ids, per))

    # ------------------------------------------------------------------- reading
    def layout(self, arg: Any) -> Any:
        if isinstance(arg, fx.Node):
            return self.layouts.get(arg)
        return None

    def shape(self, node: fx.Node) -> tuple[int, ...] | None:
        s = node.meta.get("pk_shape")
        return s if isinstance(s, tuple) and all(isinstance(v, int) for v in s) else None

    def size_sources(self, v: Any) -> set[tuple[fx.Node, int]] | None:
        """The (tensor node, dim) pairs a computed size was read from; None if unknown."""
        from .record import SizeInt
        if isinstance(v, SizeInt):
            out = set()
            for name, d in v.src:
                if self._by_name is None or name not in self._by_name:
                    self._by_name = {n.name: n for n in self.layouts}
                n = self._by_name.get(name)
                if n is None:
                    return None
                out.add((n, d))
            return out
        if not isinstance(v, fx.Node):
            return set()
        if v.op == "call_method" and v.target == "size" and len(v.args) > 1:
            return {(v.args[0], v.args[1])}
        if v.target is operator.getitem and isinstance(v.args[0], fx.Node):
            base = v.args[0]
            if isinstance(v.args[1], int) and (
                    (base.target is getattr and base.args[1] == "shape") or
                    (base.op == "call_method" and base.target == "size" and len(base.args) == 1)):
                return {(base.args[0], v.args[1])}
        if v.op == "call_function" and v.target in _INT_OPS:
            out = set()
            for a in v.args:
                more = self.size_sources(a)
                if more is None:
                    return None
                out |= more
            return out
        return None

    def where(self, node: fx.Node) -> str:
        """A readable location: op and innermost module."""
        stack = module_stack(node)
        owner = stack[-1] if stack else "<root>"
        tgt = node.target if isinstance(node.target, str) else getattr(
            node.target, "__name__", str(node.target))
        return f"{node.op} '{tgt}' (node {node.name}) in module '{owner}'"

    # ------------------------------------------------------------------ running
    def run(self, gm: Any) -> None:
        from .optional import torchvision_leaves
        torchvision_leaves()  # registers torchvision's rules if the model may use them
        self._by_name = None
        # parameters of layers called whole belong to their layer's rule, not to a get_attr
        # that reads them for another reason (``self.proj.weight.device``)
        self._leaf_owned = {str(n.target) for n in gm.graph.nodes if n.op == "call_module"}
        for node in gm.graph.nodes:
            self._node = node.name
            self.layouts[node] = self._visit(gm, node)
        self._node = ""

    def _visit(self, gm: Any, node: fx.Node) -> Any:
        if node.op == "placeholder":
            shape = self.shape(node)
            return untracked(shape) if shape is not None else None
        if node.op == "get_attr":
            return self._get_attr(gm, node)
        if node.op == "output":
            if self.protect_outputs:
                self._freeze_args(node.args, "model output (protected)")
            return None
        fn, mod = None, None
        if node.op == "call_module":
            mod = gm.get_submodule(str(node.target))
            fn = next((f for t, f in MODULE_RULES if isinstance(mod, t)), None)
        elif node.op == "call_function":
            fn = FUNCTION_RULES.get(node.target)
        elif node.op == "call_method":
            fn = METHOD_RULES.get(str(node.target))
        if fn is None:
            return self.unknown(node)
        try:
            return fn(self, node, mod)
        except (TypeError, ValueError, IndexError, KeyError, AttributeError) as exc:
            # a rule meeting a form of its op it does not handle: refuse, never crash
            return self.unknown(node, f"is a form of the op its rule does not handle "
                                      f"({type(exc).__name__}: {exc})")

    def _freeze_args(self, arg: Any, reason: str) -> None:
        if isinstance(arg, fx.Node):
            self.freeze_layout(self.layouts.get(arg), reason)
        elif isinstance(arg, (tuple, list)):
            for a in arg:
                self._freeze_args(a, reason)
        elif isinstance(arg, dict):
            for a in arg.values():
                self._freeze_args(a, reason)

    def _get_attr(self, gm: Any, node: fx.Node) -> Any:
        shape = self.shape(node)
        if shape is None:
            return None
        fqn = str(node.target)
        dtype = node.meta.get("pk_dtype")
        if fqn not in self._param_names or dtype is None or not dtype.is_floating_point or \
                fqn.rpartition(".")[0] in self._leaf_owned:
            # buffers (rotary frequencies, fixed position tables), index tensors and
            # fx-made constants are fixed-size operands; per-channel buffers of layers
            # (batch-norm statistics) are recorded by their layer's rule instead
            return untracked(shape)
        blocks = []
        for d, s in enumerate(shape):
            if s > 1:
                ids = self.new(f"{fqn}:dim{d}", s, "param")
                self.record(fqn, d, ids)
                blocks.append(Block((d,), ids))
        return Layout(shape, tuple(blocks))

    def unknown(self, node: fx.Node, why: str = "is not understood by prunekit") -> Any:
        """An op no rule covers: freeze every tracked input; the output is untracked.

        Its cost no longer depends on the plan; what the capture measured for it
        (``pk_flops``, FlopCounterMode on that op alone) is a constant cost term."""
        flops = node.meta.get("pk_flops")
        if flops:
            self.macs(int(flops) // 2, [], self.where(node))
        tensor_in = False
        for a in node.all_input_nodes:
            lay = self.layouts.get(a)
            for l in iter_layouts(lay):
                tensor_in = True
                if l.blocks:
                    self.freeze_layout(l, f"{self.where(node)} {why}")
        return untracked_like(node.meta.get("pk_shape")) if tensor_in or node.meta.get(
            "pk_dtype") is not None else None


# ops FlopCounterMode counts: always measured at capture, so a rule that gives up on one
# (falls back to ``unknown``) still accounts for its cost
_FLOP_OPS = {torch.matmul, torch.bmm, torch.mm, torch.einsum, torch.addmm, torch.baddbmm,
             F.linear, F.conv1d, F.conv2d, F.conv3d, F.scaled_dot_product_attention,
             operator.matmul, "matmul", "bmm", "mm", "addmm", "baddbmm"}


_TYPE_CACHE: dict[tuple[type, int], tuple[bool, bool]] = {}


def _type_info(cls: type) -> tuple[bool, bool]:
    """(a module rule covers cls, one covers it with its own forward): cached per type."""
    key = (cls, len(MODULE_RULES))
    if key not in _TYPE_CACHE:
        hits = [t for t, _ in MODULE_RULES if issubclass(cls, t)]
        _TYPE_CACHE[key] = (bool(hits), any(cls.forward is t.forward for t in hits))
    return _TYPE_CACHE[key]


def has_module_rule(cls: type) -> bool:
    return _type_info(cls)[0]


def is_rule_leaf(cls: type) -> bool:
    """A rule covers the type and the type keeps that rule's forward: keep it whole."""
    return _type_info(cls)[1]


def needs_measuring(op: str, target: Any, root: Any = None) -> bool:
    """Whether the capture measures this op's FLOPs: no rule covers it, or it is an op
    FlopCounterMode counts (its rule may still give up on it)."""
    return not _cost_from_rule(op, target, root)


def _cost_from_rule(op: str, target: Any, root: Any = None) -> bool:
    try:
        if op != "call_module" and target in _FLOP_OPS:
            return False
    except TypeError:
        pass
    if op == "call_module":
        mod = root.get_submodule(str(target)) if root is not None else target
        return has_module_rule(type(mod))
    if op == "call_function":
        try:
            return target in FUNCTION_RULES
        except TypeError:
            return False
    if op == "call_method":
        return str(target) in METHOD_RULES
    return True


def iter_layouts(value: Any):
    if isinstance(value, Layout):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from iter_layouts(v)


def untracked_like(shape: Any) -> Any:
    if shape is None:
        return None
    if isinstance(shape, tuple) and all(isinstance(v, int) for v in shape):
        return untracked(shape)
    if isinstance(shape, tuple):
        return tuple(untracked_like(s) for s in shape)
    return None
