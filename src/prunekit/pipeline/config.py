"""The settings of a compress run (:func:`prunekit.pipeline.compress`): what to reach,
how to select, how long to recover. Frozen, validated on construction, JSON round-trip."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from ..errors import TargetError

__all__ = ["CompressConfig", "METHODS", "METRICS"]

METHODS = ("auto", "submodular", "oneshot")
METRICS = ("macs", "params", "latency")


@dataclass(frozen=True)
class CompressConfig:
    """``target``: fraction of ``metric`` to keep. ``method``: the selection; ``auto`` is
    submodular selection with least-squares reweighting when calibration images are
    given, one-shot L1 otherwise. ``allocation``: the method's per-group widths. None:
    submodular's ``accuracy`` where there is a held-out split (one-group pruning curves
    scored on it, Kuzmin et al.'s equal-accuracy rule), one-shot's ``marginal`` under a
    latency budget, else the method's default. ``calib``: calibration images for the selection.
    ``bn_batches``: training batches over which the pruned model's BatchNorm statistics
    are re-estimated before recovery (0: keep them; the re-estimated ones are kept only
    if they score no worse on the held-out split: after reweighting, the statistics the
    selection left are often the better ones). Recovery distils from the unpruned
    model for ``budget_minutes`` of training (its schedule sized by timing a few steps on
    this machine) or ``epochs`` (one of the two; 0 is refused; neither: no recovery): SGD,
    peak ``lr`` with cosine decay, loss ``(1 - distill_alpha) * CE + distill_alpha * T^2
    KL`` at ``distill_temperature`` T.
    ``evals``: held-out evaluations over the recovery (the curve, and the best
    checkpoint: the highest held-out top-1); ``holdout``: held-out training images
    (at most a tenth of them). ``precision``: of the recovery's forward passes; ``auto``
    is bf16 autocast where the CPU computes bf16 natively (AVX512-BF16/AMX: 1.6-1.75x
    the steps in a time budget here, ``benchmarks/train_precision.md``), else fp32.
    ``onnx``: export the result (needs onnx/onnxruntime)."""

    VERSION: ClassVar[int] = 1

    target: float = 0.5
    metric: str = "macs"
    method: str = "auto"
    round_to: int = 1
    allocation: str | None = None
    calib: int = 512
    bn_batches: int = 50
    budget_minutes: float | None = None
    epochs: int | None = None
    lr: float = 0.02
    distill_alpha: float = 0.9
    distill_temperature: float = 4.0
    weight_decay: float = 5e-4
    batch_size: int = 128
    evals: int = 10
    holdout: int = 2000
    precision: str = "auto"
    seed: int = 0
    onnx: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.target, (int, float)) and 0 < self.target <= 1):
            raise TargetError(f"target must be in (0, 1], got {self.target!r}")
        for name, value, allowed in (("metric", self.metric, METRICS),
                                     ("method", self.method, METHODS),
                                     ("precision", self.precision, ("auto", "fp32", "bf16"))):
            if value not in allowed:
                raise TargetError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if self.budget_minutes is not None and self.epochs is not None:
            raise TargetError("give the recovery as budget_minutes or as epochs, not both")
        m, e = self.budget_minutes, self.epochs
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float))
                              or not m > 0):
            raise TargetError(f"budget_minutes must be > 0 (leave it out for no recovery), "
                              f"got {m!r}")
        if e is not None and (isinstance(e, bool) or not isinstance(e, int) or e < 1):
            raise TargetError(f"epochs must be a whole number >= 1 (leave it out for no "
                              f"recovery), got {e!r}")
        for name, low in (("round_to", 1), ("calib", 1), ("batch_size", 1), ("evals", 1),
                          ("holdout", 1), ("bn_batches", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise TargetError(f"{name} must be a whole number >= {low}, got {v!r}")
        if not (self.lr > 0 and 0 <= self.distill_alpha <= 1 and self.distill_temperature > 0
                and self.weight_decay >= 0):
            raise TargetError("lr > 0, 0 <= distill_alpha <= 1, distill_temperature > 0 and "
                              "weight_decay >= 0 are required")

    @property
    def recovers(self) -> bool:
        return self.budget_minutes is not None or self.epochs is not None

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CompressConfig":
        """Inverse of :meth:`to_dict`; also a plain mapping of fields (text values read by
        the declared types). Unknown keys and newer versions are refused."""
        from ..methods.protocol import coerce_fields
        if not isinstance(data, dict):
            raise TargetError(f"a CompressConfig is a mapping, got {type(data).__name__}")
        data = dict(data)
        version = data.pop("version", cls.VERSION)
        if not isinstance(version, int) or version > cls.VERSION:
            raise TargetError(f"CompressConfig version {version!r} is newer than this "
                              f"prunekit's ({cls.VERSION}); upgrade prunekit")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TargetError(f"{unknown[0]} is not an option of compress (its options: "
                              f"{', '.join(sorted(known))})")
        return cls(**coerce_fields(cls, data))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "CompressConfig":
        return cls.from_dict(json.loads(text))
