"""Training, evaluation, fine-tuning, distillation and weight averaging."""

from .average import average_state_dicts, recalibrate_bn
from .engine import Callback, TrainConfig, evaluate, fit, lr_at

__all__ = ["Callback", "TrainConfig", "average_state_dicts", "evaluate", "fit", "lr_at",
           "recalibrate_bn"]
