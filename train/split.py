"""Deterministic multi-label stratified train/validation split (iterative stratification,
Sechidis et al. 2011), adjusted so every tag with two or more photos has one in validation."""
from __future__ import annotations

import numpy as np


def stratified_split(targets: np.ndarray, val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices), both sorted, for a 0/1 matrix [N, C].

    Rarest tags are placed first, each photo going to the side that still wants that tag most, so
    tail tags are split as evenly as their few photos allow.
    """
    targets = np.asarray(targets).astype(bool)
    n, n_tags = targets.shape
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"validation fraction must be between 0 and 1, got {val_fraction}")
    rng = np.random.default_rng(seed)
    per_tag = targets.sum(axis=0).astype(np.float64)
    want_val = per_tag * val_fraction
    want_val = np.where(per_tag >= 2, np.clip(want_val, 1.0, per_tag - 1.0), want_val)
    want = np.stack([per_tag - want_val, want_val])  # [2 folds, C]
    want_total = np.array([n * (1.0 - val_fraction), n * val_fraction])
    fold = np.full(n, -1)
    remaining = targets.copy()

    while True:
        left = remaining.sum(axis=0)
        if not left.any():
            break
        active = np.flatnonzero(left)
        rarest = active[left[active] == left[active].min()]
        tag = int(rng.choice(rarest))
        photos = np.flatnonzero(remaining[:, tag])
        for i in rng.permutation(photos):
            wanted = want[:, tag]
            choices = np.flatnonzero(wanted == wanted.max())
            if len(choices) > 1:
                totals = want_total[choices]
                choices = choices[totals == totals.max()]
            side = int(rng.choice(choices))
            fold[i] = side
            want[side] -= targets[i]
            want_total[side] -= 1
            remaining[i] = False

    unlabeled = rng.permutation(np.flatnonzero(fold < 0))
    for i in unlabeled:
        side = int(np.argmax(want_total))
        fold[i] = side
        want_total[side] -= 1
    return np.flatnonzero(fold == 0), np.flatnonzero(fold == 1)


def spread(n_items: int, n: int) -> np.ndarray:
    """Indices of up to n of n_items, spread evenly from the first to the last (sorted, unique): a
    sample that follows the order of the items (folders, dates) rather than a random draw."""
    if n <= 0 or n_items <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.linspace(0, n_items - 1, num=min(n, n_items)).round().astype(np.int64))
