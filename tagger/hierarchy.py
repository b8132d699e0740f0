"""The tag tree of a `Parent|Child` vocabulary, and its one rule: a tagged child brings its parents.

A vocabulary may hold `Animals` and `Animals|Dog` as two tags, each scored on its own by the model. A
photo tagged `Animals|Dog` but not `Animals` contradicts the tree (and a search for `Animals` in the
user's photo software would miss it), so wherever tags are decided (`tagger tag`, and the threshold
calibration of `tagger train` that must anticipate it) the decisions are closed over ancestors: every
ancestor *in the vocabulary* of a tag that is chosen is chosen too. Ancestors that are not tags
themselves need nothing: the keyword writers already write every level of `Animals|Dog`.

Closing upward (rather than dropping a child whose parent scored low) keeps what the model is surest
about: a child's prompt is the more specific one, and the calibration sets each parent's threshold
knowing that its children's decisions will be added to it, so the parent's F1 on validation does not
drop for it.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tagger.labels import HIERARCHY_SEP


def ancestors(labels: Sequence[str]) -> list[list[int]]:
    """For each tag, the indices of its ancestors that are tags of the vocabulary, nearest first."""
    index = {tag: i for i, tag in enumerate(labels)}
    out = []
    for tag in labels:
        levels = tag.split(HIERARCHY_SEP)
        prefixes = (HIERARCHY_SEP.join(levels[:n]) for n in range(len(levels) - 1, 0, -1))
        out.append([index[p] for p in prefixes if p in index])
    return out


def descendants(labels: Sequence[str]) -> list[list[int]]:
    """For each tag, the indices of the tags below it in the vocabulary."""
    out: list[list[int]] = [[] for _ in labels]
    for child, above in enumerate(ancestors(labels)):
        for parent in above:
            out[parent].append(child)
    return out


def close_upward(chosen: np.ndarray, parents: Sequence[Sequence[int]]) -> np.ndarray:
    """Boolean decisions [..., C] with every chosen tag's vocabulary ancestors (`ancestors(labels)`,
    computed once by the caller) chosen too. Only tags chosen somewhere are visited: each is ORed into
    all of its ancestors at once, so one pass closes the tree."""
    closed = np.array(chosen, dtype=bool, copy=True)
    for child in np.flatnonzero(closed.reshape(-1, closed.shape[-1]).any(axis=0)):
        if parents[child]:
            closed[..., list(parents[child])] |= closed[..., child:child + 1]
    return closed
