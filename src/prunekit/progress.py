"""Progress bars (tqdm) that show where a person watches: on a terminal.

Bars go to stderr when it is a terminal; in a log file or a pipe they would be noise
around the one-line messages, so they are off there. ``PRUNEKIT_PROGRESS=1`` forces
them on, ``=0`` off.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def enabled() -> bool:
    forced = os.environ.get("PRUNEKIT_PROGRESS", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def bar(iterable: Any = None, **kwargs: Any) -> Any:
    """``tqdm(iterable, **kwargs)``, disabled where :func:`enabled` says so; without tqdm
    (an optional extra) a bar that draws nothing."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _Silent(iterable)
    disable = bool(kwargs.pop("disable", False)) or not enabled()
    return tqdm(iterable, disable=disable, **kwargs)


class _Silent:
    """The part of tqdm's interface prunekit uses, drawing nothing."""

    def __init__(self, iterable: Any = None) -> None:
        self.iterable = iterable

    def __iter__(self) -> Any:
        return iter(self.iterable if self.iterable is not None else ())

    def __enter__(self) -> "_Silent":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def update(self, n: int = 1) -> None:
        return None

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        return None

    def close(self) -> None:
        return None
