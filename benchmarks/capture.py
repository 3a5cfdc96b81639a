"""Capture time: torch.fx (prunekit's fast path), the recorded forward, and torch.export.

prunekit's two captures are timed as a whole ``ChannelGraph.build`` (capture plus
channel analysis), torch.export non-strict as the capture alone; second build of
each, one thread.

    python benchmarks/capture.py
"""

from __future__ import annotations

import time
import warnings

import torch
import torchvision

from prunekit import ChannelGraph
from prunekit.models import CifarResNet


def main() -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    cases = [("resnet50", torchvision.models.resnet50(), torch.randn(1, 3, 224, 224)),
             ("cifar_resnet524", CifarResNet(524), torch.randn(1, 3, 32, 32)),
             ("densenet201", torchvision.models.densenet201(), torch.randn(1, 3, 224, 224))]
    for name, model, x in cases:
        model.eval()
        row = [name]
        for how in ("fx", "record"):
            ChannelGraph.build(model, x, capture=how)
            t = time.perf_counter()
            ChannelGraph.build(model, x, capture=how)
            row.append(f"{how} {time.perf_counter() - t:.2f}s")
        t = time.perf_counter()
        torch.export.export(model, (x,), strict=False)
        row.append(f"export(non-strict, capture only) {time.perf_counter() - t:.2f}s")
        print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main()
