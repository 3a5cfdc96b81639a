"""Coverage: every torchvision classifier (and the option-A CIFAR ResNets), prunekit and
Torch-Pruning side by side in one run.

For each model, both tools prune about half the channels (prunekit: a random 50% of
every prunable group; Torch-Pruning: MetaPruner, random importance, pruning_ratio 0.5,
classifier ignored) and the result is compared with the masked reference, the original
model with the removed channels zeroed:

- prunekit: its own masked reference (every op's output masked), plus cost check;
- Torch-Pruning: the removed output channels of every layer are recovered by matching
  the pruned weights' rows against the original's, and those channels are zeroed at
  the output of that layer by forward hooks on a copy of the original.

A model is "verified" when the outputs agree to 1e-4 (relative to the output scale),
"WRONG" when the tool returned a model whose output differs (silently wrong),
"crash" when the pruned model fails to run, "refused" when the tool raised,
"timeout" when Torch-Pruning gave no result within ``--tp-timeout`` seconds.

    python benchmarks/coverage.py --out benchmarks/results/coverage.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import traceback
from pathlib import Path

import torch
from torch import nn

from prunekit import ChannelGraph
from prunekit.conformance import check_plan, outputs_close, random_plan
from prunekit.models import CifarResNet
from prunekit.zoo import build, randomize, zoo_names

CIFAR = {"cifar_resnet20_optA": 20, "cifar_resnet56_optA": 56}


def get_model(name: str) -> tuple[nn.Module, tuple[torch.Tensor]]:
    if name in CIFAR:
        torch.manual_seed(0)
        model = CifarResNet(CIFAR[name]).eval()
        randomize(model)
        return model, (torch.randn(2, 3, 32, 32),)
    return build(name)


def share_prunable(graph: ChannelGraph) -> float:
    total = kept = 0
    for src in graph.producers():
        if src.kind in ("conv", "linear", "heads", "embedding"):
            units = src.units
            total += len(units)
            kept += int((~graph.unit_frozen[units]).sum())
    return kept / max(total, 1)


def ours(model: nn.Module, x: tuple) -> dict:
    t = time.perf_counter()
    try:
        graph = ChannelGraph.build(model, x)
        plan = random_plan(graph, 0.5)
    except Exception as exc:
        return {"status": "refused", "reason": f"{type(exc).__name__}: {exc}"[:300]}
    build_s = time.perf_counter() - t
    try:
        res = check_plan(model, x, graph, plan)
    except AssertionError as exc:
        return {"status": "WRONG", "reason": str(exc)[:300]}
    except Exception as exc:
        return {"status": "crash", "reason": f"{type(exc).__name__}: {exc}"[:300]}
    base = graph.cost()
    return {"status": "verified" if plan.keep else "nothing-prunable", "error": res["error"],
            "prunable_share": share_prunable(graph), "macs_kept": res["macs"] / base.macs,
            "params_kept": res["params"] / base.params, "build_s": build_s}


def _classifiers(model: nn.Module, x: tuple) -> list[nn.Module]:
    """Layers producing the model's outputs (kept by both tools)."""
    with torch.no_grad():
        out = model(*x)
    n_out = out.shape[-1]
    last = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))
            and (getattr(m, "out_features", None) == n_out or getattr(m, "out_channels", None)
                 == n_out)]
    return last[-1:]


def _kept_rows(orig: torch.Tensor, new: torch.Tensor, dim: int) -> list[int] | None:
    o, n = orig.movedim(dim, 0), new.movedim(dim, 0)
    if o.shape[1:] != n.shape[1:]:
        o = o.reshape(o.shape[0], -1)
        n = n.reshape(n.shape[0], -1)
        if o.shape[1] < n.shape[1]:
            return None
    kept, j = [], 0
    for i in range(o.shape[0]):
        if j < n.shape[0] and _row_match(o[i], n[j]):
            kept.append(i)
            j += 1
    return kept if j == n.shape[0] else None


