"""Errors a user can act on: each names the file and says what is wrong with it, on one line."""
from __future__ import annotations

import os
import unicodedata

# Exit statuses (DESIGN.md §3). Click exits 1 for a ClickException and 2 for a UsageError itself.
EXIT_OK, EXIT_FATAL, EXIT_USAGE, EXIT_SOME_FAILED = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports after Ctrl-C


# Characters that would act on the terminal or break a line instead of being seen: C0/C1 controls
# (escape sequences, CR, LF), line/paragraph separators, bidirectional overrides.
_HIDDEN = frozenset(["Cc", "Zl", "Zp"])
_BIDI = frozenset(map(chr, [*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F]))


def printable(text: str) -> str:
    """`text` safe to print on one terminal line: control characters as `\\x1b`, `\\n`, ..., and
    bytes of a file name that are not valid UTF-8 (Python keeps them as surrogates) as `\\xNN`."""
    out = []
    for c in text:
        code = ord(c)
        if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's stand-in for an undecodable byte
            out.append(f"\\x{code - 0xDC00:02x}")
        elif unicodedata.category(c) in _HIDDEN or c in _BIDI or 0xD800 <= code <= 0xDFFF:
            out.append(c.encode("unicode_escape").decode("ascii"))
        else:
            out.append(c)
    return "".join(out)


def describe(exc: BaseException) -> str:
    """An unexpected low-level error in a few words a user can act on."""
    if isinstance(exc, RecursionError):
        return "nested too deeply to read"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc) or type(exc).__name__


class TaggerError(Exception):
    """A problem with one input or output; `str()` is the one-line message shown to the user
    (the file name escaped, so an odd name can neither break the line nor drive the terminal)."""

    def __init__(self, path: str | os.PathLike | None, reason: str):
        self.path = None if path is None else os.fspath(path)
        if isinstance(self.path, bytes):
            self.path = os.fsdecode(self.path)
        self.reason = reason
        super().__init__(printable(f"{self.path}: {reason}" if self.path else reason))


class ImageError(TaggerError):
    """A photo that cannot be decoded (corrupt, truncated, not an image, too large)."""


class ModelError(TaggerError):
    """A model file that is missing, unreadable or not a tagger model."""


class WriteError(TaggerError):
    """An output (sidecar, photo metadata) that could not be written."""


class LabelsError(TaggerError):
    """A labels file or annotation source that breaks the rules of DESIGN.md §5."""
