"""Validation metrics: per-tag AP, mAP overall and by frequency group, max-F1 thresholds."""
from __future__ import annotations

import math

import numpy as np

from tagger.hierarchy import ancestors, close_upward, descendants
from tagger.labels import HIERARCHY_SEP

HEAD_MIN = 100  # training positives for a head tag (DESIGN.md §5)
MEDIUM_MIN = 20  # medium: 20–99; tail: fewer than 20
DEFAULT_THRESHOLD = 0.5  # for a tag with no validation positive to calibrate on


def frequency_group(n_positives: int) -> str:
    if n_positives >= HEAD_MIN:
        return "head"
    if n_positives >= MEDIUM_MIN:
        return "medium"
    return "tail"


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Non-interpolated AP (mean precision at each positive's rank); NaN without positives.

    Tied scores are ranked pessimistically (negatives first) so a constant model earns no credit.
    """
    targets = np.asarray(targets).astype(bool)
    n_pos = int(targets.sum())
    if n_pos == 0:
        return float("nan")
    scores = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((targets, -scores))  # by score descending, negatives before positives on ties
    hits = targets[order]
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision_at[hits].sum() / n_pos)


def per_tag_ap(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return np.array([average_precision(scores[:, c], targets[:, c]) for c in range(targets.shape[1])])


def _mean(values) -> float | None:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else None


def map_summary(scores: np.ndarray, targets: np.ndarray, train_counts) -> dict:
    """mAP (percent) over tags with a validation positive, overall and per head/medium/tail group."""
    aps = per_tag_ap(scores, targets)
    groups = [frequency_group(int(n)) for n in train_counts]
    out = {"mAP": _pct(_mean(aps))}
    for group in ("head", "medium", "tail"):
        out[f"mAP_{group}"] = _pct(_mean([ap for ap, g in zip(aps, groups) if g == group]))
    out["ap"] = [None if math.isnan(ap) else round(100 * ap, 3) for ap in aps]
    return out


def _pct(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 3)


def calibrate_thresholds(scores: np.ndarray, targets: np.ndarray, labels: list[str] | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Per tag, the threshold with the best F1 on validation (predict positive when score ≥ t).

    Returns (thresholds, their F1). The threshold sits halfway to the next lower score, so scores
    a little below the chosen one on new photos are not cut off by rounding. With the labels, tags
    are decided as `tagger tag` decides them (tagger.hierarchy: a chosen child brings its parents),
    so the deepest tags are calibrated first and each parent's threshold is the best one given the
    photos its descendants will add to it.
    """
    n_tags = targets.shape[1]
    thresholds = np.full(n_tags, DEFAULT_THRESHOLD)
    f1s = np.full(n_tags, np.nan)
    below = descendants(labels) if labels is not None else [[] for _ in range(n_tags)]
    order = range(n_tags) if labels is None else sorted(range(n_tags), key=lambda c: -labels[c].count(HIERARCHY_SEP))
    for c in order:
        y = targets[:, c].astype(bool)
        n_pos = int(y.sum())
        if n_pos == 0:
            continue
        forced = np.zeros(len(y), dtype=bool)  # photos a descendant's decision tags with c anyway
        for d in below[c]:
            forced |= scores[:, d] >= thresholds[d]
        s = scores[:, c].astype(np.float64)
        order_c = np.argsort(-s, kind="stable")
        s_sorted, y_sorted, free = s[order_c], y[order_c], ~forced[order_c]
        # Only the last of a run of tied scores is a possible cut (ties are all in or all out).
        cut = np.r_[s_sorted[1:] != s_sorted[:-1], True]
        tp = (np.cumsum(y_sorted & free) + int((y & forced).sum()))[cut]
        predicted = (np.cumsum(free) + int(forced.sum()))[cut]
        f1 = 2 * tp / (predicted + n_pos)
        best = int(np.argmax(f1))
        idx = np.flatnonzero(cut)[best]
        below_score = s_sorted[idx + 1] if idx + 1 < len(s_sorted) else max(s_sorted[idx] - 1e-3, 0.0)
        thresholds[c] = float(np.clip((s_sorted[idx] + below_score) / 2, 0.0, 1.0))
        f1s[c] = float(f1[best])
        if forced.any():  # or none by its own score: only what its descendants bring
            only_forced = 2 * int((y & forced).sum()) / (int(forced.sum()) + n_pos)
            if only_forced > f1s[c]:
                thresholds[c] = float(min(np.nextafter(s_sorted[0], np.inf), 1.0))
                f1s[c] = only_forced
    return thresholds, f1s


def f1_summary(scores: np.ndarray, targets: np.ndarray, thresholds: np.ndarray, labels: list[str] | None = None
               ) -> dict:
    """Per-tag, macro and micro F1 (percent) when each tag is cut at its threshold (and, with the
    labels, chosen children bring their parents, as `tagger tag` decides)."""
    predicted = predictions(scores, thresholds, labels)
    y = targets.astype(bool)
    tp = (predicted & y).sum(axis=0)
    fp = (predicted & ~y).sum(axis=0)
    fn = (~predicted & y).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_tag = np.where(y.sum(axis=0) > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    micro_den = 2 * tp.sum() + fp.sum() + fn.sum()
    return {
        "f1_macro": _pct(_mean(per_tag)),
        "f1_micro": _pct(float(2 * tp.sum() / micro_den) if micro_den else None),
        "f1": [None if math.isnan(v) else round(100 * float(v), 3) for v in per_tag],
    }


def precision_recall(scores: np.ndarray, targets: np.ndarray, thresholds, labels: list[str] | None = None
                     ) -> tuple[list, list]:
    """Per tag, precision and recall (percent) when cut at its threshold (with the labels, chosen
    children bring their parents, as in f1_summary); None where undefined (no photo predicted, no positive)."""
    predicted = predictions(scores, thresholds, labels)
    y = targets.astype(bool)
    tp = (predicted & y).sum(axis=0)
    n_pred, n_pos = predicted.sum(axis=0), y.sum(axis=0)
    precision = [round(100 * float(t) / p, 3) if p else None for t, p in zip(tp, n_pred)]
    recall = [round(100 * float(t) / n, 3) if n else None for t, n in zip(tp, n_pos)]
    return precision, recall


def predictions(scores: np.ndarray, thresholds, labels: list[str] | None = None) -> np.ndarray:
    """bool [N, C]: the tags `tagger tag` would write for each photo."""
    predicted = scores >= np.asarray(thresholds)[None, :]
    return close_upward(predicted, ancestors(labels)) if labels is not None else predicted
