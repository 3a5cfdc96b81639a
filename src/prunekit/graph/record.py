"""Capture by recording one real forward pass (no symbolic tracing).

``torch.fx`` symbolic tracing fails on models with Python control flow over
tensors or shapes (much of timm, every Hugging Face transformer, Ultralytics
YOLO). This capture runs the model once, eagerly, under a
``TorchFunctionMode`` and forward hooks, and writes what it saw as an
``fx.Graph`` in exactly the conventions of a symbolic trace:

- leaf layers (those a module rule covers, with their own ``forward``) are one
  ``call_module`` node named by their qualified name; the ops inside them are
  not recorded;
- ``torch.*`` / ``F.*`` calls are ``call_function`` nodes with the same
  targets fx would use, tensor methods ``call_method`` nodes, operators
  ``operator.*``;
- parameters and buffers read in a forward are ``get_attr`` nodes;
- every node carries ``pk_shape``/``pk_dtype`` and ``nn_module_stack``.

So one set of op rules serves both captures. Sizes read from a tensor
(``x.shape``, ``x.size(d)``, ``len(x)``) are returned as :class:`SizeInt`,
an ``int`` that remembers the tensor dims it came from through arithmetic;
rules treat such a size as *computed* (it follows the pruned width at run
time), where a plain ``int`` is a constant of the model's code, exactly as a
symbolic trace distinguishes a size node from a literal.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from ..errors import ExampleInputError


class SizeInt(int):
    """An int read from a tensor's shape; ``src`` holds the (node name, dim) it depends on."""

    src: frozenset

    def __new__(cls, value: int, src: frozenset) -> "SizeInt":
        obj = super().__new__(cls, value)
        obj.src = src
        return obj

    def __reduce__(self):  # deepcopy/pickle as a plain int
        return (int, (int(self),))


def _size_op(name: str):
    base = getattr(int, name)

    def op(self: SizeInt, other: Any = None) -> Any:
        out = base(self) if other is None and name in ("__neg__", "__abs__", "__pos__") \
            else base(self, other)
        if isinstance(out, int) and not isinstance(out, bool) and out is not NotImplemented:
            return SizeInt(out, self.src | getattr(other, "src", frozenset()))
        return out
    return op


for _n in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__floordiv__",
           "__rfloordiv__", "__mod__", "__rmod__", "__neg__", "__abs__", "__pos__"):
    setattr(SizeInt, _n, _size_op(_n))


def is_computed(v: Any) -> bool:
    """True for a size the model's code reads from a tensor (not a literal constant)."""
    return isinstance(v, SizeInt) or isinstance(v, fx.Node)


def pk_constant(value: torch.Tensor) -> torch.Tensor:
    """Graph node for a tensor the recording did not see being made (a plain attribute)."""
    return value


def tensor_attr(x: torch.Tensor, name: str) -> torch.Tensor:
    """Graph node for a tensor-valued property (``x.T``, ``x.mT``, ``x.data``)."""
    return getattr(x, name)


_DUNDER = {"__add__": operator.add, "__iadd__": operator.iadd, "__sub__": operator.sub,
           "__isub__": operator.isub, "__mul__": operator.mul, "__imul__": operator.imul,
           "__truediv__": operator.truediv, "__itruediv__": operator.itruediv,
           "__floordiv__": operator.floordiv, "__mod__": operator.mod, "__pow__": operator.pow,
           "__matmul__": operator.matmul, "__neg__": operator.neg, "__abs__": operator.abs,
           "__getitem__": operator.getitem, "__setitem__": operator.setitem,
           "__and__": operator.and_, "__or__": operator.or_, "__xor__": operator.xor,
           "__invert__": operator.invert, "__lt__": operator.lt, "__le__": operator.le,
           "__gt__": operator.gt, "__ge__": operator.ge, "__eq__": operator.eq,
           "__ne__": operator.ne}
_RDUNDER = {"__radd__": operator.add, "__rsub__": operator.sub, "__rmul__": operator.mul,
            "__rtruediv__": operator.truediv, "__rfloordiv__": operator.floordiv,
            "__rpow__": operator.pow, "__rmatmul__": operator.matmul, "__rmod__": operator.mod,
            "__rand__": operator.and_, "__ror__": operator.or_}
