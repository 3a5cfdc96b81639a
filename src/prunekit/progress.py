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
    """``tqdm(iterable, **kwargs)``, disabled where :func:`enabled` says so."""
    from tqdm.auto import tqdm
    return tqdm(iterable, disable=not enabled(), **kwargs)
