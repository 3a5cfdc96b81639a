"""Reading the files a user hands prunekit: one error naming the file and what to do.

Weights are only ever loaded with ``torch.load(weights_only=True)`` (or safetensors),
so no code in a file is executed; a file that only unsafe loading would open is
refused with a message saying so.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

from .errors import CheckpointError


def torch_load(path: str | os.PathLike[str], what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; a missing, truncated, foreign or
    unsafe file raises :class:`CheckpointError` naming it."""
    import torch
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found:
            raise CheckpointError(
                f"{what} {path} holds Python objects besides tensors ({found.group(1)}), "
                "which only unsafe loading (weights_only=False) would open, and prunekit "
                "never does that; "
                "re-save it as a plain state_dict (torch.save(model.state_dict(), ...))"
            ) from None
        raise CheckpointError(f"cannot read {what} {path}: it is corrupt or not a PyTorch "
                              "file; use a complete copy") from None
    except Exception as exc:  # truncated zip, random bytes, directory, ...
        raise CheckpointError(f"cannot read {what} {path}: it is corrupt or not a PyTorch "
                              f"file ({type(exc).__name__}: {str(exc)[:120]}); use a "
                              "complete copy") from None


def read_json(path: str | os.PathLike[str], what: str = "saved state") -> Any:
    """A JSON file a run saved (to resume from); unreadable or corrupt is a
    :class:`CheckpointError` naming it."""
    import json
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"the {what} {path} is unreadable or corrupt ({exc}); delete "
                              "its folder to start over, or give another --out") from None


def read_jsonl(path: str | os.PathLike[str], what: str = "saved results") -> list[Any]:
    """Rows of a JSON-lines file a run appended to; a corrupt row is a CheckpointError."""
    import json
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
        return [json.loads(r) for r in lines if r.strip()]
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"the {what} {path} is unreadable or corrupt ({exc}); delete "
                              "it to evaluate again, or give another --out") from None