_TENSOR_PROPS = {"T", "mT", "H", "mH", "data", "real", "imag"}
_PASS = {"__repr__", "__format__", "__bool__", "__hash__", "__len__", "dim", "ndim", "numel",
         "item", "tolist", "__iter__", "__contains__", "data_ptr", "is_floating_point",
         "is_complex", "element_size", "nelement", "__reduce_ex__", "__deepcopy__", "storage",
         "untyped_storage", "_is_view", "is_contiguous", "stride", "storage_offset",
         "get_device", "__array__", "numpy", "__index__", "__int__", "__float__"}


def _method_name(func: Any) -> str | None:
    name = getattr(func, "__name__", None)
    if name and any(getattr(cls, name, None) is func for cls in (torch.Tensor, torch._C.TensorBase)):
        return name
    return None


class _Recorder(TorchFunctionMode):
    def __init__(self, root: nn.Module) -> None:
        super().__init__()
        self.root = root
        self.graph = fx.Graph()
        self.env: dict[int, fx.Node] = {}
        self.alive: list[Any] = []          # keep recorded tensors alive: ids stay unique
        self.attrs: dict[int, str] = {}
        for n, t in list(root.named_parameters()) + list(root.named_buffers()):
            self.attrs.setdefault(id(t), n)
        self.attr_nodes: dict[str, fx.Node] = {}
        self.stack: list[tuple[str, type]] = []
        self.leaf_depth = 0
        self.pending: list[tuple[Any, Any]] = []
        self.busy = False               # inside our own hooks: record nothing

    # -------------------------------------------------------------- values
    def bind(self, value: Any, node: fx.Node) -> None:
        node.meta["pk_shape"] = _shapes(value)
        node.meta["pk_dtype"] = value.dtype if isinstance(value, torch.Tensor) else None
        node.meta["nn_module_stack"] = {n: (n, t) for n, t in self.stack}
        if isinstance(value, torch.Tensor):
            self.env[id(value)] = node
            self.alive.append(value)
        elif isinstance(value, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in value):
            for i, v in enumerate(value):
                if isinstance(v, torch.Tensor):
                    item = self.graph.call_function(operator.getitem, (node, i))
                    self.bind(v, item)

    def arg(self, v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            node = self.env.get(id(v))
            if node is not None:
                return node
            name = self.attrs.get(id(v))
            if name is not None:
                if name not in self.attr_nodes:
                    node = self.graph.get_attr(name)
                    self.bind(v, node)
                    self.attr_nodes[name] = node
                return self.attr_nodes[name]
            node = self.graph.call_function(pk_constant, (v,))
            self.bind(v, node)
            return node
        if isinstance(v, torch.Size):
            return tuple(v)
        if isinstance(v, tuple) and not hasattr(v, "_fields"):
            return tuple(self.arg(a) for a in v)
        if isinstance(v, list):
            return [self.arg(a) for a in v]
        if isinstance(v, dict):
            return {k: self.arg(a) for k, a in v.items()}
        if isinstance(v, slice):
            return slice(self.arg(v.start), self.arg(v.stop), self.arg(v.step))
        return v

    def sizes(self, x: torch.Tensor) -> torch.Size:
        node = self.arg(x)
        with torch._C.DisableTorchFunction():
            shape = tuple(x.shape)
        return torch.Size([SizeInt(s, frozenset({(node.name, d)})) for d, s in enumerate(shape)])

    # --------------------------------------------------------------- ops
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.leaf_depth or self.busy:
            return func(*args, **kwargs)
        prop = getattr(getattr(func, "__self__", None), "__name__", None) \
            if type(func).__name__ == "method-wrapper" else None
        if prop == "shape":
            return self.sizes(args[0])
        name = _method_name(func)
        if name == "size":
            full = self.sizes(args[0])
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            return full if dim is None else full[dim]
        if name == "__len__":
            return self.sizes(args[0])[0]
        if prop is not None and prop not in _TENSOR_PROPS or name in _PASS or \
                not _has_tensor((args, kwargs)):
            return func(*args, **kwargs)
        if prop is not None:
            op, target, a, k = "call_function", tensor_attr, (args[0], prop), {}
        elif name in _RDUNDER:
            op, target, a, k = "call_function", _RDUNDER[name], (args[1], args[0]), {}
        elif name in _DUNDER:
            op, target, a, k = "call_function", _DUNDER[name], tuple(args), kwargs
        elif name is not None:
            op, target, a, k = "call_method", name, tuple(args), kwargs
        else:
            op, target, a, k = "call_function", func, tuple(args), kwargs
        a, k = self.arg(a), self.arg(k)   # before running: an in-place op rebinds its input
        from .builder import needs_measuring
        flops = None
        if not needs_measuring(op, target):
            out = func(*args, **kwargs)
        else:
            from .cost import flop_counter
            with flop_counter() as fc:
                out = func(*args, **kwargs)
            flops = fc.get_total_flops()
        node = self.graph.create_node(op, target, a, k)
        if flops:
            node.meta["pk_flops"] = flops
        self.bind(out, node)
        return out

    # ------------------------------------------------------------ modules
    def pre_hook(self, name: str, leaf: bool):
        def hook(mod: nn.Module, args: Any, kwargs: Any) -> None:
            self.busy = True
            try:
                self.stack.append((name, type(mod)))
                if leaf and not self.leaf_depth:
                    self.pending.append((self.arg(tuple(args)), self.arg(dict(kwargs))))
                if leaf:
                    self.leaf_depth += 1
            finally:
                self.busy = False
        return hook

    def post_hook(self, name: str, leaf: bool):
        def hook(mod: nn.Module, args: Any, kwargs: Any, out: Any) -> None:
            self.busy = True
            try:
                if leaf:
                    self.leaf_depth -= 1
                if leaf and not self.leaf_depth:
                    a, k = self.pending.pop()
                    node = self.graph.call_module(name, a, k)
                    self.bind(out, node)
                self.stack.pop()
            finally:
                self.busy = False
        return hook


def _has_tensor(value: Any) -> bool:
    flat, _ = tree_flatten(value)
    return any(isinstance(v, torch.Tensor) for v in flat)


def _shapes(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        with torch._C.DisableTorchFunction():
            return tuple(int(s) for s in value.shape)
    if isinstance(value, (tuple, list)):
        return tuple(_shapes(v) for v in value)
    return None


def output_structure(value: Any) -> Any:
    """Plain containers for a model output (dataclasses and ModelOutputs become dicts)."""
    if isinstance(value, dict):
        return {k: output_structure(v) for k, v in value.items()}
    if hasattr(value, "__dataclass_fields__"):
        return {k: output_structure(getattr(value, k)) for k in value.__dataclass_fields__}
    if isinstance(value, (tuple, list)):
        return type(value)(output_structure(v) for v in value) if not hasattr(
            value, "_fields") else tuple(output_structure(v) for v in value)
    return value


def record(model: nn.Module, args: tuple, kwargs: dict, is_leaf) -> fx.Graph:
    """Run ``model(*args, **kwargs)`` once and return the graph of what it computed."""
    rec = _Recorder(model)
    flat, _ = tree_flatten((args, kwargs))
    for i, t in enumerate(v for v in flat if isinstance(v, torch.Tensor)):
        node = rec.graph.placeholder(f"input_{i}")
        rec.bind(t, node)
    handles = []
    for name, mod in model.named_modules():
        if not name:
            continue
        leaf = bool(is_leaf(mod))
        handles.append(mod.register_forward_pre_hook(rec.pre_hook(name, leaf), with_kwargs=True))
        handles.append(mod.register_forward_hook(rec.post_hook(name, leaf), with_kwargs=True))
    try:
        with torch.no_grad(), rec:
            out = model(*args, **kwargs)
    except Exception as exc:
        raise ExampleInputError(
            f"{type(model).__name__} failed on the example inputs while being recorded: "
            f"{type(exc).__name__}: {exc}. Pass inputs the model's forward accepts: a tensor, a "
            "tuple of positional arguments, or a dict of keyword arguments.") from exc
    finally:
        for h in handles:
            h.remove()
    rec.graph.output(rec.arg(output_structure(out)))
    return rec.graph
