"""What every writer receives and must provide. Writers are chosen with `--write json,xmp,embed`."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class ModelRef:
    """Which model produced a result: recorded in every output so re-runs can tell stale from current."""

    name: str
    sha256: str


@dataclass(frozen=True)
class PhotoResult:
    """The tagger's verdict on one photo."""

    path: Path
    size: int  # bytes, at the time the photo was decoded
    mtime: float  # st_mtime, same moment
    model: ModelRef
    tags: list[tuple[str, float]]  # (tag, score) above threshold, best first; tags may hold `|` levels
    scores: dict[str, float]  # every label's score, label order


class Writer(Protocol):
    """One output format. Errors on one photo raise `tagger.errors.WriteError(path, reason)`."""

    name: str
    changes_photo: bool  # True when write() rewrites the photo itself (its size changes): it runs first

    def is_current(self, photo: Path, stat: os.stat_result, model: ModelRef) -> bool:
        """True when this photo's output already holds this model's result for this photo version."""

    def write(self, result: PhotoResult) -> None:
        """Write (or replace) this writer's output for one photo, atomically."""

    def close(self) -> None:
        """Release resources (an exiftool process, say). Called once, also after Ctrl-C."""
