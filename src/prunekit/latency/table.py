"""Per-layer latency tables: one conv or linear layer, rebuilt standalone at candidate
widths with its real input shape (the target's batch), timed on the target. Layers of
the same configuration share one table; tables are cached on disk under a key of the
target (device, backend, batch, threads, library versions, processor) and the layer's
configuration, so a changed machine, library or batch measures afresh.

A table answers ``seconds(cin, cout)`` exactly (measuring a point it lacks) and
``interp(cin, cout)`` bilinearly over its grid (for search loops)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..graph.profile import Layer
from ..outputs import make_dirs, write_text
from .target import Target
from .timers import Timer

__all__ = ["LayerTable", "cache_dir", "signature"]


def cache_dir(folder: str | os.PathLike[str] | None = None) -> Path:
    """Where tables live: ``folder``, else ``$PRUNEKIT_CACHE/latency``, else
    ``~/.cache/prunekit/latency``."""
    if folder is not None:
        return Path(folder)
    root = os.environ.get("PRUNEKIT_CACHE")
    return Path(root) / "latency" if root else Path.home() / ".cache" / "prunekit" / "latency"


def signature(layer: Layer, module: nn.Module, batch: int) -> dict[str, Any]:
    """Everything the layer's latency depends on except its two widths."""
    shape = [batch, *layer.in_shape[1:]]
    if layer.kind == "conv":
        sig = {"kind": "conv", "dims": module.weight.dim() - 2,
               "kernel": list(module.kernel_size), "stride": list(module.stride),
               "padding": module.padding if isinstance(module.padding, str)
               else list(module.padding), "dilation": list(module.dilation),
               "groups": module.groups, "bias": module.bias is not None,
               "padding_mode": module.padding_mode,
               "cin": module.in_channels, "cout": module.out_channels}
        shape[1] = -1
    else:
        sig = {"kind": "linear", "bias": module.bias is not None,
               "cin": module.in_features, "cout": module.out_features}
        shape[-1] = -1
    sig["input"] = shape
    sig["tracked"] = [layer.in_units is not None, layer.out_units is not None]
    return sig


def _grid(full: int, points: int, tracked: bool) -> list[int]:
    if not tracked or full <= 1:
        return [full]
    w = np.round(np.linspace(1.0 / points, 1.0, points) * full).astype(int)
    small = max(1, full // 16)          # a thin width, so thin plans are not extrapolated
    return sorted(set(np.clip(w, 1, full).tolist()) | {small})


def build_layer(sig: dict[str, Any], cin: int, cout: int) -> tuple[nn.Module, torch.Tensor]:
    """The standalone layer at widths ``cin`` x ``cout`` and an input for it. A grouped
    conv keeps its per-group widths and loses whole groups (its table runs along the
    output width)."""
    shape = list(sig["input"])
    if sig["kind"] == "linear":
        shape[-1] = cin
        return nn.Linear(cin, cout, bias=sig["bias"]), torch.randn(shape)
    g = sig["groups"]
    if g > 1:
        per_in, per_out = sig["cin"] // g, sig["cout"] // g
        g = max(1, round(g * cout / sig["cout"]))
        cin, cout = per_in * g, per_out * g
    shape[1] = cin
    conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[sig["dims"] - 1]
    padding = sig["padding"] if isinstance(sig["padding"], str) else tuple(sig["padding"])
    mod = conv(cin, cout, tuple(sig["kernel"]), tuple(sig["stride"]), padding,
               tuple(sig["dilation"]), g, sig["bias"], sig["padding_mode"])
    return mod, torch.randn(shape)


class LayerTable:
    """Measured seconds of one layer configuration at (cin, cout) widths."""

    def __init__(self, sig: dict[str, Any], target: Target, timer: Timer,
                 folder: str | os.PathLike[str] | None = None, points: int = 6) -> None:
        self.sig, self.target, self.timer = sig, target, timer
        grouped = sig["kind"] == "conv" and sig["groups"] > 1
        tin, tout = sig["tracked"]
        self.grid_in = [sig["cin"]] if grouped else _grid(sig["cin"], points, tin)
        self.grid_out = _grid(sig["cout"], points, tout or (grouped and tin))
        doc = json.dumps({"target": target.key(), "layer": sig}, sort_keys=True)
        self.path = cache_dir(folder) / f"{hashlib.sha256(doc.encode()).hexdigest()[:24]}.json"
        self.points: dict[tuple[int, int], float] = {}
        self.measured = 0            # timings this table made (not read from the cache)
        self._load()

    # ----------------------------------------------------------- storage
    def _load(self) -> None:
        try:
            doc = json.loads(self.path.read_text())
            self.points = {tuple(map(int, k.split(","))): float(v)
                           for k, v in doc["points"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self.points = {}

    def save(self) -> None:
        make_dirs(self.path.parent)
        doc = {"target": self.target.key(), "layer": self.sig,
               "points": {f"{a},{b}": v for (a, b), v in sorted(self.points.items())}}
        write_text(self.path, json.dumps(doc, indent=1))

    # ----------------------------------------------------------- measuring
    def _key(self, cin: int, cout: int) -> tuple[int, int]:
        grouped = self.sig["kind"] == "conv" and self.sig["groups"] > 1
        return (self.sig["cin"] if grouped else int(cin), int(cout))

    def seconds(self, cin: int, cout: int) -> float:
        """The layer's measured latency at these widths (timed now if not cached)."""
        key = self._key(cin, cout)
        if key not in self.points:
            mod, x = build_layer(self.sig, *key)
            self.points[key] = float(self.timer.time(mod, (x,)))
            self.measured += 1
            self.save()
        return self.points[key]

    def fill(self, tick: Callable[[], None] = lambda: None) -> None:
        """Measure every grid point the cache lacks."""
        for a in self.grid_in:
            for b in self.grid_out:
                self.seconds(a, b)
                tick()

    def missing(self) -> int:
        return sum((a, b) not in self.points for a in self.grid_in for b in self.grid_out)

    def interp(self, cin: float, cout: float) -> float:
        """Bilinear interpolation over the grid (widths outside it are clamped)."""
        cin = self.sig["cin"] if len(self.grid_in) == 1 else cin
        rows = [np.interp(cout, self.grid_out, [self.points[(a, b)] for b in self.grid_out])
                for a in self.grid_in]
        return float(np.interp(cin, self.grid_in, rows)) if len(rows) > 1 else float(rows[0])
