"""Timing a module on a target: eager PyTorch (CPU or CUDA) or ONNX Runtime, warm-up runs
then the median of repeated runs. A :class:`Timer` is anything with ``time(module,
inputs) -> seconds``; tests pass a synthetic one."""

from __future__ import annotations

import contextlib
import io
import statistics
import time
from typing import Callable, Iterator, Protocol, Sequence

import torch
from torch import nn

from ..errors import TargetError
from .target import Target

__all__ = ["Timer", "TorchTimer", "OrtTimer", "median_seconds", "retain_memory", "timer_for"]


class Timer(Protocol):
    def time(self, module: nn.Module, inputs: Sequence[torch.Tensor]) -> float:
        """Median seconds of one call of ``module(*inputs)``."""


def median_seconds(run: Callable[[], None], reps: int) -> float:
    """Median wall-clock seconds of ``reps`` calls of ``run``."""
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        run()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


@contextlib.contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_RETAINED = False


def retain_memory() -> bool:
    """Make glibc's allocator keep freed memory (no ``mmap`` per large block, no trimming
    back to the OS), so repeated calls reuse warm pages as a serving process does.
    Process-wide and applied once; False where the allocator is not glibc's."""
    global _RETAINED
    if not _RETAINED:
        import ctypes
        import ctypes.util
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            m_trim_threshold, m_mmap_threshold = -1, -3
            _RETAINED = bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and \
                bool(libc.mallopt(m_trim_threshold, (1 << 31) - 1))
        except (OSError, AttributeError):
            _RETAINED = False
    return _RETAINED


class _Timed:
    """A timer from its ``runner``: the median of ``target.reps`` runs after warm-up."""

    target: Target

    def runner(self, module: nn.Module, inputs: Sequence[torch.Tensor]
               ) -> contextlib.AbstractContextManager[Callable[[], None]]:
        raise NotImplementedError

    def time(self, module: nn.Module, inputs: Sequence[torch.Tensor]) -> float:
        with self.runner(module, inputs) as run:
            return median_seconds(run, self.target.reps)


class TorchTimer(_Timed):
    """Eager PyTorch, in inference mode, on ``target.device`` (on CPU with
    :func:`retain_memory` unless the target says otherwise)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        if target.device == "cpu" and target.retain_memory:
            retain_memory()

    @contextlib.contextmanager
    def runner(self, module: nn.Module, inputs: Sequence[torch.Tensor]
               ) -> Iterator[Callable[[], None]]:
        """A zero-argument call of ``module(*inputs)`` on the target (synchronised), warmed
        up, valid inside the context."""
        dev = torch.device(self.target.device)
        module = module.eval().to(dev)
        xs = [x.to(dev) for x in inputs]
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

        def run() -> None:
            module(*xs)
            sync()
        with _threads(self.target.threads), torch.inference_mode():
            for _ in range(self.target.warmup):
                run()
            yield run


class OrtTimer(_Timed):
    """ONNX Runtime: the module exported (opset 18) and run in an InferenceSession with
    ``target.threads`` intra-op threads and full graph optimisation (conv + BN + ReLU
    fused, as deployment runs it)."""

    def __init__(self, target: Target) -> None:
        self.target = target

    def session(self, module: nn.Module, inputs: Sequence[torch.Tensor]):
        import onnxruntime as ort
        names = [f"input{i}" for i in range(len(inputs))]
        data = _export(module.eval(), tuple(inputs), names)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.target.threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        providers = ["CUDAExecutionProvider"] if self.target.device == "cuda" else \
            ["CPUExecutionProvider"]
        sess = ort.InferenceSession(data, opts, providers=providers)
        return sess, {n: x.detach().cpu().numpy() for n, x in zip(names, inputs)}

    @contextlib.contextmanager
    def runner(self, module: nn.Module, inputs: Sequence[torch.Tensor]
               ) -> Iterator[Callable[[], None]]:
        """One session of the exported module, warmed up: a zero-argument run."""
        sess, feed = self.session(module, inputs)

        def run() -> None:
            sess.run(None, feed)
        for _ in range(self.target.warmup):
            run()
        yield run


def _export(module: nn.Module, inputs: tuple, names: list[str]) -> bytes:
    """ONNX bytes of ``module``: the TorchScript-based exporter, else torch.export's
    (``dynamo=True``, needs onnxscript); a module neither exports is refused, naming it."""
    import warnings
    errors = []
    for dynamo in (False, True):
        buf = io.BytesIO()
        try:
            with torch.no_grad(), warnings.catch_warnings(), \
                    contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(module, inputs, buf, input_names=names, opset_version=18,
                                  dynamo=dynamo)
            return buf.getvalue()
        except Exception as exc:      # both exporters raise many kinds; report them
            errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    inner = getattr(module, "model", module)
    raise TargetError(f"backend onnxruntime cannot time {type(inner).__name__}: it does not "
                      f"export to ONNX ({'; '.join(errors)}); use --backend torch")


def timer_for(target: Target) -> Timer:
    """The timer of ``target``'s backend (checked available first)."""
    target.check_available()
    return OrtTimer(target) if target.backend == "onnxruntime" else TorchTimer(target)
