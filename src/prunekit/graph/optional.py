"""Rules for layers of torchvision and Hugging Face transformers, registered only once the
library is imported.

``import prunekit`` must not import either; a model built from one has already
imported it, so checking ``sys.modules`` at capture time is enough. They use the
same public registry as a user's own layers (``prunekit.graph.rules``).
"""

from __future__ import annotations

import sys

_leaf_types: tuple[type, ...] | None = None


def torchvision_leaves() -> tuple[type, ...]:
    """Register the torchvision rules (once) and return the layer types traced as leaves."""
    global _leaf_types
    _transformers_rules()
    _timm_rules()
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


_registered: set[str] = set()


def _first_time(library: str) -> bool:
    """True once, the first time ``library`` is found imported (its rules then register)."""
    if library in _registered or library not in sys.modules:
        return False
    _registered.add(library)
    return True


# attention classes whose forward passes these attributes as constant sizes
# (``x.split(self.split_size)``, ``view(..., self.num_heads, self.head_dim)``, merging heads
# back to ``self.embed_dim``): surgery sets them to the kept sizes
_DECLARED = {
    "transformers": {
        "transformers.models.gpt2.modeling_gpt2.GPT2Attention": ("split_size",),
        "transformers.models.gpt_neo.modeling_gpt_neo.GPTNeoSelfAttention":
            ("num_heads", "embed_dim"),
        "transformers.models.gptj.modeling_gptj.GPTJAttention":
            ("num_attention_heads", "embed_dim"),
        "transformers.models.bloom.modeling_bloom.BloomAttention": ("num_heads", "hidden_size"),
        "transformers.models.opt.modeling_opt.OPTAttention": ("num_heads", "embed_dim")},
    "timm": {"timm.layers.attention.Attention": ("num_heads", "attn_dim")},
}


def _declare(library: str) -> None:
    import importlib
    from .builder import size_attributes
    for path, attrs in _DECLARED[library].items():
        mod_name, _, cls_name = path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(mod_name), cls_name)
        except (ImportError, AttributeError):
            continue
        size_attributes(cls, *attrs)


def _transformers_rules() -> None:
    """transformers' ``Conv1D`` (GPT-2 family): a linear layer with an (in, out) weight."""
    if not _first_time("transformers"):
        return
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return
    from .builder import module_rule
    from .hf_config import update_config
    from .rules_layers import hf_conv1d
    from .surgery import AFTER_SURGERY
    module_rule(Conv1D)(hf_conv1d)
    _declare("transformers")
    AFTER_SURGERY.append(update_config)


def _timm_rules() -> None:
    """timm's shared attention reshapes with ``self.num_heads`` and ``self.attn_dim``."""
    if _first_time("timm"):
        _declare("timm")
