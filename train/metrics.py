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
    thresholds, f1s = _max_f1_cuts(scores, targets, labels, np.ones((1, len(targets))))
    return thresholds[0], f1s[0]


THRESHOLD_RESAMPLES = 100  # bootstrap resamples behind each bagged threshold (50 and 200 measured the same)


def bagged_thresholds(scores: np.ndarray, targets: np.ndarray, labels: list[str] | None = None,
                      resamples: int = THRESHOLD_RESAMPLES, seed: int = 0) -> np.ndarray:
    """Per tag, the max-F1 threshold of `calibrate_thresholds` averaged over bootstrap resamples of the
    validation photos (bagging, Breiman 1996), in logit space where sigmoid scores spread evenly.

    A rare tag has 1 to 4 validation positives, so its max-F1 threshold sits between two photos' scores,
    usually just under the lowest-scoring positive it keeps: one photo's luck decides what the tag
    writes on every new photo. Averaging the
    cut over resamples keeps what the photos agree on and smooths out what one of them alone says
    (docs/training.md, "Thresholds": test F1 up on every benchmark setting). A resample in which a
    tag has no positive does not vote on it; a tag with no validation positive keeps the default.
    Deterministic for a seed.
    """
    n = len(targets)
    if n == 0 or resamples < 1:
        return calibrate_thresholds(scores, targets, labels)[0]
    weights = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples)
    cuts, f1s = _max_f1_cuts(scores, targets, labels, weights)
    votes = ~np.isnan(f1s)
    z = _logit(cuts)
    with np.errstate(invalid="ignore"):
        mean = np.where(votes, z, 0.0).sum(axis=0) / votes.sum(axis=0)
    bagged = _sigmoid(mean)
    # Where every voting resample cut at the same place (a parent left to its children's photos: just
    # above its highest validation score), keep that value exactly: the logit round trip could land it a
    # hair below, and the parent would tag its top photo by its own score.
    voted_max = np.where(votes, cuts, -np.inf).max(axis=0)
    agree = votes.any(axis=0) & np.all(~votes | (cuts == voted_max), axis=0)
    bagged = np.where(agree, voted_max, bagged)
    # No vote in 100 resamples: the tag has no validation positive at all (one positive is missed by all
    # of them with probability 0.37^100), and the single calibration would give the default too.
    return np.where(votes.any(axis=0), bagged, DEFAULT_THRESHOLD)


THRESHOLD_POOL = 4  # validation positives at which a tag's own cut and its group's median cut weigh the same


def pooled_thresholds(thresholds: np.ndarray, val_positives, train_positives, pool: float = THRESHOLD_POOL
                      ) -> np.ndarray:
    """Each tag's calibrated cut shrunk toward the median cut of the tags in its frequency group (head,
    medium or tail by training photos) that have validation positives, in logit space, by
    n / (n + pool) for a tag with n validation positives: its own cut where it has many, the group's where
    it has few, and the group's alone where it has none (then all calibrated tags' median; with none,
    DEFAULT_THRESHOLD).

    A rare tag's bagged cut still rests on its 1 to 4 validation positives; the tags of its group have
    similar priors and scores, so their typical cut is a better guess than one photo's luck (empirical
    Bayes). On the quality benchmark this raised the default's test F1 in 5 of 6 settings (docs/training.md,
    "Thresholds"), and a tag with no validation positive, which kept 0.5, wrote almost nothing.
    """
    n = np.asarray(val_positives, dtype=np.float64)
    groups = np.array([frequency_group(int(c)) for c in train_positives])
    z = _logit(thresholds)
    calibrated = n > 0
    fallback = float(np.median(z[calibrated])) if calibrated.any() else None
    out = z.copy()
    for group in np.unique(groups):
        members = groups == group
        known = members & calibrated
        centre = float(np.median(z[known])) if known.any() else fallback
        if centre is None:
            continue  # no tag has a validation positive: nothing to pool, the defaults stay
        weight = n[members] / np.maximum(n[members] + pool, 1.0)  # 0 without a positive, also at pool 0
        out[members] = weight * z[members] + (1 - weight) * centre
    return _sigmoid(out)


def _logit(p: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Thresholds to logit space, where sigmoid scores spread evenly (0 and 1 clipped)."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def calibrated_thresholds(scores: np.ndarray, targets: np.ndarray, labels: list[str] | None, train_positives,
                          seed: int = 0) -> np.ndarray:
    """What `tagger train` ships per tag: the bagged max-F1 cut on validation (`bagged_thresholds`), pooled
    within its frequency group (`pooled_thresholds`)."""
    bagged = bagged_thresholds(scores, targets, labels, seed=seed)
    return pooled_thresholds(bagged, np.asarray(targets).sum(axis=0), train_positives)


