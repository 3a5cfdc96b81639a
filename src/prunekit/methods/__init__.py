"""Pruning methods under one protocol (:mod:`.protocol`): each a frozen config and a
registered :class:`~.protocol.Method`; :func:`prune` runs the one a config belongs to."""

from .base import FrontPoint, Result
from .oneshot import OneShotConfig, prune_oneshot
from .protocol import (Context, Method, MethodBase, MethodConfig, get_method, methods, prune,
                       register)
from .submodular import SubmodularConfig, prune_submodular, reweight

__all__ = ["Result", "FrontPoint", "Context", "Method", "MethodBase", "MethodConfig", "register", "methods",
           "get_method", "prune", "OneShotConfig", "prune_oneshot", "SubmodularConfig",
           "prune_submodular", "reweight"]
