"""Batches from uint8 image arrays: seeded tensor augmentation, normalisation, sharding.

No worker processes: on a 2-core machine a vectorised crop/flip on whole uint8
batches costs a few milliseconds, far less than the model's step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch


@dataclass(frozen=True)
class Normalize:
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, x_uint8_nchw: torch.Tensor) -> torch.Tensor:
        x = x_uint8_nchw.float().div_(255.0)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (x - mean) / std


IMAGENET_NORM = Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CIFAR_NORM = Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


def random_crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip of a uint8 NCHW batch."""
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    rows = (oy[:, None] + torch.arange(h))[:, None, :, None].expand(b, c, h, w + 2 * pad)
    cols = (ox[:, None] + torch.arange(w))[:, None, None, :].expand(b, c, h, w)
    out = torch.gather(torch.gather(padded, 2, rows), 3, cols)
    flip = torch.rand(b, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def cutout(x: torch.Tensor, gen: torch.Generator, size: int) -> torch.Tensor:
    """Zero one random ``size`` x ``size`` square per image of a normalised NCHW batch
    (DeVries & Taylor, 2017: the square's centre is uniform over the image, so it may
    be clipped at the border; zero is the mean pixel after normalisation)."""
    b, _, h, w = x.shape
    cy = torch.randint(0, h, (b,), generator=gen)[:, None]
    cx = torch.randint(0, w, (b,), generator=gen)[:, None]
    ys, xs = torch.arange(h)[None], torch.arange(w)[None]
    rows = ((ys >= cy - size // 2) & (ys < cy - size // 2 + size))[:, :, None]
    cols = ((xs >= cx - size // 2) & (xs < cx - size // 2 + size))[:, None, :]
    return x * (~(rows & cols))[:, None].to(x.dtype)


class Batches:
    """Iterate (inputs, labels) over arrays; a new seeded order and augmentation per epoch.

    ``shard=(rank, world)`` gives each process of a distributed run its slice of
    every epoch's permutation; ``cutout=S`` (training only) also zeroes a random
    S x S square of every image.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, norm: Normalize,
                 train: bool = False, seed: int = 0, shard: tuple[int, int] = (0, 1),
                 drop_last: bool = False, cutout: int = 0) -> None:
        if len(x) != len(y):
            raise ValueError("images and labels differ in length")
        if cutout < 0:
            raise ValueError(f"cutout must be >= 0, got {cutout}")
        self.cutout = cutout
        self.x, self.y = x, y
        self.batch_size, self.norm, self.train = batch_size, norm, train
        self.seed, self.shard, self.drop_last = seed, shard, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> np.ndarray:
        n = len(self.x)
        idx = np.random.default_rng(self.seed + 1000 * self.epoch).permutation(n) if self.train \
            else np.arange(n)
        rank, world = self.shard
        return idx[rank::world]

    def __len__(self) -> int:
        n = len(self._indices())
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self._indices()
        gen = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        for start in range(0, len(idx), self.batch_size):
            part = np.sort(idx[start:start + self.batch_size]) if not self.train else \
                idx[start:start + self.batch_size]
            if self.drop_last and len(part) < self.batch_size:
                break
            xb = torch.from_numpy(np.ascontiguousarray(self.x[part])).permute(0, 3, 1, 2)
            if self.train:
                xb = random_crop_flip(xb, gen)
            xb = self.norm(xb)
            if self.train and self.cutout:
                xb = cutout(xb, gen, self.cutout)
            yield xb, torch.from_numpy(np.asarray(self.y[part]))


def calibration_set(x: np.ndarray, y: np.ndarray | None, n: int, seed: int = 0,
                    balanced: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """``n`` images (optionally the same number per class) for data-efficient methods."""
    rng = np.random.default_rng(seed)
    if n > len(x):
        raise ValueError(f"asked for {n} calibration images, only {len(x)} available")
    if balanced:
        if y is None:
            raise ValueError("a class-balanced calibration set needs labels")
        classes = np.unique(y)
        per = n // len(classes)
        idx = np.concatenate([rng.choice(np.nonzero(y == c)[0], per, replace=False)
                              for c in classes])
        idx = np.concatenate([idx, rng.choice(np.setdiff1d(np.arange(len(x)), idx),
                                              n - len(idx), replace=False)])
    else:
        idx = rng.choice(len(x), n, replace=False)
    idx = np.sort(idx)
    return x[idx], (None if y is None else y[idx])
