"""Declared types and ranges of the command line's options, checked before any work.

Each option resolved from ``--config``, ``--set`` and the flags is checked against its
spec here, so a bad value fails at once with one line that names the option, says
what it must be and shows what it got (``epochs must be an integer >= 1, got 'ten'``).
Booleans are never numbers (``target=true`` is refused), and numbers are not booleans.
Choices and finer ranges that a method owns (a criterion's name, LAPP's threshold
learning rate) are checked by the method's own config with the same kind of message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import CliError


@dataclass(frozen=True)
class Spec:
    """``kind``: int, float, bool, str, strs (a list of strings) or range (two floats).
    ``lo``/``hi``: bounds, open where ``lo_open``/``hi_open``; ``nullable``: None allowed."""

    kind: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    nullable: bool = False


def _i(lo: int | None = None, nullable: bool = False) -> Spec:
    return Spec("int", lo, nullable=nullable)


def _f(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
       hi_open: bool = False, nullable: bool = False) -> Spec:
    return Spec("float", lo, hi, lo_open, hi_open, nullable)


_PATH = Spec("str", nullable=True)
_BOOL = Spec("bool")
_FLAG = Spec("bool", nullable=True)

SPECS: dict[str, Spec] = {
    "model": _PATH, "checkpoint": _PATH, "pruned": _PATH, "data": _PATH, "out": _PATH,
    "epochs": _i(1), "lr": _f(0, lo_open=True), "batch_size": _i(1),
    "weight_decay": _f(0), "schedule": Spec("str"), "seed": _i(0), "subset": _i(0),
    "method": Spec("str"), "target": _f(0, 1, lo_open=True), "metric": Spec("str"),
    "criterion": Spec("str"), "allocation": _PATH, "round_to": _i(1),
    "finetune_epochs": _i(0), "finetune_lr": _f(0, lo_open=True),
    "distill_alpha": _f(0, 1), "channels_last": _BOOL, "max_steps_per_epoch": _i(0),
    "precision": Spec("str"), "label_smoothing": _f(0, 1, hi_open=True),
    "warmup_epochs": _f(0), "distill_temperature": _f(0, lo_open=True), "cutout": _i(0),
    "variant": Spec("str"), "selector": Spec("str"), "reweight": _BOOL, "scope": Spec("str"),
    "groups": Spec("strs"), "calib": _i(1), "stochastic": _f(0, 1), "intercept": _BOOL,
    "bypass": _BOOL, "progressive": _BOOL, "hold": _BOOL, "prune_epochs": _f(nullable=True),
    "penalty": _f(nullable=True), "temperature": _f(nullable=True),
    "threshold_lr": _f(nullable=True), "bypass_scale": _f(nullable=True),
    "score": _PATH, "score_momentum": _f(nullable=True), "leak": _f(nullable=True),
    "parts": _i(1), "pop_size": _i(4), "generations": _i(0), "chain_points": _i(2),
    "feature_steps": _i(0), "executor": Spec("str"), "workers": _i(1),
    "param": Spec("str"), "regime": Spec("range", 0, 1, lo_open=True), "samples": _i(1),
    "steps": _i(1), "held": _i(1), "pool": _i(1), "step_batch": _i(1),
    "teacher": _PATH, "teacher_checkpoint": _PATH,
    "checkpoints": Spec("strs", nullable=True), "bn_batches": _i(0),
    "resume": _FLAG, "distill": _FLAG, "list": _FLAG, "all": _FLAG, "overwrite": _FLAG,
    "device": _PATH, "backend": _PATH, "batch": _i(1, nullable=True),
    "threads": _i(1, nullable=True),
    "budget_minutes": _f(0, lo_open=True, nullable=True), "evals": _i(1, nullable=True),
    "holdout": _i(1, nullable=True), "onnx": Spec("bool", nullable=True),
}

_TRUE, _FALSE = ("true", "yes", "on"), ("false", "no", "off")


def check_options(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` with every declared option checked (and ints given as floats such as
    ``2.0`` made ints); raises CliError naming the first bad one."""
    out = dict(cfg)
    for key, value in cfg.items():
        spec = SPECS.get(key)
        if spec is not None:
            out[key] = _check(key, value, spec)
    return out


