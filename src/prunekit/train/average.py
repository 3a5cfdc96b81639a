"""Weight averaging of several trained copies of one architecture (a uniform "model soup",
Wortsman et al., ICML 2022): copies fine-tuned from one pretrained start often sit in one
basin, where the average of their weights is more accurate than each of them.

Every floating-point tensor of the state_dicts (weights and BatchNorm running statistics) is
averaged; integer buffers (BatchNorm's ``num_batches_tracked``) are taken from the first.
``recalibrate_bn`` can then re-estimate the BatchNorm statistics of the averaged weights on
training data, for copies whose statistics disagree more than fine-tuned siblings do.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn


def average_state_dicts(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of ``states`` (at least two, same keys, shapes and dtypes)."""
    if len(states) < 2:
        raise ValueError(f"averaging needs at least two state_dicts, got {len(states)}")
    first = states[0]
    for i, state in enumerate(states[1:], 1):
        if state.keys() != first.keys():
            diff = sorted(set(state) ^ set(first))
            raise ValueError(f"state_dict {i} has other keys than state_dict 0: {diff[:5]}")
        for k, v in state.items():
            if v.shape != first[k].shape or v.dtype != first[k].dtype:
                raise ValueError(f"state_dict {i}: {k} is {v.dtype} {tuple(v.shape)}, state_dict"
                                 f" 0 has {first[k].dtype} {tuple(first[k].shape)}")
    out = {}
    for k, v in first.items():
        if v.is_floating_point():
            out[k] = torch.stack([s[k].double() for s in states]).mean(0).to(v.dtype)
        else:
            out[k] = v.clone()
    return out


def recalibrate_bn(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                   steps: int) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them as the plain mean over
    ``steps`` batches (train-mode forward passes without gradients). Returns the number of
    BatchNorm layers reset; the model is left in eval mode."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None          # cumulative moving average: every batch weighs the same
    model.train()
    with torch.no_grad():
        for i, (x, _) in enumerate(batches):
            if i >= steps:
                break
            model(x)
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    model.eval()
    return len(norms)
