"""Training labels (DESIGN.md §5): from a CSV, sidecar JSON "labels" and keywords in the photos.

Every source names tags as text; `TagMatcher` maps that text onto the vocabulary (hierarchy aware),
and whatever matches nothing is counted as ignored, never silently dropped.
"""
from __future__ import annotations

import csv
import importlib
import io
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from tagger.decisions import LABELS, decisions_in
from tagger.discover import iter_photos
from tagger.errors import LabelsError, TaggerError
from tagger.labels import HIERARCHY_SEP, leaf, read_text_file
from tagger.writers.json_sidecar import read_sidecar, sidecar_path

CSV_HEADER_NAMES = {"path", "file", "filename", "photo", "image"}


class TagMatcher:
    """Keyword text -> vocabulary indices.

    `Animals|Dog` marks `Animals|Dog` and, when in the vocabulary, its ancestor `Animals`. A keyword
    and a vocabulary tag also match on their most specific level when that level names one tag only,
    so a flat `Dog` keyword trains the tag `Animals|Dog` and `Animals|Dog` trains a flat `Dog`.
    """

    def __init__(self, labels: list[str]):
        self.labels = labels
        self.full = {tag.casefold(): i for i, tag in enumerate(labels)}
        leaves = Counter(leaf(tag).casefold() for tag in labels)
        self.leaf = {leaf(tag).casefold(): i for i, tag in enumerate(labels) if leaves[leaf(tag).casefold()] == 1}

    def match(self, keyword: str) -> set[int]:
        levels = [level.strip() for level in keyword.split(HIERARCHY_SEP) if level.strip()]
        hits = set()
        for depth in range(1, len(levels) + 1):
            index = self.full.get(HIERARCHY_SEP.join(levels[:depth]).casefold())
            if index is not None:
                hits.add(index)
        if levels and levels[-1].casefold() in self.leaf:
            hits.add(self.leaf[levels[-1].casefold()])
        return hits

    def exact(self, keyword: str) -> int | None:
        """The one tag a keyword names, without its ancestors: rejecting `Animals|Dog` says nothing
        about `Animals`."""
        levels = [level.strip() for level in keyword.split(HIERARCHY_SEP) if level.strip()]
        if not levels:
            return None
        index = self.full.get(HIERARCHY_SEP.join(levels).casefold())
        return index if index is not None else self.leaf.get(levels[-1].casefold())


@dataclass
class LabelledPhotos:
    """The photos that have labels, in a deterministic order, and what was left out and why."""

    labels: list[str]
    paths: list[Path]
    targets: np.ndarray  # uint8 [N, C]
    sources: Counter = field(default_factory=Counter)  # photos labelled per source
    ignored: Counter = field(default_factory=Counter)  # keyword text outside the vocabulary -> times seen
    untagged: list[Path] = field(default_factory=list)  # photos under --data with no label source at all
    warnings: list[str] = field(default_factory=list)  # one line per file that could not be used
    rejected: Counter = field(default_factory=Counter)  # tag -> positives a sidecar "not_labels" overrode

    @property
    def counts(self) -> np.ndarray:
        return self.targets.sum(axis=0).astype(np.int64)

    @property
    def unlabelled(self) -> int:
        return len(self.untagged)

    def subset(self, keep: np.ndarray) -> "LabelledPhotos":
        return LabelledPhotos(self.labels, [self.paths[i] for i in keep], self.targets[keep], self.sources,
                              self.ignored, self.untagged, self.warnings, self.rejected)

    def drop_tags(self, drop: list[int]) -> "LabelledPhotos":
        keep = [i for i in range(len(self.labels)) if i not in set(drop)]
        return LabelledPhotos([self.labels[i] for i in keep], self.paths, self.targets[:, keep], self.sources,
                              self.ignored, self.untagged, self.warnings, self.rejected)


