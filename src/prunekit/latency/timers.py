"""Timing a module on a target: eager PyTorch (CPU or CUDA) or ONNX Runtime, warm-up runs
then the median of repeated runs. A :class:`Timer` is anything with ``time(module,
inputs) -> seconds``; tests pass a synthetic one."""

from __future__ import annotations

import contextlib
import io
import statistics
import time
from typing import Protocol, Sequence

import torch
from torch import nn

from .target import Target

__all__ = ["Timer", "TorchTimer", "OrtTimer", "timer_for"]


class Timer(Protocol):
    def time(self, module: nn.Module, inputs: Sequence[torch.Tensor]) -> float:
        """Median seconds of one call of ``module(*inputs)``."""


@contextlib.contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class TorchTimer:
    """Eager PyTorch, in inference mode, on ``target.device``."""

    def __init__(self, target: Target) -> None:
        self.target = target

    def time(self, module: nn.Module, inputs: Sequence[torch.Tensor]) -> float:
        dev = torch.device(self.target.device)
        module = module.eval().to(dev)
        xs = [x.to(dev) for x in inputs]
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        out = []
        with _threads(self.target.threads), torch.inference_mode():
            for _ in range(self.target.warmup):
                module(*xs)
            sync()
            for _ in range(self.target.reps):
                t = time.perf_counter()
                module(*xs)
                sync()
                out.append(time.perf_counter() - t)
        return statistics.median(out)


class OrtTimer:
    """ONNX Runtime: the module exported (opset 18) and run in an InferenceSession with
    ``target.threads`` intra-op threads and full graph optimisation (conv + BN + ReLU
    fused, as deployment runs it)."""

    def __init__(self, target: Target) -> None:
        self.target = target

    def session(self, module: nn.Module, inputs: Sequence[torch.Tensor]):
        import onnxruntime as ort
        buf = io.BytesIO()
        names = [f"input{i}" for i in range(len(inputs))]
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            torch.onnx.export(module.eval(), tuple(inputs), buf, input_names=names,
                              opset_version=18, dynamo=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.target.threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        providers = ["CUDAExecutionProvider"] if self.target.device == "cuda" else \
            ["CPUExecutionProvider"]
        sess = ort.InferenceSession(buf.getvalue(), opts, providers=providers)
        return sess, {n: x.detach().cpu().numpy() for n, x in zip(names, inputs)}

    def time(self, module: nn.Module, inputs: Sequence[torch.Tensor]) -> float:
        sess, feed = self.session(module, inputs)
        for _ in range(self.target.warmup):
            sess.run(None, feed)
        out = []
        for _ in range(self.target.reps):
            t = time.perf_counter()
            sess.run(None, feed)
            out.append(time.perf_counter() - t)
        return statistics.median(out)


def timer_for(target: Target) -> Timer:
    """The timer of ``target``'s backend (checked available first)."""
    target.check_available()
    return OrtTimer(target) if target.backend == "onnxruntime" else TorchTimer(target)
