"""Shared by the benchmark drivers: the pretrained model, the data, calibration images."""

from __future__ import annotations

import copy
import json
import os
import shlex
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from prunekit.data import Batches, calibration_set, load_cifar10
from prunekit.models import create, load_checkpoint, spec
from prunekit.outputs import write_text as atomic_write_text


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


def finetune_all(nets: dict[str, nn.Module], dense: nn.Module, arrays, s, epochs: int,
                 seed: int = 0, cache: Path | None = None) -> dict[str, dict]:
    """Fine-tune each pruned network with the same schedule (SGD, lr 0.02 cosine, batch 128)
    and report its test top-1 and measured MACs relative to ``dense``.

    With ``cache`` (a JSON file), each finished network's result is saved there as soon as
    it is known and reused on a rerun with the same epochs, so a killed run loses at most
    the network in progress."""
    import tempfile

    from prunekit.conformance import measured_cost
    from prunekit.train import TrainConfig, evaluate, fit
    tx, ty, vx, vy = arrays
    train = Batches(tx, ty, 128, s.norm, train=True, seed=seed, drop_last=True)
    test = Batches(vx, vy, 500, s.norm)
    ex = torch.zeros(1, *s.input_size)
    base = measured_cost(dense, (ex,))[1]
    done = json.loads(cache.read_text()) if cache is not None and cache.is_file() else {}
    out = {}
    for name, net in nets.items():
        if done.get(name, {}).get("epochs") == epochs:
            out[name] = done[name]
            print(name, out[name], "(cached)", flush=True)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            fit(net, train, None, TrainConfig(epochs=epochs, lr=0.02, weight_decay=5e-4,
                                              seed=seed), tmp)
        out[name] = {"top1": evaluate(net.eval(), test)["top1"],
                     "macs_ratio": measured_cost(net, (ex,))[1] / base, "epochs": epochs}
        print(name, out[name], flush=True)
        if cache is not None:
            done[name] = out[name]
            atomic_write_text(cache, json.dumps(done, indent=1))
    return out


def invocation() -> str:
    """The command line of this run, stored with its results so a report can quote it."""
    threads = os.environ.get("PRUNEKIT_THREADS")
    return (f"PRUNEKIT_THREADS={threads} " if threads else "") + "python " + shlex.join(sys.argv)


def command_block(doc: dict, script: str, out: Path, extra: str = "") -> str:
    """Markdown: the command that produced ``doc`` (saved as ``out``), the one that renders
    its report, and where its console log lies."""
    return (f"```bash\n{doc['command']}\npython benchmarks/{script} --report {out}\n```\n\n"
            f"Console output with the progress bars removed: `results/{out.stem}.log`{extra}.")