def _max_f1_cuts(scores: np.ndarray, targets: np.ndarray, labels: list[str] | None, weights: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The max-F1 threshold per tag for each row of photo weights ([R, N]: how often each validation
    photo counts; ones for the split itself, bootstrap counts for a resample). Returns [R, C] thresholds
    and their F1 (NaN where a row holds no positive of the tag, whose threshold stays the default)."""
    n_rows, n_photos = weights.shape
    n_tags = targets.shape[1]
    weights = weights.astype(np.float32)  # whole counts: exact in float32 up to 16M photos, half the memory
    thresholds = np.full((n_rows, n_tags), DEFAULT_THRESHOLD)
    f1s = np.full((n_rows, n_tags), np.nan)
    rows = np.arange(n_rows)
    below = descendants(labels) if labels is not None else [[] for _ in range(n_tags)]
    order = range(n_tags) if labels is None else sorted(range(n_tags), key=lambda c: -labels[c].count(HIERARCHY_SEP))
    for c in order:
        s = scores[:, c].astype(np.float64)
        by_score = np.argsort(-s, kind="stable")
        s_sorted, y_sorted = s[by_score], targets[by_score, c].astype(bool)
        w = weights[:, by_score]
        if below[c]:  # photos a descendant's decision tags with c anyway: they count whatever c's cut
            forced = np.zeros((n_rows, n_photos), dtype=bool)
            for d in below[c]:
                forced |= scores[None, by_score, d] >= thresholds[:, d:d + 1]
            free = w * ~forced
            forced_tp = (w * (y_sorted & forced)).sum(axis=1, dtype=np.float64)
            forced_n = (w * forced).sum(axis=1, dtype=np.float64)
        else:
            free, forced_tp, forced_n = w, np.zeros(n_rows), np.zeros(n_rows)
        positives = np.flatnonzero(y_sorted)
        if len(positives) == 0:
            continue
        n_pos = w[:, positives].sum(axis=1, dtype=np.float64)
        held = np.cumsum(w, axis=1)  # photos the row holds down to each position
        predicted = held if free is w else np.cumsum(free, axis=1)
        # Candidate cuts: the last of a run of tied scores (ties are all in or all out) that the row holds a
        # photo of. Without descendants only a run holding a positive can be the first best cut (one that
        # only adds negatives lowers F1); a parent's F1 can stay level down a run of forced photos, and
        # there the highest cut wins, as everywhere, so every run is a candidate.
        cut = np.r_[s_sorted[1:] != s_sorted[:-1], True]
        ends = np.flatnonzero(cut)
        previous_end = np.r_[-1, ends[:-1]]
        positives_down_to = np.cumsum(y_sorted)
        chosen = np.diff(positives_down_to[ends], prepend=0) > 0 if not below[c] else np.ones(len(ends), bool)
        candidates, before_run = ends[chosen], previous_end[chosen]
        held_in_run = held[:, candidates] - np.where(before_run >= 0, held[:, np.maximum(before_run, 0)], 0)
        k = positives_down_to[candidates]  # positives down to each candidate
        tp_free = np.c_[np.zeros(n_rows), np.cumsum(free[:, positives], axis=1, dtype=np.float64)][:, k]
        tp = tp_free + forced_tp[:, None]
        pred = predicted[:, candidates].astype(np.float64) + forced_n[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(held_in_run > 0, 2 * tp / (pred + n_pos[:, None]), -1.0)
        pick = np.argmax(f1, axis=1)
        best = candidates[pick]
        # Halfway to the next lower score among the photos the row holds.
        after = (held <= held[rows, best][:, None]).sum(axis=1)
        below_score = np.where(after < n_photos, s_sorted[np.minimum(after, n_photos - 1)],
                               np.maximum(s_sorted[best] - 1e-3, 0.0))
        has_pos = n_pos > 0
        thresholds[has_pos, c] = np.clip((s_sorted[best] + below_score) / 2, 0.0, 1.0)[has_pos]
        f1s[has_pos, c] = f1[rows, pick][has_pos]
        # Or none by its own score: only what its descendants bring. The cut then goes above every
        # validation score, held by the row or not, so that all resamples choosing this agree on it.
        with np.errstate(invalid="ignore", divide="ignore"):
            only_forced = 2 * forced_tp / (forced_n + n_pos)
        none = has_pos & (forced_n > 0) & (only_forced > f1s[:, c])
        thresholds[none, c] = float(min(np.nextafter(s_sorted[0], np.inf), 1.0))
        f1s[none, c] = only_forced[none]
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


def carried_thresholds(thresholds: np.ndarray, before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Each tag's threshold carried from one model to another by what it does, not by its value: on the
    same photos (scores [N, C] of each model), the carried threshold lets through as many photos as the
    original did (cut halfway between the last photo kept and the next, as calibration cuts).

    The refit (train.trainer) needs it: it has trained on the validation photos, so nothing can be
    calibrated for it there, and its scores do not sit where the validated model's did; with one or two
    training photos per tag they sit lower, and the validated thresholds wrote fewer tags (benchmark F1
    down 1.7 to 3.4 at one photo per tag; docs/training.md, "The refit"). A threshold that passed no
    photo passes none.
    """
    out = np.array(thresholds, dtype=np.float64)
    for c in range(len(out)):
        kept = int((before[:, c] >= out[c]).sum())
        ranked = np.sort(after[:, c])[::-1].astype(np.float64)
        if len(ranked) == 0:
            continue
        if kept == 0:
            out[c] = max(out[c], float(np.nextafter(ranked[0], np.inf)))
        elif kept < len(ranked):
            out[c] = (ranked[kept - 1] + ranked[kept]) / 2 if ranked[kept] < ranked[kept - 1] else ranked[kept - 1]
        else:
            out[c] = ranked[-1]
    return out

