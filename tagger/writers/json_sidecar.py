"""Sidecar JSON (`IMG_1.jpg.json`, DESIGN.md §3): the default output, also the record of what ran."""
from __future__ import annotations

import json
import os
from pathlib import Path

from tagger.atomic import read_sidecar_or_raise, refuse_read_only, write_atomic
from tagger.errors import WriteError
from tagger.writers.base import ModelRef, PhotoResult

SIDECAR_VERSION = 1
# Keys the tagger owns; everything else in an existing sidecar (a user's "labels" above all) is kept.
_OWN_KEYS = ("tagger", "file", "size", "mtime", "model", "tags", "scores")


def sidecar_path(photo: Path) -> Path:
    return photo.with_name(photo.name + ".json")


def read_sidecar(photo: Path) -> dict | None:
    """The existing sidecar, None when absent. A file that is not ours raises: never overwrite it."""
    path = sidecar_path(photo)
    raw = read_sidecar_or_raise(path, WriteError, "existing sidecar",
                                consequence="; not overwritten (move it away to tag this photo)")
    if raw is None:
        return None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        raise WriteError(path, "existing file is not valid JSON; not overwritten (move it away to tag this photo)") from None
    if not isinstance(data, dict):
        raise WriteError(path, "existing file is not a tagger sidecar; not overwritten")
    return data


def display_name(path: Path) -> str:
    """The photo's name as JSON can hold it: bytes that are not UTF-8 shown as `\\xNN`."""
    return os.fsencode(path.name).decode("utf-8", "backslashreplace")


def sidecar_document(result: PhotoResult, keep: dict | None = None) -> dict:
    doc = {
        "tagger": SIDECAR_VERSION,
        "file": display_name(result.path),
        "size": result.size,
        "mtime": result.mtime,
        "model": {"name": result.model.name, "sha256": result.model.sha256},
        "tags": [{"tag": tag, "score": round(score, 4)} for tag, score in result.tags],
        "scores": {tag: round(score, 4) for tag, score in result.scores.items()},
    }
    for key, value in (keep or {}).items():
        if key not in _OWN_KEYS:
            doc[key] = value
    return doc


class JsonWriter:
    name = "json"
    changes_photo = False

    def is_current(self, photo: Path, stat: os.stat_result, model: ModelRef) -> bool:
        try:
            data = read_sidecar(photo)
        except WriteError:
            return False  # write() will report it
        if not data or data.get("tagger") != SIDECAR_VERSION:
            return False
        return (data.get("size") == stat.st_size and data.get("mtime") == stat.st_mtime
                and isinstance(data.get("model"), dict) and data["model"].get("sha256") == model.sha256)

    def write(self, result: PhotoResult) -> None:
        existing = read_sidecar(result.path)
        refuse_read_only(sidecar_path(result.path))
        doc = sidecar_document(result, keep=existing)
        text = json.dumps(doc, ensure_ascii=False, indent=1) + "\n"
        write_atomic(sidecar_path(result.path), text.encode("utf-8"))

    def close(self) -> None:
        pass
