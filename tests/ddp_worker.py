"""Run by torchrun in tests: 2 processes train a tiny model with DDP (gloo)."""

import sys

import torch

from fixtures import images
from prunekit.data import CIFAR_NORM, Batches
from prunekit.models import create
from prunekit.train import TrainConfig, fit

torch.set_num_threads(1)
x, y = images(64, 0)
model = create("resnet20", widths=(4, 8, 8))
cfg = TrainConfig(epochs=2, lr=0.05, channels_last=False, max_steps_per_epoch=2)
hist = fit(model, Batches(x, y, 16, CIFAR_NORM, train=True), Batches(x, y, 32, CIFAR_NORM),
           cfg, sys.argv[1], progress=False)
rank = torch.distributed.get_rank()
w = sum(p.sum() for p in model.parameters()).item()
with open(f"{sys.argv[1]}/rank{rank}.txt", "w") as f:
    f.write(f"rank {rank} epochs {len(hist)} weightsum {w:.6f}\n")
