"""Training, evaluation, fine-tuning and distillation."""

from .engine import TrainConfig, evaluate, fit, lr_at

__all__ = ["TrainConfig", "evaluate", "fit", "lr_at"]
