"""Keep a pruned Hugging Face model's ``config`` in step with its widths.

After surgery, the fields that describe widths are rewritten where the pruned model
shows one value for them:

- ``hidden_size``: the width of the input embeddings (``get_input_embeddings()``);
- ``num_attention_heads`` / ``num_key_value_heads``: the kept query / key-value heads of
  every ``scaled_dot_product_attention`` call (HF's default attention), when equal in
  every layer;
- ``intermediate_size``: the new width of every linear layer whose output width was the
  configured intermediate size, when they all agree.

A field whose widths differ between layers keeps its value and is listed in
``config.prunekit_stale_fields``, and so is the head count when the config has no
``head_dim`` and derives the head size as ``hidden_size // num_attention_heads``, which
no longer holds once heads go without the stream (BERT, GPT-2). A model whose config
lists stale fields is saved and loaded by plan replay (``save_pruned``/``load_pruned``),
not ``save_pretrained``; one without them also round-trips through ``from_pretrained``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

if TYPE_CHECKING:
    from .core import ChannelGraph


def update_config(graph: "ChannelGraph", model: nn.Module, keep: np.ndarray) -> None:
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "to_dict") or not hasattr(model, "get_input_embeddings"):
        return
    found: dict[str, set[int]] = {}
    emb = _input_embeddings(model)
    if isinstance(emb, nn.Embedding):
        found["hidden_size"] = {emb.embedding_dim}
    for hq, hk in graph._b.attention:
        found.setdefault("num_attention_heads", set()).add(_kept(graph, keep, hq))
        if hk is not None:
            found.setdefault("num_key_value_heads", set()).add(_kept(graph, keep, hk))
    width = getattr(cfg, "intermediate_size", None)
    if isinstance(width, int):
        got = _intermediate(graph, model, keep, width)
        if got:
            found["intermediate_size"] = got
    stale = list(getattr(cfg, "prunekit_stale_fields", []))
    size = _head_size(cfg)
    for name, values in found.items():
        old = getattr(cfg, name, None)
        if not isinstance(old, int) or isinstance(old, bool):
            continue
        if len(values) == 1:
            setattr(cfg, name, values.pop())
        elif name not in stale:
            stale.append(name)
    if size is not None and _head_size(cfg) != size and "num_attention_heads" not in stale:
        stale.append("num_attention_heads")
    if stale:
        cfg.prunekit_stale_fields = stale


def _head_size(cfg: Any) -> int | None:
    """The head size the config implies when it has no ``head_dim`` of its own."""
    if isinstance(getattr(cfg, "head_dim", None), int):
        return None
    hidden, heads = getattr(cfg, "hidden_size", None), getattr(cfg, "num_attention_heads", None)
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0:
        return hidden // heads
    return None


def _input_embeddings(model: nn.Module) -> Any:
    try:
        return model.get_input_embeddings()
    except (NotImplementedError, AttributeError):
        return None


def _kept(graph: "ChannelGraph", keep: np.ndarray, heads: np.ndarray) -> int:
    """Kept heads of one attention call (a key/value head's query group shares its unit)."""
    return int(keep[graph.unit_of[heads]].sum())


def _intermediate(graph: "ChannelGraph", model: nn.Module, keep: np.ndarray,
                  width: int) -> set[int]:
    """New output widths of the linear layers whose output width was ``width``."""
    out = set()
    for (fqn, dim), units in graph.slices.items():
        name, _, leaf = fqn.rpartition(".")
        if leaf != "weight" or dim != 0 or len(units) != width:
            continue
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(layer, nn.Linear):
            out.add(int(keep[units].sum()))
    return out
