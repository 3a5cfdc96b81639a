"""Typed exceptions. Every message says what went wrong and what to do about it."""

from __future__ import annotations


class PrunekitError(Exception):
    """Base class of every error prunekit raises on purpose."""


class TargetError(PrunekitError, ValueError):
    """A pruning target outside (0, 1] or of an unknown kind."""


class UnreachableTargetError(PrunekitError):
    """The target cannot be met even with every prunable group at its minimum width."""


class PlanError(PrunekitError, ValueError):
    """A plan that is invalid for the graph it is applied to (unknown group, bad indices)."""


class PlanMismatchError(PlanError):
    """A plan made for a different model (fingerprint mismatch)."""


class PlanFormatError(PlanError):
    """Plan JSON that is malformed or of a newer format version."""


class ExampleInputError(PrunekitError, ValueError):
    """The model rejected the example inputs given to build the graph."""


class TraceError(PrunekitError):
    """The model cannot be traced symbolically (data-dependent control flow, ...)."""


class WeightsMismatchError(PrunekitError):
    """A weights file whose tensors do not match the pruned architecture of the plan."""


class CliError(PrunekitError):
    """A command-line user error: printed as one line, exit code 2."""


class VerificationError(PrunekitError):
    """A pruned model that does not compute what the reference computes (or fails to run)."""


class CheckpointError(PrunekitError, ValueError):
    """A checkpoint that is unreadable, unsafe to load, or saved by another model."""
