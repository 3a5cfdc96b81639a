"""LAPP's lightweight bypass: a cheap branch from a block's input to its output, added to
every block that declares a slot for it. A plan made with it names the edit ``bypass``
(:mod:`prunekit.io.edits`), so loading rebuilds the branches before replaying the plan."""

from __future__ import annotations

from torch import nn

__all__ = ["add_bypass", "has_bypass"]


def add_bypass(model: nn.Module, scale: float = 1.0) -> int:
    """Give every block that declares ``bypass_shape = (in, out, stride)`` and has an empty
    ``bypass`` slot a cheap branch from its input to its output: a depthwise 3x3 conv + BN
    when in == out, else a 1x1 conv + BN, the BN's scale initialised to ``scale`` (0: the
    branch starts as a no-op). Returns how many were added."""
    n = 0
    for mod in model.modules():
        shape = getattr(mod, "bypass_shape", None)
        if shape is None or getattr(mod, "bypass", 1) is not None:
            continue
        cin, cout, stride = shape
        conv = nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False) if cin == cout else \
            nn.Conv2d(cin, cout, 1, stride, bias=False)
        bn = nn.BatchNorm2d(cout)
        nn.init.constant_(bn.weight, scale)
        mod.bypass = nn.Sequential(conv, bn)
        n += 1
    return n


def has_bypass(model: nn.Module) -> bool:
    """Whether ``model`` carries bypass branches (a saved plan records it: loading rebuilds
    them before replaying the plan)."""
    return any(getattr(m, "bypass_shape", None) is not None and
               getattr(m, "bypass", None) is not None for m in model.modules())
