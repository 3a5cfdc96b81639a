"""Sizes read from a layer's own attributes, carried with their origin through a capture.

While a model is captured, every plain ``int`` attribute of every module (and every tuple
of ints, ``self.bias_shape``) holds an :class:`AttrInt`: an int equal to the value that
also remembers the module and attribute it came from. A rule then knows which constant
of a call *is* the attribute (``reshape(B, N, 3, self.num_heads, D)``), even where a
literal of the same value sits beside it (the ``3`` of q, k, v next to three heads), and
surgery sets the attribute to the kept size. Arithmetic returns plain ints: a size
derived from an attribute is a new constant, not the attribute. ``size_attributes``
declares attributes to match by value where a ``torch.Size`` sum erased the origin.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from torch import nn

SIZE_ATTRIBUTES: list[tuple[type, tuple[str, ...]]] = []


def size_attributes(cls: type, *attrs: str) -> None:
    """Declare integer attributes of ``cls`` that its ``forward`` passes as constant sizes
    (``x.split(self.split_size, dim)``): a rule may then prune through that constant and
    surgery sets the attribute to the kept size. Nothing is inferred from a value alone."""
    SIZE_ATTRIBUTES.append((cls, tuple(attrs)))


class AttrInt(int):
    """The value of a layer's int attribute, read during a capture."""

    owner: str
    attr: str
    index: int | None    # position in a tuple attribute (``self.bias_shape[2]``)

    def __new__(cls, value: int, owner: str, attr: str, index: int | None = None) -> "AttrInt":
        obj = super().__new__(cls, value)
        obj.owner, obj.attr, obj.index = owner, attr, index
        return obj

    def __reduce__(self):  # deepcopy/pickle as a plain int
        return (int, (int(self),))

    def __repr__(self) -> str:
        return int.__repr__(self)


def _plain(name: str):
    base = getattr(int, name)

    def op(self: AttrInt, *other: Any) -> Any:
        return getattr(int(self), name)(*other) if other else base(int(self))
    return op


for _n in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__floordiv__",
           "__rfloordiv__", "__truediv__", "__rtruediv__", "__mod__", "__rmod__", "__pow__",
           "__neg__", "__abs__", "__pos__"):
    setattr(AttrInt, _n, _plain(_n))


def declared(value: Any) -> tuple[str, str, int | None] | None:
    """(module name, attribute, tuple index) of a size read from a layer's attribute."""
    return (value.owner, value.attr, value.index) if isinstance(value, AttrInt) else None


def declared_by_value(mod: nn.Module, value: int) -> str | None:
    """The attribute ``size_attributes`` declared for ``mod``'s class that holds ``value``,
    if exactly one does: for sizes whose origin a ``torch.Size`` sum erased
    (``x.size()[:-1] + (self.num_heads, self.head_dim)``)."""
    hits = {a for t, attrs in SIZE_ATTRIBUTES if isinstance(mod, t) for a in attrs
            if mod.__dict__.get(a) == value}
    return hits.pop() if len(hits) == 1 else None


def _tagged(value: Any, owner: str, attr: str) -> Any:
    """``value`` as AttrInt(s): a plain int, or a tuple of plain ints; else None."""
    if type(value) is int:
        return AttrInt(value, owner, attr)
    if type(value) is tuple and 0 < len(value) <= 8 and all(type(v) is int for v in value):
        return tuple(AttrInt(v, owner, attr, i) for i, v in enumerate(value))
    return None


@contextlib.contextmanager
def tagged_attributes(model: nn.Module) -> Iterator[None]:
    """Within the block, the plain int (and int-tuple) attributes of ``model``'s layers
    are AttrInts; the original values are put back on exit."""
    changed: list[tuple[nn.Module, str, int]] = []
    try:
        for name, mod in model.named_modules():
            for a, v in list(mod.__dict__.items()):
                t = None if a.startswith("_") else _tagged(v, name, a)
                if t is not None:
                    changed.append((mod, a, v))
                    mod.__dict__[a] = t
        yield
    finally:
        for mod, a, v in reversed(changed):
            mod.__dict__[a] = v
