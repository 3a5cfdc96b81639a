"""Where a model will run: device, backend, batch and threads, and the cache key that
names a measurement made there (library versions and the processor included)."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import TargetError

__all__ = ["BACKENDS", "DEVICES", "Target"]

BACKENDS = ("torch", "onnxruntime")
DEVICES = ("cpu", "cuda")


def _default_threads() -> int:
    return min(2, os.cpu_count() or 1)


@dataclass(frozen=True)
class Target:
    """``device``: "cpu" or "cuda"; ``backend``: "torch" (eager PyTorch) or "onnxruntime";
    ``batch``: the batch size the model serves; ``threads``: intra-op threads; each
    timing is the median of ``reps`` runs after ``warmup`` runs.

    ``retain_memory`` (CPU, eager PyTorch): keep freed memory in the process instead of
    handing it back to the operating system after every call. With glibc's defaults,
    each large activation is a fresh ``mmap`` whose pages fault in on first touch and are
    unmapped when freed, so every forward pass pays page faults in proportion to its
    activation memory. A serving process (jemalloc, tcmalloc, or a warmed
    arena) does not pay that, and a speed-up measured with it is biased toward plans that
    shrink activations. It is set with ``mallopt`` for the whole process (where glibc is
    the allocator; elsewhere nothing changes) and is part of the cache key."""

    device: str = "cpu"
    backend: str = "torch"
    batch: int = 1
    threads: int = field(default_factory=_default_threads)
    warmup: int = 3
    reps: int = 10
    retain_memory: bool = True

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise TargetError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.backend not in BACKENDS:
            raise TargetError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        for name in ("batch", "threads", "reps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise TargetError(f"{name} must be a whole number >= 1, got {v!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise TargetError(f"warmup must be a whole number >= 0, got {self.warmup!r}")
        if not isinstance(self.retain_memory, bool):
            raise TargetError(f"retain_memory must be true or false, "
                              f"got {self.retain_memory!r}")

    def check_available(self) -> None:
        """Refuse a target this machine cannot measure, saying what is missing."""
        import torch
        if self.device == "cuda" and not torch.cuda.is_available():
            raise TargetError("device 'cuda' was asked for, but PyTorch sees no GPU here; "
                              "use --device cpu or measure on the machine with the GPU")
        if self.backend == "onnxruntime":
            try:
                import onnxruntime as ort
            except ImportError:
                raise TargetError("backend 'onnxruntime' needs the onnxruntime package "
                                  "(pip install onnxruntime)") from None
            if self.device == "cuda" and \
                    "CUDAExecutionProvider" not in ort.get_available_providers():
                raise TargetError("this onnxruntime has no CUDA execution provider; install "
                                  "onnxruntime-gpu or use --backend torch")

    def key(self) -> dict[str, Any]:
        """What a measurement depends on: the target and the machine's libraries and
        processor. A table measured under another key is not reused."""
        import torch
        key: dict[str, Any] = {k: v for k, v in asdict(self).items()
                               if k not in ("warmup", "reps")}
        if self.backend != "torch" or self.device != "cpu":
            key.pop("retain_memory")         # only eager PyTorch on CPU allocates through it
        key.update(torch=torch.__version__, machine=platform.machine(), cpu=_cpu_name())
        if self.backend == "onnxruntime":
            import onnxruntime as ort
            key["onnxruntime"] = ort.__version__
        if self.device == "cuda":
            key["gpu"] = torch.cuda.get_device_name()
        return key

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Target":
        names = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - names)
        if unknown:
            raise TargetError(f"unknown latency target fields {unknown}")
        return cls(**d)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