def _check(key: str, v: Any, spec: Spec) -> Any:
    if v is None and spec.nullable:
        return v
    if spec.kind == "int":
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise CliError(f"{key} must be an integer{_bounds(spec)}, got {v!r}")
        return _in_range(key, v, spec, "an integer")
    if spec.kind == "float":
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                raise CliError(f"{key} must be a number{_bounds(spec)}, got {v!r}") from None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise CliError(f"{key} must be a number{_bounds(spec)}, got {v!r}")
        if not math.isfinite(v):
            raise CliError(f"{key} must be a finite number, got {v!r}")
        return _in_range(key, v, spec, "a number")
    if spec.kind == "bool":
        if isinstance(v, bool) or (isinstance(v, str) and v.strip().lower() in _TRUE + _FALSE):
            return v
        raise CliError(f"{key} must be true or false, got {v!r}")
    if spec.kind == "str":
        if not isinstance(v, str) or not v:
            raise CliError(f"{key} must be a non-empty text, got {v!r}")
        return v
    if spec.kind == "strs":
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, (list, tuple)) or not all(isinstance(s, str) and s for s in v):
            raise CliError(f"{key} must be a list of names, got {v!r}")
        return list(v)
    if spec.kind == "range":
        ok = isinstance(v, (list, tuple)) and len(v) == 2 and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
        if not ok or not (_inside(v[0], spec) and _inside(v[1], spec) and v[0] < v[1]):
            raise CliError(f"{key} must be two numbers lo < hi{_bounds(spec)}, got {v!r}")
        return [float(x) for x in v]
    raise AssertionError(spec.kind)


def _inside(v: float, spec: Spec) -> bool:
    if spec.lo is not None and (v < spec.lo or (spec.lo_open and v == spec.lo)):
        return False
    return not (spec.hi is not None and (v > spec.hi or (spec.hi_open and v == spec.hi)))


def _in_range(key: str, v: Any, spec: Spec, what: str) -> Any:
    if not _inside(v, spec):
        raise CliError(f"{key} must be {what}{_bounds(spec)}, got {v!r}")
    return v


def _bounds(spec: Spec) -> str:
    if spec.lo is not None and spec.hi is not None:
        return f" in {'(' if spec.lo_open else '['}{spec.lo:g}, {spec.hi:g}" \
               f"{')' if spec.hi_open else ']'}"
    if spec.lo is not None:
        return f" {'>' if spec.lo_open else '>='} {spec.lo:g}"
    return ""


# options of the run's context, read by the methods whose ``needs`` (or ``parallel``) ask
CONTEXT_OPTIONS: dict[str, frozenset[str]] = {
    "calibration": frozenset({"calib"}), "train": frozenset({"epochs", "lr"}),
    "labelled": frozenset({"pool"}), "parallel": frozenset({"executor", "workers"}),
    "resumable": frozenset({"resume"}),
    "latency": frozenset({"device", "backend", "batch", "threads"}),
}
# the budget fields every method's config has (MethodConfig's)
SHARED_OPTIONS = frozenset({"target", "metric", "round_to", "min_width", "ignore", "groups",
                            "seed"})


def method_options() -> dict[str, frozenset[str]]:
    """Per registered method, the options of ``prune`` only it (and methods like it) read:
    its config's own fields and the context options its needs ask for. Generated from the
    registry, so a new method needs no entry here."""
    from dataclasses import fields

    from .methods.protocol import methods
    out = {}
    for name, m in methods().items():
        own = {f.name for f in fields(m.config)} - SHARED_OPTIONS
        for kind in _kinds(m):
            own |= CONTEXT_OPTIONS[kind]
        out[name] = frozenset(own)
    return out