def _row_match(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape == b.shape:
        return torch.equal(a, b)
    a, b = a.reshape(-1), b.reshape(-1)
    return bool(torch.isin(b, a).all())  # input channels were removed too: b is a subset


def hook_reference(orig: nn.Module, pruned: nn.Module) -> nn.Module:
    """A copy of ``orig`` whose layers zero the output channels the pruned model lacks."""
    ref = copy.deepcopy(orig).eval()
    new_mods = dict(pruned.named_modules())
    for name, m in ref.named_modules():
        w = getattr(m, "weight", None)
        p = new_mods.get(name)
        pw = getattr(p, "weight", None) if p is not None else None
        if not isinstance(w, torch.Tensor) or not isinstance(pw, torch.Tensor) or w.dim() < 1:
            continue
        out_dim = 1 if isinstance(m, nn.modules.conv._ConvTransposeNd) else 0
        if pw.shape[out_dim] == w.shape[out_dim]:
            continue
        kept = _kept_rows(w.detach(), pw.detach(), out_dim)
        if kept is None:
            raise RuntimeError(f"cannot match pruned rows of {name}")
        chan = -1 if isinstance(m, (nn.Linear, nn.LayerNorm, nn.Embedding)) else 1
        mask = torch.zeros(w.shape[out_dim], dtype=torch.bool)
        mask[kept] = True
        m.register_forward_hook(_zero_hook(mask, chan))
    return ref


def _zero_hook(mask: torch.Tensor, dim: int):
    def hook(_m, _i, out):
        if not isinstance(out, torch.Tensor) or out.shape[dim] != mask.numel():
            return out
        shape = [1] * out.dim()
        shape[dim] = -1
        return out * mask.view(shape).to(out.dtype)
    return hook


def theirs(model: nn.Module, x: tuple) -> dict:
    import torch_pruning as tp
    work = copy.deepcopy(model)
    t = time.perf_counter()
    try:
        pruner = tp.pruner.MetaPruner(work, x[0], importance=tp.importance.RandomImportance(),
                                      pruning_ratio=0.5,
                                      ignored_layers=_classifiers(work, x))
        pruner.step()
    except Exception as exc:
        return {"status": "refused", "reason": f"{type(exc).__name__}: {exc}"[:300]}
    return judge_tp(model, work, x, time.perf_counter() - t)


def judge_tp(model: nn.Module, work: nn.Module, x, secs: float,
             call=lambda m, x: m(*x), recheck=None) -> dict:
    """Torch-Pruning's pruned ``work`` against the zeroing reference of ``model``.

    ``call(model, x)`` runs a model on the inputs; ``recheck(row, exc, out)`` may replace a
    WRONG row (coverage_zoo checks it against kept-channel LayerNorm statistics)."""
    work.eval()
    try:
        with torch.no_grad():
            out = call(work, x)
    except Exception as exc:
        return {"status": "crash", "reason": f"{type(exc).__name__}: {exc}"[:300]}
    n_before = sum(p.numel() for p in model.parameters())
    n_after = sum(p.numel() for p in work.parameters())
    if n_after == n_before:
        return {"status": "nothing-pruned"}
    try:
        ref = hook_reference(model, work)
        with torch.no_grad():
            expect = call(ref, x)
        err = outputs_close(out, expect)
    except AssertionError as exc:
        row = {"status": "WRONG", "reason": str(exc)[:300], "params_kept": n_after / n_before}
        return recheck(row, exc, out, secs) if recheck else row
    except Exception as exc:
        return {"status": "unverifiable", "reason": f"{type(exc).__name__}: {exc}"[:300]}
    return {"status": "verified", "error": err, "params_kept": n_after / n_before,
            "prune_s": secs}


def theirs_limited(name: str, seconds: float) -> dict:
    """Torch-Pruning in a child process with a time limit (its analysis can take long)."""
    import subprocess
    import sys
    try:
        res = subprocess.run([sys.executable, __file__, "--tp-one", name], capture_output=True,
                             text=True, timeout=seconds)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "reason": f"no result within {seconds:.0f} s"}
    lines = [l for l in res.stdout.splitlines() if l.startswith("{")]
    if res.returncode != 0 or not lines:
        return {"status": "harness-error", "reason": res.stderr[-300:]}
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/coverage.jsonl")
    ap.add_argument("--models", nargs="*")
    ap.add_argument("--skip-tp", action="store_true")
    ap.add_argument("--tp-timeout", type=float, default=300.0)
    ap.add_argument("--tp-one", help=argparse.SUPPRESS)
    ap.add_argument("--refresh-ours", action="store_true",
                    help="recompute prunekit's result for --models, keeping Torch-Pruning's")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.tp_one:
        model, x = get_model(args.tp_one)
        print(json.dumps(theirs(model, x)))
        return
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.refresh_ours:
        rows = [json.loads(l) for l in out.read_text().splitlines()]
        for row in rows:
            if row["model"] in (args.models or []):
                row["ours"] = ours(*get_model(row["model"]))
                print(row["model"], row["ours"]["status"], flush=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tmp.replace(out)
        return
    done = {json.loads(l)["model"] for l in out.read_text().splitlines()} if out.exists() else set()
    names = args.models or (list(CIFAR) + zoo_names())
    for name in names:
        if name in done:
            continue
        model, x = get_model(name)
        row = {"model": name, "input": list(x[0].shape), "ours": ours(model, x)}
        if not args.skip_tp:
            try:
                row["torch_pruning"] = theirs_limited(name, args.tp_timeout)
            except Exception:
                row["torch_pruning"] = {"status": "harness-error",
                                        "reason": traceback.format_exc()[-300:]}
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(name, row["ours"]["status"], row.get("torch_pruning", {}).get("status"),
              flush=True)
        del model


if __name__ == "__main__":
    main()
