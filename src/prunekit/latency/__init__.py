"""Latency models per device and backend: per-layer tables measured on the machine the
model will run on, cached on disk, calibrated and validated on whole-model measurements.
Imported on demand (``import prunekit`` does not load it)."""

from .measured import alternating_ratio, meet_measured, measured_ratio
from .model import Bound, LatencyModel, batched, time_model
from .table import LayerTable, cache_dir
from .target import BACKENDS, DEVICES, Target
from .timers import OrtTimer, Timer, TorchTimer, timer_for

__all__ = ["alternating_ratio", "meet_measured", "measured_ratio", "Bound", "time_model", "BACKENDS", "DEVICES", "LatencyModel", "LayerTable", "OrtTimer", "Target", "Timer",
           "TorchTimer", "batched", "cache_dir", "timer_for"]
