"""Training, evaluation, fine-tuning and distillation."""

from .engine import Callback, TrainConfig, evaluate, fit, lr_at

__all__ = ["Callback", "TrainConfig", "evaluate", "fit", "lr_at"]
