"""The channel-dependency graph: tracing, rules, groups, cost and surgery."""

from .core import ChannelGraph, Group
from .cost import Cost

__all__ = ["ChannelGraph", "Group", "Cost"]