def collect_labels(data_dir: str | Path, labels: list[str], annotations: str | Path | None = None,
                   keywords: bool = True) -> LabelledPhotos:
    """Every labelled photo under `data_dir`, with its 0/1 targets over `labels`.

    A photo is labelled when it has a CSV row, a sidecar with a "labels" key or keywords of its own;
    what those say may be empty (a photo of none of the tags is a useful negative).

    A sidecar's "not_labels" (tags the user rejected in `tagger review`) are known negatives: they
    win over every other source, so a wrong keyword or CSV entry the user has since rejected trains
    as absent. They do not make a photo a training photo on their own: its other tags are unknown,
    and the trainer has no "unknown" (it would count them all as absent).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise LabelsError(data_dir, "--data is not a folder")
    matcher = TagMatcher(labels)
    found: dict[Path, set[str]] = {}  # photo -> raw tag texts from every source
    sources: Counter = Counter()
    warnings: list[str] = []

    photos = []
    root = data_dir.resolve()
    for item in iter_photos([data_dir]):
        if isinstance(item, TaggerError):
            warnings.append(str(item))
        elif not item.resolve().is_relative_to(root):
            # The same rule as a CSV row: only photos the user handed over (a link may point anywhere).
            warnings.append(f"{item}: a symbolic link to a photo outside the data folder {data_dir}; not used")
        else:
            photos.append(item)
    if annotations is not None:
        rows, missing = read_annotations(annotations, data_dir)
        warnings.extend(missing)
        for path, tags in rows.items():
            found.setdefault(path, set()).update(tags)
        sources["csv"] += len(rows)
    rejections: dict[Path, list[str]] = {}
    for photo in photos:
        tags, rejected = _sidecar_labels(photo, warnings)
        if tags is not None:
            found.setdefault(_key(photo), set()).update(tags)
            sources["sidecar"] += 1
        if rejected:
            rejections[_key(photo)] = rejected
    if keywords:
        for photo, tags in read_photo_keywords(photos, warnings).items():
            if tags:
                found.setdefault(_key(photo), set()).update(tags)
                sources["keywords"] += 1

    paths = sorted(found, key=lambda p: str(p))
    targets = np.zeros((len(paths), len(labels)), dtype=np.uint8)
    ignored: Counter = Counter()
    for row, path in enumerate(paths):
        for text in found[path]:
            hits = matcher.match(text)
            if hits:
                targets[row, sorted(hits)] = 1
            else:
                ignored[text] += 1
    rejected_counts: Counter = Counter()
    for row, path in enumerate(paths):
        for text in rejections.get(path, ()):
            index = matcher.exact(text)
            if index is not None and targets[row, index]:
                targets[row, index] = 0
                rejected_counts[labels[index]] += 1
    untagged = sorted((p for p in photos if _key(p) not in found), key=str)
    return LabelledPhotos(labels, paths, targets, sources, ignored, untagged, warnings, rejected_counts)


def _key(path: Path) -> Path:
    """One identity per photo, however a source spelled its path."""
    return Path(os.path.abspath(path))


def read_annotations(csv_path: str | Path, data_dir: str | Path) -> tuple[dict[Path, set[str]], list[str]]:
    """CSV rows `path,tag1;tag2` (paths relative to `data_dir`) -> ({photo: tags}, warnings for missing files).

    A row pointing outside `data_dir` is an error: it would train on photos the user did not hand over.
    """
    csv_path, data_dir = Path(csv_path), Path(data_dir)
    text = read_text_file(csv_path, "annotations CSV")
    root = data_dir.resolve()
    rows: dict[Path, set[str]] = {}
    missing = []
    try:
        records = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise LabelsError(csv_path, f"not a valid CSV: {exc}") from None
    for lineno, record in enumerate(records, start=1):
        if not record or not "".join(record).strip():
            continue
        if record[0].lstrip().startswith("#") and not (data_dir / record[0].strip()).is_file():
            continue  # a comment; a photo whose name starts with `#` is still a row
        name = record[0].strip()
        if lineno == 1 and name.casefold() in CSV_HEADER_NAMES:
            continue
        if not name:
            raise LabelsError(csv_path, f"line {lineno}: empty photo path")
        path = Path(name) if Path(name).is_absolute() else data_dir / name
        resolved = path.resolve()
        if not resolved.is_relative_to(root):
            raise LabelsError(csv_path, f"line {lineno}: {name!r} is outside the data folder {data_dir}")
        tags = {t.strip() for cell in record[1:] for t in cell.split(";") if t.strip()}
        if not path.is_file():
            missing.append(f"{csv_path}: line {lineno}: photo {name!r} not found in {data_dir}; row skipped")
            continue
        rows.setdefault(_key(path), set()).update(tags)
    return rows, missing


def _sidecar_labels(photo: Path, warnings: list[str]) -> tuple[list[str] | None, list[str]]:
    """(the sidecar's "labels" or None when it has none, its "not_labels") for one photo."""
    if not sidecar_path(photo).exists():
        return None, []
    try:
        data = read_sidecar(photo)
        decided = decisions_in(data, photo)
    except TaggerError as exc:
        warnings.append(f"{exc.path}: sidecar not used for training ({exc.reason})")
        return None, []
    labels = list(decided.labels) if data and LABELS in data else None
    return labels, list(decided.not_labels)


def read_photo_keywords(photos: list[Path], warnings: list[str]) -> dict[Path, list[str]]:
    """The user's keywords in the photos (XMP/IPTC, hierarchical as `A|B`), via tagger.keywords."""
    if not photos:
        return {}
    try:
        module = importlib.import_module("tagger.keywords")
    except ModuleNotFoundError as exc:
        if exc.name != "tagger.keywords":
            raise
        return {}  # this version of tagger has no keyword reader: CSV and sidecars only
    reader: Callable = getattr(module, "read_user_keywords")
    try:
        found = reader(photos, on_error=lambda exc: warnings.append(f"keywords not read: {exc}"))
    except TaggerError as exc:  # e.g. exiftool missing: the other sources still work
        warnings.append(f"keywords in photos not read: {exc}")
        return {}
    return {photo: _without_levels(keywords) for photo, keywords in found.items()}


def _without_levels(keywords: list[str]) -> list[str]:
    """Drop flat keywords that are only a level of the photo's own hierarchical keywords.

    Lightroom writes `Animals|Dog` to lr:HierarchicalSubject and `Animals`, `Dog` to dc:subject; the
    hierarchical one already says both, and the levels would only count as ignored tags.
    """
    levels = {level.strip().casefold() for k in keywords if HIERARCHY_SEP in k for level in k.split(HIERARCHY_SEP)}
    return [k for k in keywords if HIERARCHY_SEP in k or k.strip().casefold() not in levels]


def histogram_lines(labels: list[str], train_counts, val_counts) -> list[str]:
    """The class histogram shown before training: head ≥100, medium 20–99, tail <20 training positives."""
    from train.metrics import frequency_group

    groups = [frequency_group(int(n)) for n in train_counts]
    width = max(len(t) for t in labels)
    lines = [f"{'tag':<{width}}  train  val  group"]
    for tag, n_train, n_val, group in zip(labels, train_counts, val_counts, groups):
        lines.append(f"{tag:<{width}}  {int(n_train):>5}  {int(n_val):>3}  {group}")
    totals = Counter(groups)
    lines.append(f"{totals['head']} head, {totals['medium']} medium, {totals['tail']} tail tags")
    return lines
