"""CIFAR ResNets (He et al. 2016) with the zero-padded "option A" shortcut, or option B.

Key names match the public checkpoints (conv1, bn1, layer1..3, linear), so those
load strictly after stripping DataParallel's ``module.`` prefix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PadShortcut(nn.Module):
    """Option A: subsample by 2 and zero-pad ``extra // 2`` channels on each side; no weights.

    With the standard widths (planes = 2 * in_planes) this is the original's
    ``planes // 4`` on each side.
    """

    def __init__(self, extra: int) -> None:
        super().__init__()
        self.pad = extra // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, option: str,
                 inner: int | None = None) -> None:
        super().__init__()
        inner = inner or planes
        self.conv1 = nn.Conv2d(in_planes, inner, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        # an optional cheap branch from the block input to its output (LAPP's bypass),
        # so the block still transforms its input when the inner width is pruned narrow
        self.bypass: nn.Module | None = None
        self.bypass_shape = (in_planes, planes, stride)
        if stride != 1 or in_planes != planes:
            if option == "A":
                self.shortcut = PadShortcut(planes - in_planes)
            else:
                self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                              nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.bypass is not None:
            out = out + self.bypass(x)
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int = 20, num_classes: int = 10, option: str = "A",
                 widths: tuple[int, int, int] = (16, 32, 64), inner_ratio: float = 1.0) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        if option not in ("A", "B"):
            raise ValueError(f"shortcut option must be 'A' or 'B', got {option!r}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        layers = []
        for i, w in enumerate(widths):
            blocks = []
            for j in range(n):
                inner = max(1, round(w * inner_ratio))
                blocks.append(BasicBlock(in_planes, w, 2 if (i > 0 and j == 0) else 1, option,
                                         inner))
                in_planes = w
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(widths[2], num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)
