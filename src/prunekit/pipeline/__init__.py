"""The shortest road from a trained model to a faster one that keeps its accuracy:
:func:`compress` (select, re-estimate BatchNorm, recover by distillation within a time
budget, keep the best held-out checkpoint) and its report. ``prunekit compress`` on the
command line."""

from .compress import CompressResult, compress
from .config import CompressConfig
from .schedule import Schedule, plan_schedule
from .stages import CompressData

__all__ = ["CompressConfig", "CompressData", "CompressResult", "Schedule", "compress",
           "plan_schedule"]
