"""Errors a user can act on: each names the file and says what is wrong with it, on one line."""
from __future__ import annotations

import os

# Exit statuses (DESIGN.md §3). Click exits 1 for a ClickException and 2 for a UsageError itself.
EXIT_OK, EXIT_FATAL, EXIT_USAGE, EXIT_SOME_FAILED = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports after Ctrl-C


class TaggerError(Exception):
    """A problem with one input or output; `str()` is the one-line message shown to the user."""

    def __init__(self, path: str | os.PathLike | None, reason: str):
        self.path = None if path is None else os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if self.path else reason)


class ImageError(TaggerError):
    """A photo that cannot be decoded (corrupt, truncated, not an image, too large)."""


class ModelError(TaggerError):
    """A model file that is missing, unreadable or not a tagger model."""


class WriteError(TaggerError):
    """An output (sidecar, photo metadata) that could not be written."""


class LabelsError(TaggerError):
    """A labels file or annotation source that breaks the rules of DESIGN.md §5."""
