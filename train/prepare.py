"""From the run's settings to training data: labelled photos, the decoded-pixel cache and the split.

A new run collects labels (train.data), caches the decodable photos, drops tags left without a photo
(or stops), and splits training/validation (multi-label stratified). A resumed run rebuilds exactly
the same rows from its dataset.json, so it trains on what it started with.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tagger.labels import read_labels
from train import runs
from train.backbone import LoadedClip
from train.cache import ImageCache, build_cache
from train.config import Log, TrainConfig, TrainError
from train.data import LabelledPhotos, collect_labels, histogram_lines
from train.split import spread, stratified_split


@dataclass
class Prepared:
    labels: list[str]
    cache: ImageCache
    targets: np.ndarray  # uint8 [N, C] for cache rows
    train_idx: np.ndarray
    val_idx: np.ndarray
    dataset: dict  # what dataset.json holds
    # Photos under --data with no labels, an even sample: they carry thresholds to the refit (train.trainer).
    untagged: list[Path] = field(default_factory=list)


UNTAGGED_SAMPLE = 512  # untagged photos decoded for the refit's thresholds: a few seconds of decoding


def untagged_sample(paths: list[Path], n: int = UNTAGGED_SAMPLE) -> list[Path]:
    """Up to n of the untagged photos, spread evenly over their sorted order (folders, dates)."""
    return [paths[i] for i in spread(len(paths), n)]


def _report_sources(photos: LabelledPhotos, labels_file: str, log: Log) -> None:
    parts = [f"{n} from {src}" for src, n in sorted(photos.sources.items())]
    log(f"{len(photos.paths)} labelled photos ({', '.join(parts) or 'no label source'})"
        + (f"; {photos.unlabelled} photos without labels ignored" if photos.unlabelled else ""))
    if photos.ignored:
        top = ", ".join(f"{t!r} ({n})" for t, n in photos.ignored.most_common(10))
        more = len(photos.ignored) - 10
        log(f"ignored {len(photos.ignored)} tags not in {Path(labels_file).name}: {top}"
            + (f" and {more} more" if more > 0 else ""))
    if photos.rejected:
        log("known negatives from tagger review (\"not_labels\") overrode "
            + ", ".join(f"{n} {t!r}" for t, n in photos.rejected.most_common()) + " positives")
    for line in photos.warnings[:20]:
        log(f"warning: {line}")
    if len(photos.warnings) > 20:
        log(f"warning: ... and {len(photos.warnings) - 20} more")


def _handle_empty(photos: LabelledPhotos, cfg: TrainConfig, log: Log, when: str) -> LabelledPhotos:
    empty = [i for i, n in enumerate(photos.counts) if n == 0]
    if not empty:
        return photos
    names = ", ".join(repr(photos.labels[i]) for i in empty)
    if not cfg.drop_empty:
        raise TrainError(cfg.labels, f"no positive photo {when} for {names}: label some photos with "
                                     f"{'it' if len(empty) == 1 else 'them'}, remove "
                                     f"{'it' if len(empty) == 1 else 'them'} from the labels file, "
                                     "or pass --drop-empty")
    log(f"dropping {len(empty)} tags with no positive photo {when}: {names}")
    photos = photos.drop_tags(empty)
    if not photos.labels:
        raise TrainError(cfg.labels, "no tag has a positive photo: nothing to train")
    return photos


def prepare_data(cfg: TrainConfig, clip: LoadedClip, run_dir: Path, log: Log, progress: bool,
                 saved: dict | None = None) -> Prepared:
    labels = read_labels(cfg.labels) if saved is None else None
    photos = collect_labels(cfg.data, labels or saved["labels"], cfg.annotations, cfg.keywords) \
        if saved is None else None
    if photos is not None:
        _report_sources(photos, cfg.labels, log)
        if not photos.paths:
            raise TrainError(cfg.data, "no labelled photos: give --annotations CSV, sidecar JSON \"labels\" "
                                       "or keywords in the photos")
        photos = _handle_empty(photos, cfg, log, "in the labelled photos")
        paths = photos.paths
    else:  # --resume: the photos asked of the cache the first time, so it is reused as it is
        paths = [Path(p) for p in saved["photos"]]

    cache = build_cache(paths, clip.preprocess, run_dir / runs.CACHE_DIR, cfg.workers, progress)
    if cache.failed:
        log(f"skipped {len(cache.failed)} photos that could not be decoded:")
        for line in cache.failed[:20]:
            log(f"  {line}")
        if len(cache.failed) > 20:
            log(f"  ... and {len(cache.failed) - 20} more")

    if saved is not None:
        labels = list(saved["labels"])
        index = {t: i for i, t in enumerate(labels)}
        row_of = {str(p): r for r, p in enumerate(cache.paths)}
        targets = np.zeros((len(cache.paths), len(labels)), np.uint8)
        for entry in saved["train"] + saved["val"]:
            if entry["path"] not in row_of:
                raise TrainError(entry["path"], "--resume: this photo of the run can no longer be decoded "
                                                "(moved or changed?); start a new run")
            targets[row_of[entry["path"]], [index[t] for t in entry["tags"]]] = 1
        train_idx = np.array([row_of[e["path"]] for e in saved["train"]], dtype=np.int64)
        val_idx = np.array([row_of[e["path"]] for e in saved["val"]], dtype=np.int64)
        return Prepared(labels, cache, targets, train_idx, val_idx, saved,
                        [Path(p) for p in saved.get("untagged", [])])

    row_of = {p: i for i, p in enumerate(photos.paths)}
    photos = photos.subset(np.array([row_of[p] for p in cache.paths], dtype=np.int64))
    photos = _handle_empty(photos, cfg, log, "that could be decoded")
    if len(photos.paths) < 2:
        raise TrainError(cfg.data, "need at least 2 decodable labelled photos (training and validation)")
    train_idx, val_idx = stratified_split(photos.targets, cfg.val_fraction, cfg.seed)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise TrainError(cfg.data, "too few photos to split into training and validation; label more photos")
    train_counts = photos.targets[train_idx].sum(axis=0)
    val_counts = photos.targets[val_idx].sum(axis=0)
    for line in histogram_lines(photos.labels, train_counts, val_counts):
        log(line)
    no_val = [t for t, n in zip(photos.labels, val_counts) if n == 0]
    if no_val:
        log(f"note: {len(no_val)} tags have no validation photo (too few photos): {', '.join(no_val)}; "
            "they are trained, but their AP is not measured and their threshold stays 0.5")

    def rows(indices):
        return [{"path": str(photos.paths[i]),
                 "tags": [photos.labels[c] for c in np.flatnonzero(photos.targets[i])]} for i in indices]

    untagged = untagged_sample(photos.untagged)
    dataset = {"labels": photos.labels, "train": rows(train_idx), "val": rows(val_idx),
               "photos": [str(p) for p in paths],
               "skipped": cache.failed, "ignored": dict(photos.ignored.most_common()),
               "unlabelled": photos.unlabelled, "untagged": [str(p) for p in untagged], "warnings": photos.warnings}
    return Prepared(photos.labels, cache, photos.targets, train_idx, val_idx, dataset, untagged)
