"""The method protocol: one config base, one context, one ``run``, one registry.

Every pruning method is a frozen config (a subclass of :class:`MethodConfig`, which
holds the budget fields every method honours) and a :class:`Method` registered by
name with :func:`register`. ``run(model, config, context)`` returns a
:class:`~prunekit.methods.base.Result`; ``prunekit prune --method NAME`` and
``--set KEY=VALUE`` are generated from the registry and the config's fields, so a
new method needs no command-line code (docs/methods.md, "Write your own method").
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Iterable, Protocol, Sequence

import torch
from torch import nn

from ..errors import TargetError

# what a method may ask of its context (Method.needs)
NEEDS = ("calibration", "train", "labelled")


@dataclass(frozen=True)
class MethodConfig:
    """The budget every method meets. ``target``: fraction of the original ``metric``
    ("macs", "params", or "latency" for methods that declare it, measured by the context's
    latency model) to keep, in (0, 1]; ``round_to``: kept widths are multiples of
    it (or the whole group); ``min_width``: no group keeps fewer channels; ``ignore``:
    fnmatch patterns of modules the graph leaves alone; ``groups``: fnmatch patterns of
    the group ids to prune (empty: every prunable group); ``seed``: every random choice.
    ``VERSION``: bumped when a field changes meaning; :meth:`from_dict` refuses newer."""

    VERSION: ClassVar[int] = 1

    target: float = 0.5
    metric: str = "macs"
    round_to: int = 1
    min_width: int = 1
    ignore: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):   # lists from JSON or YAML become the declared tuples
            v = getattr(self, f.name)
            if isinstance(v, list):
                object.__setattr__(self, f.name, tuple(v))
        self.budget()   # validates target, metric, round_to and min_width

    def budget(self, **kw: Any):
        """The :class:`~prunekit.methods.allocate.Budget` of these fields."""
        from .allocate import Budget
        return Budget(self.target, self.metric, self.round_to, self.min_width, **kw)

    # ------------------------------------------------------------- round trips
    def to_dict(self) -> dict[str, Any]:
        return {"method": method_name(type(self)), "version": self.VERSION,
                **json.loads(json.dumps(asdict(self)))}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MethodConfig":
        """Inverse of :meth:`to_dict`; also takes a plain mapping of fields. An unknown
        key, a value of the wrong type or a newer version is refused, naming it."""
        if not isinstance(data, dict):
            raise TargetError(f"a {cls.__name__} is a mapping of fields, got "
                              f"{type(data).__name__}")
        data = dict(data)
        name, version = data.pop("method", None), data.pop("version", cls.VERSION)
        if name is not None and name != method_name(cls):
            raise TargetError(f"this config is for method {name!r}, not "
                              f"{method_name(cls)!r}")
        if not isinstance(version, int) or version > cls.VERSION:
            raise TargetError(f"{cls.__name__} version {version!r} is newer than this "
                              f"prunekit's ({cls.VERSION}); upgrade prunekit")
        return cls(**coerce_fields(cls, cls.migrate(data, version)))

    @classmethod
    def migrate(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        """``data`` of an older ``version`` in this version's fields (a renamed field)."""
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "MethodConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TargetError(f"{cls.__name__}: not JSON: {exc}") from None
        return cls.from_dict(data)


def config_fields(cls: type) -> dict[str, Any]:
    """Field name -> declared type (resolved) of a config dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def coerce_fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` checked against ``cls``'s fields: unknown keys refused, each value of
    its declared type (text such as "3", "true" or "[1, 2]" read as the type says)."""
    known = config_fields(cls)
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise TargetError(f"{unknown[0]} is not an option of method {method_name(cls)} "
                          f"(its options: {', '.join(sorted(known))})")
    return {k: coerce(k, v, known[k]) for k, v in data.items()}


