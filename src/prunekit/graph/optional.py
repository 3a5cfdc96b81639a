"""Rules for torchvision's own ops and layers, registered only once torchvision is imported.

``import prunekit`` must not import torchvision; a model built from torchvision has
already imported it, so checking ``sys.modules`` at trace time is enough.
"""

from __future__ import annotations

import sys

_leaf_types: tuple[type, ...] | None = None


def torchvision_leaves() -> tuple[type, ...]:
    """Register the torchvision rules (once) and return the layer types traced as leaves."""
    global _leaf_types
    if _leaf_types is not None:
        return _leaf_types
    if "torchvision" not in sys.modules:
        return ()
    from torchvision.ops import stochastic_depth

    from .builder import function_rule, module_rule
    from .rules_shape import first_arg
    from .window_attention import TORCHVISION_WINDOW, PrunedWindowAttention, window_rule
    function_rule(stochastic_depth)(first_arg)
    _leaf_types = TORCHVISION_WINDOW + (PrunedWindowAttention,)
    module_rule(*_leaf_types)(window_rule)
    return _leaf_types
