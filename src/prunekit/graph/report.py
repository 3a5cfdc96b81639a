"""Human-readable reports on a ChannelGraph: groups, widths, and why a group is frozen."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .core import ChannelGraph


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def explain(graph: "ChannelGraph", show_frozen: bool = True) -> str:
    rows = []
    for g in graph.groups:
        if g.frozen and not show_frozen:
            continue
        if g.kind in ("param", "fill", "pad") and g.frozen and len(g.members) <= 1:
            continue  # dims of free tensors that never meet a channel: noise
        status = "frozen" if g.frozen else ("partial" if g.n_prunable < g.width else "prunable")
        why = g.reasons[0] if g.reasons else ""
        rows.append([g.id, g.kind, str(g.width), str(g.n_prunable), status, why])
    c = graph.cost()
    head = (f"{len(graph.groups)} groups, {len(graph.prunable_groups)} prunable; "
            f"params {c.params:,}, MACs {c.macs:,} (for the example inputs)")
    return head + "\n" + table(rows, ["group", "kind", "width", "prunable", "status", "reason"])
