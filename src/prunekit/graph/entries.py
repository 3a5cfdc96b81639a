"""The records a :class:`~prunekit.graph.builder.Builder` keeps while it walks a captured
graph (producers, cost terms, patches, normalisation statistics, followed attributes), and
:class:`Producer`, the public record of :meth:`prunekit.graph.ChannelGraph.producers`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Source:
    """A block of elements created by one producer, e.g. a conv's output channels."""

    name: str
    ids: np.ndarray
    kind: str


@dataclass(frozen=True)
class Producer:
    """A public record of :meth:`prunekit.graph.ChannelGraph.producers`: the elements one
    producer creates (a conv's or linear's output channels, an embedding's features, a
    padding's zero channels), by its ``name`` (the module, or the op), ``kind`` and the
    ``units`` each element belongs to."""

    name: str
    kind: str
    units: np.ndarray


@dataclass(frozen=True)
class CostTerm:
    """MACs = coeff * product of the kept counts of ``factors`` (1-D element arrays)."""

    coeff: int
    factors: tuple[np.ndarray, ...]
    where: str
    node: str = ""      # the traced node whose op this is


@dataclass(frozen=True)
class Patch:
    """A functional op whose constant arguments depend on the kept channels."""

    kind: str
    node_name: str
    owner: str              # qualified name of the innermost module that runs the op
    index_in_owner: int     # k-th op of this target inside the owner's forward
    target: Any
    layout_ids: tuple[np.ndarray, ...]
    pair: int               # position of the (before, after) pair in the widths tuple


@dataclass(frozen=True)
class Stat:
    """An op whose statistics run over a pruned dim (a norm, a mean over channels).

    The reference computes it over the kept channels of ``ids`` along ``dim`` of its
    first input; ``kind`` is ``layer_norm``, ``rms_norm``, ``group_norm`` or ``reduce``.
    """

    kind: str
    dim: int
    ids: np.ndarray


@dataclass(frozen=True)
class Follow:
    """A module attribute that the model's code reads and that follows a kept count:
    ``getattr(module, attr)[index] = kept(ids) // per`` (``index`` None: the whole value)."""

    fqn: str
    attr: str
    index: int | None
    ids: np.ndarray
    per: int = 1