def _kinds(m: Any) -> list[str]:
    return [*m.needs, *(["parallel"] if getattr(m, "parallel", False) else []),
            *(["resumable"] if getattr(m, "resumable", False) else []),
            *(["latency"] if "latency" in getattr(m, "metrics", ()) else [])]


def check_method_options(method: str, given: set[str]) -> None:
    """Refuse an option the user set that ``method`` does not use (instead of ignoring it)."""
    table = method_options()
    mine = table.get(method)
    if mine is None:
        return      # an unknown method is reported by the command
    owned = frozenset().union(*table.values())
    for key in sorted(given & owned - mine):
        users = sorted(m for m, keys in table.items() if key in keys)
        raise CliError(f"{key} is not used by method {method} (it is an option of "
                       f"{', '.join(users)}); remove it or choose one of those methods")


# the options each command reads; one set on the command line that the command does not
# read is refused (a --config file may hold options for several commands)
_TRAIN = frozenset({"epochs", "lr", "batch_size", "weight_decay", "schedule", "seed", "subset",
                    "label_smoothing", "warmup_epochs", "distill_alpha", "distill_temperature",
                    "channels_last", "max_steps_per_epoch", "precision", "cutout"})
_FINETUNE = _TRAIN - {"epochs", "lr"} | {"finetune_epochs", "finetune_lr"}
_IO = frozenset({"model", "checkpoint", "data", "out", "overwrite"})
COMMAND_OPTIONS: dict[str, frozenset[str]] = {
    "train": _IO | _TRAIN | {"teacher", "teacher_checkpoint", "resume"},
    "average": frozenset({"model", "checkpoint", "pruned", "checkpoints", "data", "out",
                          "overwrite", "bn_batches", "batch_size", "seed", "subset", "cutout"}),
    "eval": frozenset({"model", "checkpoint", "pruned", "data"}),
    "prune": _IO | _FINETUNE | {"method"} | SHARED_OPTIONS,   # + method_options()
    "reweight": _IO | _FINETUNE | {"pruned", "calib"},
    "space": _IO | _FINETUNE | SHARED_OPTIONS,                # + the space method's
    "finetune": _IO | _TRAIN - {"lr"} | {"pruned", "distill", "finetune_lr"},
    "export": frozenset({"model", "checkpoint", "pruned", "out", "overwrite"}),
    "info": frozenset({"model", "checkpoint", "pruned", "list", "all"}),
    "latency": frozenset({"model", "checkpoint", "out", "overwrite", "target", "device",
                          "backend", "batch", "threads"}),
    "compress": _IO | {"resume", "subset", "cutout", "device", "backend", "batch", "threads",
                       "target", "metric", "method", "round_to", "allocation", "calib",
                       "bn_batches",
                       "budget_minutes", "epochs", "lr", "distill_alpha",
                       "distill_temperature", "weight_decay", "batch_size", "evals",
                       "holdout", "precision", "seed", "onnx"},
}


def command_options(command: str) -> frozenset[str]:
    """The options ``command`` reads; ``prune``'s include every registered method's."""
    mine = COMMAND_OPTIONS.get(command, frozenset())
    if command == "prune":
        mine = mine | frozenset().union(*method_options().values())
    elif command == "space":
        mine = mine | method_options()["space"]
    return mine


def check_command_options(command: str, given: set[str]) -> None:
    """Refuse an option set on the command line that ``command`` does not read."""
    if command not in COMMAND_OPTIONS:
        return
    mine = command_options(command)
    unused = sorted(given - mine)
    if unused:
        users = [c for c in COMMAND_OPTIONS if unused[0] in command_options(c)]
        raise CliError(f"{unused[0]} is not used by prunekit {command}"
                       + (f" (it is an option of {', '.join(users)})" if 0 < len(users) <= 3
                          else "")
                       + "; remove it")
