"""Structural edits: changes a method makes to the architecture before it plans (LAPP's
bypass branches), recorded by name in the plan's ``meta["edits"]`` so loading redoes them
on the fresh model before replaying the plan.

Only registered edits run: a saved plan names an edit, never code. The built-in ones are
imported lazily (``import prunekit`` stays light); :func:`register_edit` adds others. An
edit must be idempotent (applying it to a model that has it changes nothing)."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

from torch import nn

from ..errors import PlanFormatError

__all__ = ["apply_edits", "edits_of", "register_edit"]

Edit = Callable[[nn.Module], Any]

_BUILTIN: dict[str, tuple[str, str]] = {
    "bypass": ("prunekit.methods.lapp_bypass", "add_bypass"),
}
_REGISTERED: dict[str, Edit] = {}


def register_edit(name: str, edit: Edit) -> None:
    """Make ``edit`` (a function changing a model in place, idempotent) available to
    loading under ``name``."""
    if not name or not isinstance(name, str):
        raise ValueError(f"an edit needs a non-empty name, got {name!r}")
    _REGISTERED[name] = edit


def edits_of(meta: Mapping[str, Any]) -> list[str]:
    """The edits a plan's meta asks for (plans saved before edits were named record LAPP's
    bypass as ``bypass: true``)."""
    edits = meta.get("edits", [])
    if not isinstance(edits, list) or not all(isinstance(e, str) for e in edits):
        raise PlanFormatError(f"meta.edits must be a list of edit names, got {edits!r}")
    if meta.get("bypass") is True and "bypass" not in edits:
        edits = [*edits, "bypass"]
    return list(edits)


def _lookup(name: str) -> Edit:
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in _BUILTIN:
        module, attr = _BUILTIN[name]
        return getattr(importlib.import_module(module), attr)
    known = sorted({*_BUILTIN, *_REGISTERED})
    raise PlanFormatError(f"the plan needs the structural edit {name!r}, which is not "
                          f"registered (known: {known}; see prunekit.io.register_edit)")


def apply_edits(model: nn.Module, names: list[str]) -> None:
    """Apply the named edits to ``model`` in place, in order."""
    for edit in [_lookup(n) for n in names]:     # every name checked before any change
        edit(model)