def coerce(key: str, value: Any, kind: Any) -> Any:
    """``value`` as type ``kind`` or a TargetError that names ``key``."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.strip().lower() in ("none", "null") \
                and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(key, value, inner[0]) if len(inner) == 1 else value
    if isinstance(value, str) and (kind in (int, float, bool) or origin is tuple):
        value = _parse_text(value, kind, origin)
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise TargetError(f"{key} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TargetError(f"{key} must be an integer, got {value!r}")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TargetError(f"{key} must be a number, got {value!r}")
    if kind is str:
        if isinstance(value, str) and value:
            return value
        raise TargetError(f"{key} must be a non-empty text, got {value!r}")
    if origin is tuple:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and \
                len(args) == 2 and args[1] is Ellipsis:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise TargetError(f"{key} must be a list, got {value!r}")
        each = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(each) != len(value):
            raise TargetError(f"{key} must be a list of {len(each)} values, got {value!r}")
        return tuple(coerce(key, v, t) for v, t in zip(value, each))
    return value


def _parse_text(text: str, kind: Any, origin: Any) -> Any:
    t = text.strip()
    if kind is bool:
        low = t.lower()
        return True if low in ("true", "yes", "on", "1") else \
            False if low in ("false", "no", "off", "0") else text
    if origin is tuple and not t.startswith("["):
        return [s.strip() for s in t.split(",") if s.strip()]
    try:
        return json.loads(t)
    except json.JSONDecodeError:
        return text


# --------------------------------------------------------------------- context
@dataclass
class Context:
    """What a run may use besides the model and its config.

    ``example``: the example inputs (a tensor or a tuple of positional inputs).
    ``calibration``: unlabeled inputs (a tensor, or a list of batches) for methods that
    measure activations. ``train``/``test``: iterables of labelled ``(inputs, labels)``
    batches and ``train_config`` (a :class:`~prunekit.train.TrainConfig`) for methods that
    train. ``labelled``: an ``(inputs, labels)`` pair of tensors for methods that score
    candidates by their error. ``folder``: where a method keeps its work (logs,
    checkpoints, the front); with ``resume`` a killed run continues from it.
    ``executor``/``workers``: where candidate evaluations run ("inprocess" or "ray").
    ``progress``: show progress bars (on a terminal). ``latency``: the
    :class:`prunekit.latency.LatencyModel` a ``metric="latency"`` budget is measured
    with."""

    example: Any
    calibration: torch.Tensor | Sequence[torch.Tensor] | None = None
    train: Iterable[Any] | None = None
    test: Iterable[Any] | None = None
    train_config: Any = None
    labelled: tuple[torch.Tensor, torch.Tensor] | None = None
    folder: Path | str | None = None
    resume: bool = False
    executor: str = "inprocess"
    workers: int = 2
    progress: bool = False
    latency: Any = None

    def __post_init__(self) -> None:
        if self.executor not in ("inprocess", "ray"):
            raise TargetError(f"executor must be inprocess or ray, got {self.executor!r}")
        if self.folder is not None:
            self.folder = Path(self.folder)

    @property
    def inputs(self) -> tuple:
        """The example inputs as a tuple of positional arguments."""
        return self.example if isinstance(self.example, tuple) else (self.example,)

    def require(self, method: "Method", config: "MethodConfig | None" = None) -> None:
        """Refuse, before any work, a context that lacks what ``method`` needs (with
        ``config``: :func:`needs_of`)."""
        missing = {"calibration": self.calibration is None,
                   "train": self.train is None or self.train_config is None,
                   "labelled": self.labelled is None}
        for need in sorted(needs_of(method, config) if config is not None else method.needs):
            if missing[need]:
                what = {"calibration": "unlabeled calibration inputs (context.calibration)",
                        "train": "labelled training batches and a TrainConfig "
                                 "(context.train, context.train_config)",
                        "labelled": "labelled inputs (context.labelled = (x, y))"}[need]
                raise TargetError(f"method {method.name} needs {what}")


# -------------------------------------------------------------------- registry
class Method(Protocol):
    """A pruning method: its ``name``, its ``config`` type, what it ``needs`` from the
    context, ``run`` and, for the conformance suite, a config with tiny settings."""

    name: ClassVar[str]
    config: ClassVar[type[MethodConfig]]
    needs: ClassVar[frozenset[str]]
    parallel: ClassVar[bool]          # evaluates candidates through context.executor
    resumable: ClassVar[bool]         # keeps its work in context.folder; resume continues it
    summary: ClassVar[str]

    def run(self, model: nn.Module, config: MethodConfig, context: Context) -> Any: ...

    def test_config(self, **overrides: Any) -> MethodConfig: ...


class MethodBase:
    """Defaults for a :class:`Method`: needs nothing, runs candidates in-process, keeps no
    work folder, and its conformance config is its config's defaults (with overrides).
    A method need not derive from it; it only spares the common declarations."""

    name: ClassVar[str]
    config: ClassVar[type[MethodConfig]]
    needs: ClassVar[frozenset[str]] = frozenset()
    parallel: ClassVar[bool] = False
    resumable: ClassVar[bool] = False
    summary: ClassVar[str] = ""
    metrics: ClassVar[tuple[str, ...]] = ("macs", "params")
    # cheap enough to run again: a measured latency target is met by re-running it
    rerun: ClassVar[bool] = False

    def test_config(self, **overrides: Any) -> MethodConfig:
        return self.config(**overrides)


_REGISTRY: dict[str, Method] = {}
_BUILTIN = ("oneshot", "submodular", "lapp_method", "emo_method", "spaces_method")


def register(cls: type) -> type:
    """Class decorator: register a :class:`Method` under ``cls.name``."""
    bad = set(getattr(cls, "needs", ())) - set(NEEDS)
    if bad or not getattr(cls, "name", None) or not issubclass(cls.config, MethodConfig):
        raise TypeError(f"{cls.__name__}: a method needs a name, a MethodConfig subclass as "
                        f"`config` and `needs` within {NEEDS}")
    _REGISTRY[cls.name] = cls()
    return cls


def _load_builtin() -> None:
    import importlib
    for mod in _BUILTIN:
        importlib.import_module(f"prunekit.methods.{mod}")


def methods() -> dict[str, Method]:
    """Every registered method by name (the built-in ones and any registered since)."""
    _load_builtin()
    return dict(_REGISTRY)


def get_method(name: str) -> Method:
    table = methods()
    if name not in table:
        raise TargetError(f"unknown method {name!r}; available: {', '.join(sorted(table))}")
    return table[name]


def needs_of(method: Method, config: MethodConfig) -> frozenset[str]:
    """What ``method`` needs from its context to run ``config``: its ``needs``, and what
    its optional ``needs_for(config)`` adds for settings that need more (submodular's
    accuracy allocation: labelled images)."""
    extra = getattr(method, "needs_for", None)
    return frozenset(method.needs) | (frozenset(extra(config)) if extra else frozenset())


def method_name(config_type: type) -> str:
    for name, m in _REGISTRY.items():
        if m.config is config_type:
            return name
    return config_type.__name__


def method_of(config: MethodConfig) -> Method:
    _load_builtin()
    for m in _REGISTRY.values():
        if type(config) is m.config:
            return m
    raise TargetError(f"no registered method takes a {type(config).__name__}")


def prune(model: nn.Module, config: MethodConfig, context: Context | Any) -> Any:
    """Run the method registered for ``config``'s type. ``context``: a :class:`Context`,
    or just the example inputs for methods that need nothing else."""
    if not isinstance(context, Context):
        context = Context(example=context)
    method = method_of(config)
    prepare(method, config, context, model)
    return method.run(model, config, context)


def prepare(method: Method, config: MethodConfig, context: Context,
            model: nn.Module | None = None) -> None:
    """Everything checked before a run starts: the config is the method's, the context
    holds what the method needs, and the method's own ``check(config, context, model)``
    (where it has one: settings that depend on the context, such as LAPP's phase length,
    or on the model, such as needing a classifier)."""
    if type(config) is not method.config:
        raise TargetError(f"method {method.name} takes a {method.config.__name__}, got a "
                          f"{type(config).__name__}")
    metrics = getattr(method, "metrics", ("macs", "params"))
    if config.metric not in metrics:
        raise TargetError(f"method {method.name} does not take metric {config.metric!r} "
                          f"(it takes {', '.join(metrics)})")
    if config.metric == "latency":
        config.budget(latency=context.latency).require_latency()
    context.require(method, config)
    check = getattr(method, "check", None)
    if check is not None:
        check(config, context, model)
