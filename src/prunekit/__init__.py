"""prunekit: structured (channel) pruning of PyTorch networks into smaller dense models."""

from .errors import (ExampleInputError, PlanError, PlanFormatError, PlanMismatchError,
                     PrunekitError, TargetError, TraceError, UnreachableTargetError,
                     WeightsMismatchError)
from .graph import ChannelGraph, Cost, Group
from .plan import Plan

__version__ = "0.1.0"
__all__ = ["ChannelGraph", "Cost", "Group", "Plan", "PrunekitError", "TargetError",
           "UnreachableTargetError", "PlanError", "PlanMismatchError", "PlanFormatError",
           "ExampleInputError", "TraceError", "WeightsMismatchError"]
