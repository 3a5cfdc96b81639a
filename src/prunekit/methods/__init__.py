"""Pruning methods: each a frozen config dataclass and one function."""

from .base import Result
from .oneshot import OneShotConfig, prune_oneshot

__all__ = ["Result", "OneShotConfig", "prune_oneshot"]
