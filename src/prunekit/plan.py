"""The Plan: for each group of coupled channels, the sorted indices to keep.

A plan is plain data. It round-trips through JSON with a format version and the
fingerprint of the model architecture it was made for, so it can be replayed on
a fresh copy of that architecture (which is how pruned models are loaded).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import PlanFormatError

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Plan:
    """``keep[group_id]`` = sorted kept unit indices; groups absent from ``keep`` keep everything."""

    keep: Mapping[str, tuple[int, ...]]
    fingerprint: str
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep", {str(k): tuple(int(i) for i in v)
                                          for k, v in self.keep.items()})
        object.__setattr__(self, "meta", dict(self.meta))

    # ----------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        return {"format": "prunekit.plan", "version": FORMAT_VERSION,
                "fingerprint": self.fingerprint, "meta": dict(self.meta),
                "keep": {k: list(v) for k, v in sorted(self.keep.items())}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=False)

    @classmethod
    def from_dict(cls, data: Any) -> "Plan":
        if not isinstance(data, dict) or data.get("format") != "prunekit.plan":
            raise PlanFormatError("not a prunekit plan: expected a JSON object with "
                                  "\"format\": \"prunekit.plan\"")
        version = data.get("version")
        if not isinstance(version, int):
            raise PlanFormatError("plan has no integer \"version\"")
        if version > FORMAT_VERSION:
            raise PlanFormatError(f"plan format version {version} is newer than this prunekit "
                                  f"understands ({FORMAT_VERSION}); upgrade prunekit")
        keep, fp = data.get("keep"), data.get("fingerprint")
        if not isinstance(keep, dict) or not isinstance(fp, str):
            raise PlanFormatError("plan needs \"keep\" (object) and \"fingerprint\" (string)")
        for k, v in keep.items():
            if not isinstance(v, list) or not all(isinstance(i, int) and not isinstance(i, bool)
                                                  for i in v):
                raise PlanFormatError(f"plan group {k!r}: kept indices must be a list of ints")
        meta = data.get("meta", {})
        if not isinstance(meta, dict):
            raise PlanFormatError("plan \"meta\" must be an object")
        return cls({k: tuple(v) for k, v in keep.items()}, fp, meta)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanFormatError(f"plan is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike[str]) -> None:
        from .outputs import write_text
        write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Plan":
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise PlanFormatError(f"cannot read plan {path}: {exc}") from exc
        return cls.from_json(text)
