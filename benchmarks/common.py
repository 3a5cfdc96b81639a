"""Shared by the benchmark drivers: the pretrained model, the data, calibration images."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from prunekit.data import Batches, calibration_set, load_cifar10
from prunekit.models import create, load_checkpoint, spec


def setup(model_name: str, checkpoint: str, data: str | None, threads: int = 2):
    """(spec, model in eval mode, (train_x, train_y, test_x, test_y))."""
    torch.set_num_threads(threads)
    s = spec(model_name)
    model = create(model_name)
    load_checkpoint(model, checkpoint)
    return s, model.eval(), load_cifar10(data)


def calibration(tx: np.ndarray, ty: np.ndarray, s, n: int = 512, seed: int = 0):
    """``n`` training images with one draw of train-time augmentation, and their labels."""
    cx, cy = calibration_set(tx, ty, n, seed=seed)
    calib = torch.cat([b for b, _ in Batches(cx, cy, 256, s.norm, train=True, seed=seed)])
    return calib, cx, cy


def recalibrated(model: nn.Module, calib: torch.Tensor) -> nn.Module:
    """A copy with every BN's running statistics re-estimated on ``calib``."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for x in calib.split(128):
            model(x)
    return model.eval()
