"""Pruning methods: each a frozen config dataclass and one function."""

from .base import Result
from .oneshot import OneShotConfig, prune_oneshot
from .submodular import SubmodularConfig, prune_submodular, reweight

__all__ = ["Result", "OneShotConfig", "prune_oneshot", "SubmodularConfig", "prune_submodular",
           "reweight"]
