"""Training step time in float32 and under bfloat16 autocast, side by side in one run.

    python benchmarks/train_precision.py --threads 2 --out benchmarks/train_precision.md

Each row times the same SGD step (batch 128, channels_last, CIFAR input) of a CIFAR
ResNet in float32 and then in bfloat16, one right after the other in one process.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from prunekit.models import create
from prunekit.outputs import write_text as write_text_atomic


def step_seconds(depth: int, bf16: bool, steps: int) -> float:
    torch.manual_seed(0)
    model = create(f"resnet{depth}").to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    x = torch.randn(128, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def cpu_name() -> str:
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--depths", type=int, nargs="+", default=[20, 56])
    ap.add_argument("--out", default="benchmarks/train_precision.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for depth in args.depths:
        fp32 = step_seconds(depth, False, args.steps)
        bf16 = step_seconds(depth, True, args.steps)
        rows.append(f"| ResNet-{depth} | {1000 * fp32:.0f} | {1000 * bf16:.0f} | "
                    f"{fp32 / bf16:.2f}x | {390 * fp32 / 60:.2f} | {390 * bf16 / 60:.2f} |")
        print(rows[-1], flush=True)
    cpu = cpu_name()
    text = "\n".join([
        "# Training step time: float32 vs bfloat16 autocast", "",
        f"Command: `python benchmarks/train_precision.py --threads {args.threads} "
        f"--steps {args.steps}`  ",
        f"Machine: {cpu}, {args.threads} threads, torch {torch.__version__}; batch 128, "
        "channels_last, SGD step included; mean of "
        f"{args.steps} steps after 3 warm-up steps.", "",
        "| model | fp32 ms/step | bf16 ms/step | speed-up | fp32 min/epoch | bf16 min/epoch |",
        "|---|---|---|---|---|---|", *rows, "",
        "An epoch is 390 steps (50,000 images); evaluation not included.", ""])
    write_text_atomic(Path(args.out), text)


if __name__ == "__main__":
    main()
