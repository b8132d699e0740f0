"""What `tagger review` shows: the tagged photos under the roots, grouped by tag, best decisions first.

No web framework here: the server (tagger.review.app) only asks this module for the queue, for the
photo behind an id, and to record a decision.

Photos are named by an id `ROOT_INDEX/relative/path.jpg`, and only the photos found under the roots
at start-up (with a sidecar holding scores) have one. A request naming anything else — `..`, an
absolute path, a symlink leading out of its root, a file added later — finds no photo.

Order (the most useful decisions first):
- tags: rarest first (training photos in the model's summary, else suggestions in these folders):
  one decision on a tail tag is worth more than one on a tag with 500 examples;
- photos within a tag: nearest the tag's threshold first, in logit space (the model is least sure
  there, and a threshold-0.02 tag's 0.05 is as uncertain as a threshold-0.5 tag's 0.7); photos
  already decided go last, so a user can see and change them.
"""
from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tagger.decisions import Decisions, decisions_in, record_decision
from tagger.discover import iter_photos
from tagger.errors import TaggerError
from tagger.writers.json_sidecar import read_sidecar

NEAR_MISSES = 5  # photos under the threshold offered per tag beyond half the suggestions: missed tags


@dataclass
class ReviewPhoto:
    id: str
    path: Path  # as found under its root (the sidecar sits beside this path)
    root: Path  # the root's real path
    scores: dict[str, float]
    suggested: frozenset[str]  # the tags `tagger tag` wrote
    model: str


@dataclass
class ReviewSet:
    roots: list[Path]
    photos: dict[str, ReviewPhoto]
    thresholds: dict[str, float]
    rarity: dict[str, int]  # tag -> training photos (or suggestions here): fewer comes first
    vocabulary: list[str]
    skipped: list[str] = field(default_factory=list)  # one line per photo left out, and why

    def photo(self, photo_id: str) -> ReviewPhoto | None:
        """The photo behind an id, only while it is still a file inside its root."""
        photo = self.photos.get(photo_id)
        if photo is None or not inside(photo.path, photo.root) or not photo.path.is_file():
            return None
        return photo

    def use_model(self, info) -> None:
        """Exact thresholds and training counts (rarity) from the model (tagger.modelfile.ModelInfo)."""
        self.thresholds |= dict(zip(info.labels, info.thresholds))
        positives = info.model.get("positives") or {}
        present = set(self.vocabulary)
        self.vocabulary = [t for t in info.labels if t in present] or list(info.labels)
        self.rarity = {t: int(positives.get(t, 0)) for t in self.vocabulary}
        for t in self.vocabulary:
            self.thresholds.setdefault(t, 0.5)

    def model_names(self) -> Counter:
        return Counter(p.model for p in self.photos.values() if p.model)

    def decide(self, photo: ReviewPhoto, tag: str, verdict: str) -> Decisions:
        return record_decision(photo.path, tag, verdict)

    def queue(self) -> list[dict]:
        """Per tag (rarest first) its photos (nearest the threshold first), with current decisions."""
        decisions = {pid: _decisions(p) for pid, p in self.photos.items()}
        out = []
        for tag in sorted(self.vocabulary, key=lambda t: (self.rarity.get(t, 0), t.casefold())):
            threshold = self.thresholds[tag]
            scored = [(p, p.scores[tag]) for p in self.photos.values() if tag in p.scores]
            above = [(p, s) for p, s in scored if tag in p.suggested or s >= threshold]
            above_ids = {p.id for p, _ in above}
            below = sorted(((p, s) for p, s in scored if p.id not in above_ids), key=lambda ps: -ps[1])
            chosen = above + below[:len(above) // 2 + NEAR_MISSES]
            if not above:
                continue
            items = []
            for p, s in chosen:
                d = decisions[p.id]
                state = "accepted" if tag in d.labels else "rejected" if tag in d.not_labels else None
                items.append({"id": p.id, "name": p.path.name, "score": round(s, 4),
                              "suggested": tag in p.suggested, "decision": state,
                              "labels": list(d.labels), "not_labels": list(d.not_labels)})
            items.sort(key=lambda i: (i["decision"] is not None, abs(_logit(i["score"]) - _logit(threshold))))
            out.append({"tag": tag, "threshold": round(threshold, 4), "photos_trained": self.rarity.get(tag),
                        "items": items})
        return out


def _decisions(photo: ReviewPhoto) -> Decisions:
    try:
        return decisions_in(read_sidecar(photo.path), photo.path)
    except TaggerError:
        return Decisions()


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def inside(path: Path, root: Path) -> bool:
    """True when `path`, symlinks resolved, is `root` itself or under it (root already resolved)."""
    real = os.path.realpath(path)
    return real == str(root) or real.startswith(str(root).rstrip(os.sep) + os.sep)


def load_review_set(roots: list[str | os.PathLike]) -> ReviewSet:
    """The photos under `roots` whose sidecar holds the tagger's scores, with thresholds read off the
    sidecars until `use_model` gives the model's own (see ReviewSet.use_model)."""
    real_roots = [Path(os.path.realpath(r)) for r in roots]
    photos: dict[str, ReviewPhoto] = {}
    skipped: list[str] = []
    for index, (given, root) in enumerate(zip(roots, real_roots)):
        base = Path(given) if Path(given).is_dir() else Path(given).parent
        root_dir = root if root.is_dir() else root.parent
        for item in iter_photos([given]):
            if isinstance(item, TaggerError):
                skipped.append(str(item))
                continue
            if not inside(item, root_dir):
                skipped.append(f"{item}: links outside {given}; not served")
                continue
            try:
                data = read_sidecar(item)
            except TaggerError as exc:
                skipped.append(str(exc))
                continue
            scores = (data or {}).get("scores")
            if not isinstance(scores, dict) or not scores:
                continue  # not tagged yet: nothing to review
            photo_id = f"{index}/{item.relative_to(base).as_posix()}"
            suggested = frozenset(e["tag"] for e in data.get("tags", []) if isinstance(e, dict) and "tag" in e)
            photos[photo_id] = ReviewPhoto(photo_id, item, root_dir,
                                           {t: float(s) for t, s in scores.items() if isinstance(s, (int, float))},
                                           suggested, str((data.get("model") or {}).get("name", "")))
    vocabulary = list(dict.fromkeys(t for p in photos.values() for t in p.scores))
    # Without the model: each tag's threshold read off the sidecars, rarity = suggestions here.
    thresholds = {t: _threshold_from_sidecars(t, photos.values()) for t in vocabulary}
    counts = Counter(t for p in photos.values() for t in p.suggested)
    return ReviewSet(real_roots, photos, thresholds, {t: counts[t] for t in vocabulary}, vocabulary, skipped)


def _threshold_from_sidecars(tag: str, photos) -> float:
    tagged = [p.scores[tag] for p in photos if tag in p.suggested and tag in p.scores]
    if not tagged:
        return 0.5
    low = min(tagged)
    untagged = [p.scores[tag] for p in photos if tag not in p.suggested and p.scores.get(tag, -1) < low]
    return (low + max(untagged)) / 2 if untagged else low
