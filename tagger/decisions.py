"""The user's decisions about a photo's tags, kept in its sidecar JSON (DESIGN.md §3, §10).

    "labels":     tags the user confirmed (training positives, also written by hand or other tools)
    "not_labels": tags the user rejected (training known negatives; never written for this photo again)

`tagger review` records them, `tagger train` reads them (train.data), `tagger tag` leaves out a
rejected tag from every writer's output. This module is their one home: the keys, how a decision
changes them, and the atomic rewrite that keeps every other key of the sidecar as it was.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tagger.atomic import write_atomic
from tagger.errors import WriteError
from tagger.writers.json_sidecar import read_sidecar, sidecar_path

LABELS = "labels"
NOT_LABELS = "not_labels"
VERDICTS = ("accept", "reject", "clear")


@dataclass(frozen=True)
class Decisions:
    labels: tuple[str, ...] = ()
    not_labels: tuple[str, ...] = ()


def _tag_list(data: dict, key: str, photo: Path) -> list[str]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise WriteError(sidecar_path(photo), f"\"{key}\" must be a list of tag strings; fix or remove it")
    return value


def decisions_in(data: dict | None, photo: Path) -> Decisions:
    """The decisions held in an already-read sidecar document (None: no sidecar)."""
    if not data:
        return Decisions()
    return Decisions(tuple(_tag_list(data, LABELS, photo)), tuple(_tag_list(data, NOT_LABELS, photo)))


def read_decisions(photo: Path) -> Decisions:
    return decisions_in(read_sidecar(photo), photo)


def rejected_tags(photo: Path) -> frozenset[str]:
    """Tags the user rejected for this photo. An unreadable sidecar rejects nothing here: the JSON
    writer names that file in its own error, and no other output is held back by it."""
    try:
        return frozenset(read_decisions(photo).not_labels)
    except WriteError:
        return frozenset()


def record_decision(photo: Path, tag: str, verdict: str) -> Decisions:
    """Accept, reject or clear one tag of one photo; returns the photo's decisions afterwards.

    A tag is in at most one list: accepting removes an earlier rejection and the other way round.
    The sidecar is rewritten atomically with every other key untouched (the tagger's scores too).
    """
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}")
    tag = tag.strip()
    if not tag:
        raise WriteError(sidecar_path(photo), "empty tag")
    data = read_sidecar(photo) or {"file": photo.name}
    # A "labels" key makes a photo a training photo (all other tags absent): a rejection alone must
    # not create one, or one "no" would turn the photo into a negative for every tag.
    had_labels = LABELS in data
    labels = [t for t in _tag_list(data, LABELS, photo) if t != tag]
    not_labels = [t for t in _tag_list(data, NOT_LABELS, photo) if t != tag]
    if verdict == "accept":
        labels.append(tag)
    elif verdict == "reject":
        not_labels.append(tag)
    if labels or had_labels:
        data[LABELS] = labels
    if not_labels:
        data[NOT_LABELS] = not_labels
    else:
        data.pop(NOT_LABELS, None)
    text = json.dumps(data, ensure_ascii=False, indent=1) + "\n"
    write_atomic(sidecar_path(photo), text.encode("utf-8"))
    return Decisions(tuple(labels), tuple(not_labels))



def rejection_pending(photo: Path) -> bool:
    """True when the sidecar still lists among the tagger's tags one the user has since rejected: the
    photo's outputs (XMP, in-file keywords) are redone on the next `tagger tag` to drop it."""
    try:
        data = read_sidecar(photo)
        rejected = set(decisions_in(data, photo).not_labels)
    except WriteError:
        return False
    tags = (data or {}).get("tags")
    if not rejected or not isinstance(tags, list):
        return False
    return any(isinstance(entry, dict) and entry.get("tag") in rejected for entry in tags)
