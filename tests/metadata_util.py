"""Helpers shared by the XMP / embed / untag / keyword tests: real files, real exiftool and exiv2."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

from tagger.images import register_heif
from tagger.writers.base import ModelRef, PhotoResult

MODEL_A = ModelRef("alpha", "a" * 64)
MODEL_B = ModelRef("beta", "b" * 64)

# Tags that may differ after a keyword write, and why:
KEYWORD_TAGS = {"XMP-dc:Subject", "XMP-lr:HierarchicalSubject", "IPTC:Keywords"}
ALLOWED_CHANGES = KEYWORD_TAGS | {
    "Photoshop:IPTCDigest",          # exiftool keeps Photoshop's IPTC checksum in step with the new IPTC
    "File:CurrentIPTCDigest",        # ... and reports the checksum of the IPTC now in the file
    "QuickTime:MediaDataSize",       # HEIC: the XMP item lives in the media data box, which grows
    "QuickTime:MediaDataOffset",
}
ALLOWED_GROUPS = ("System:", "ExifTool:", "XMP-tagger:")  # file size/times, exiftool's own, our record


def copy_sample(samples: Path, relative: str, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(samples / relative, dest)
    os.chmod(dest, 0o644)  # the shared samples are read-only
    return dest


def result_for(photo: Path, tags: list[str], model: ModelRef = MODEL_A) -> PhotoResult:
    stat = photo.stat()
    return PhotoResult(path=photo, size=stat.st_size, mtime=stat.st_mtime, model=model,
                       tags=[(tag, 0.9 - 0.01 * i) for i, tag in enumerate(tags)],
                       scores={tag: 0.9 for tag in tags})


def exiftool_json(*paths: Path) -> list[dict]:
    """`exiftool -j -a -G1` of each file: the independent view of everything in it."""
    out = subprocess.run(["exiftool", "-j", "-a", "-G1", "-n", *map(str, paths)], capture_output=True,
                         check=False).stdout
    entries = {Path(e["SourceFile"]).name: e for e in json.loads(out.decode("utf-8"))}
    return [entries[p.name] for p in paths]


def changed_tags(before: dict, after: dict) -> set[str]:
    return {key for key in before.keys() | after.keys()
            if before.get(key) != after.get(key) and key not in ALLOWED_CHANGES
            and not key.startswith(ALLOWED_GROUPS)}


def as_list(value) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def keywords_in(photo: Path) -> dict[str, list[str]]:
    entry = exiftool_json(photo)[0]
    return {tag: as_list(entry.get(tag)) for tag in sorted(KEYWORD_TAGS)}


def pixels(photo: Path) -> np.ndarray:
    register_heif()  # as tagger does before it opens a HEIC
    with Image.open(photo) as img:
        return np.asarray(img.convert("RGB"))


def exiv2_values(photo: Path, key: str) -> list[str]:
    """Values exiv2 (a second, independent reader) reports for one key, e.g. Xmp.dc.subject.
    exiv2 prints an XMP bag on one line joined by ", " (so tests keep commas out of keywords),
    and each IPTC keyword on its own line."""
    out = subprocess.run(["exiv2", "-q", "-K", key, "-Pv", str(photo)], capture_output=True, check=False)
    text = out.stdout.decode("utf-8").strip()
    if not text:
        return []
    return text.split(", ") if key.startswith("Xmp.") else text.splitlines()
