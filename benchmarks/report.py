"""Render the benchmark results (JSON) as the committed markdown reports."""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def coverage(meta: str) -> str:
    rows, counts = [], {"ours": {}, "tp": {}}
    for line in (RESULTS / "coverage.jsonl").read_text().splitlines():
        r = json.loads(line)
        o, t = r["ours"], r.get("torch_pruning", {})
        counts["ours"][o["status"]] = counts["ours"].get(o["status"], 0) + 1
        counts["tp"][t.get("status")] = counts["tp"].get(t.get("status"), 0) + 1
        rows.append([r["model"], "x".join(map(str, r["input"][2:])), o["status"],
                     f"{o.get('prunable_share', 0):.0%}" if "prunable_share" in o else "",
                     f"{o['error']:.1e}" if "error" in o else o.get("reason", "")[:80],
                     t.get("status", ""),
                     f"{t['error']:.1e}" if "error" in t else t.get("reason", "")[:80]])
    n = len(rows)
    head = [f"# Coverage: the torchvision classification zoo\n\n{meta}\n",
            f"{n} models. prunekit: " + ", ".join(f"{v} {k}" for k, v in
                                                 sorted(counts['ours'].items())) + ".",
            "Torch-Pruning 1.6.1: " + ", ".join(f"{v} {k}" for k, v in
                                                sorted(counts['tp'].items(), key=str)) + ".\n",
            "Status: *verified* = the pruned model equals the masked reference (relative "
            "error <= 1e-4); *WRONG* = a model was returned whose output differs (silently "
            "wrong); *crash* = the returned model fails to run; *refused* = the tool raised; "
            "*timeout* = Torch-Pruning's pruning plus this harness's check of it took more "
            "than the time limit on this 2-core machine, which was running other jobs at the "
            "same time (the row-matching check of very wide layers, VGG's 25088x4096 "
            "classifier, is slow): no verdict on correctness. "
            "prunekit prunes channels a LayerNorm normalises over (ConvNeXt's, ViT's and "
            "Swin's residual streams), its reference taking the statistics over the kept "
            "channels; Torch-Pruning's rows were checked against the zeroing reference "
            "(statistics over all channels), so its ConvNeXt WRONG rows come from that "
            "difference (benchmarks/coverage_zoo.md checks it against both). "
            "Error is the max abs difference divided by (output scale + 1). Prunable share "
            "= fraction of producer channels (conv/linear outputs, attention heads) that "
            "prunekit may remove; the rest is frozen with a reason (see `graph.explain()`).\n"]
    return "\n".join(head) + "\n" + _table(
        ["model", "input", "prunekit", "prunable share", "error / reason",
         "Torch-Pruning", "error / reason"], rows) + "\n"


def speed(meta: str) -> str:
    doc = json.loads((RESULTS / "speed.json").read_text())
    rows = [[r["model"], f"{r['ours_s']:.2f}",
             f"{r['ours_unverified_s']:.2f}" if "ours_unverified_s" in r else "",
             f"{r['torch_pruning_s']:.2f}"
             if "torch_pruning_s" in r else "n/a (crashes on option A)",
             f"{r['ratio_ours_over_tp']:.2f}" if "ratio_ours_over_tp" in r else "",
             f"{r['ours_unverified_s'] / r['torch_pruning_s']:.2f}"
             if "torch_pruning_s" in r and "ours_unverified_s" in r else ""]
            for r in doc["rows"]]
    return (f"# Pruning speed: build + plan + apply\n\n{meta}\n\nMachine: {doc['machine']}; "
            f"torch {doc['torch']}; median of {doc['repeats']} runs, a garbage collection "
            f"before each.\n\n" +
            _table(["model", "prunekit (s)", "prunekit, verify=False (s)",
                    "Torch-Pruning (s)", "prunekit / TP", "unverified / TP"], rows) + "\n")


def latency(meta: str) -> str:
    doc = json.loads((RESULTS / "latency.json").read_text())
    rows = [[r["model"], f"{r['macs_fraction']:.3f}", f"{r['latency_ms']:.1f}",
             f"{r['speedup']:.2f}x", f"{r['mac_reduction']:.2f}x",
             f"{r['speedup_over_mac_reduction']:.2f}"] for r in doc["rows"]]
    return (f"# Real speed-up: ResNet-56 latency on CPU\n\n{meta}\n\nMachine: {doc['machine']}; "
            f"torch {doc['torch']}; batch {doc['batch']}; median of {doc['runs']} "
            "interleaved runs after 5 warm-up runs.\n\n" +
            _table(["model", "MACs kept", "latency (ms)", "speed-up", "MAC reduction",
                    "speed-up / MAC reduction"], rows) + "\n")


if __name__ == "__main__":
    which, meta = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""
    out = {"coverage": coverage, "speed": speed, "latency": latency}[which](meta)
    (Path(__file__).parent / f"{which}.md").write_text(out)
    print(out[:2000])
