"""A tagging run: which photos need work, scores to tag decisions, writing, and the run's summary."""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from tagger.decisions import rejected_tags, rejection_pending
from tagger.discover import iter_photos
from tagger.errors import TaggerError, WriteError, describe
from tagger.exiftool import ExifToolMissing
from tagger.hierarchy import ancestors, close_upward
from tagger.locking import photo_lock
from tagger.modelfile import TaggerModel
from tagger.pipeline import run_model
from tagger.raw import embed_refusal
from tagger.writers import ModelRef, PhotoResult, Writer
from tagger.writers.json_sidecar import sidecar_document


@dataclass(frozen=True)
class Decision:
    """How scores become tags: per-tag calibrated thresholds unless the user overrides them, at most
    --top-k of them, then every chosen tag's parents in the vocabulary (tagger.hierarchy)."""

    labels: Sequence[str]
    thresholds: np.ndarray  # [C]
    top_k: int | None = None
    parents: tuple[tuple[int, ...], ...] = ()  # per tag, its ancestors in the vocabulary; () for a flat one

    @classmethod
    def for_model(cls, model: TaggerModel, threshold: float | None = None, top_k: int | None = None
                  ) -> "Decision":
        thresholds = np.asarray(model.info.thresholds, dtype=np.float32)
        if threshold is not None:
            thresholds = np.full_like(thresholds, threshold)
        parents = tuple(map(tuple, ancestors(model.labels)))
        return cls(model.labels, thresholds, top_k, parents if any(parents) else ())  # flat: nothing to close

    def tags(self, scores: np.ndarray) -> list[tuple[str, float]]:
        chosen = np.flatnonzero(scores >= self.thresholds)
        chosen = chosen[np.argsort(-scores[chosen], kind="stable")]
        if self.top_k is not None:
            chosen = chosen[: self.top_k]
        if self.parents:  # a kept child keeps its parents, past --top-k too: the tree holds
            kept = np.zeros(len(scores), dtype=bool)
            kept[chosen] = True
            brought = np.flatnonzero(close_upward(kept, self.parents) & ~kept)
            chosen = np.r_[chosen, brought[np.argsort(-scores[brought], kind="stable")]]
        return [(self.labels[i], float(scores[i])) for i in chosen]


def score_problem(scores: np.ndarray, labels: Sequence[str]) -> str | None:
    """Why a model's scores for one photo cannot be written (they must be numbers in [0, 1]), or None.
    NaN or 1e30 would become tags, and JSON cannot hold NaN or Infinity."""
    bad = np.flatnonzero(~(np.isfinite(scores) & (scores >= 0.0) & (scores <= 1.0)))
    if not bad.size:
        return None
    return f"the model gave tag {labels[bad[0]]!r} the score {float(scores[bad[0]])!r}, outside [0, 1]"


@dataclass
class Summary:
    tagged: int = 0
    skipped: int = 0  # outputs already up to date for this model
    failed: list[TaggerError] = field(default_factory=list)
    # An output the user asked for that this photo must not get (embed into a proprietary RAW):
    # said once per photo, not a failure.
    not_written: list[TaggerError] = field(default_factory=list)
    interrupted: bool = False

    def lines(self) -> list[str]:
        head = f"{self.tagged} tagged, {self.skipped} skipped (up to date), {len(self.failed)} failed"
        if self.not_written:
            head += f", {len(self.not_written)} not written into (see below)"
        if self.interrupted:
            head = "Interrupted: " + head + ". Run the same command again to finish."
        return ([head] + [f"  skipped: {note}" for note in self.not_written]
                + [f"  failed: {error}" for error in self.failed])


@dataclass
class TagRun:
    """One `tagger tag` invocation, independent of the command line so tests can drive it."""

    model: TaggerModel
    writers: list[Writer]
    decision: Decision
    batch_size: int
    workers: int
    force: bool = False
    dry_run: bool = False
    emit: Callable[[str], None] = print  # where --dry-run prints its JSON lines
    progress: Callable[[int], None] = lambda n: None  # called with photos finished

    def run(self, roots: Iterable[str | os.PathLike], exclude: Iterable[str] = ()) -> Summary:
        summary = Summary()
        model_ref = ModelRef(self.model.info.name, self.model.info.sha256)
        todo = self._needing_work(iter_photos(roots, exclude), model_ref, summary)
        try:
            for done, errors in run_model(todo, self.model.predict, self.model.info.preprocess,
                                          batch_size=self.batch_size, workers=self.workers):
                summary.failed.extend(errors)
                for decoded, scores in done:
                    self.tag_one(decoded.path, decoded.stat.st_size, decoded.stat.st_mtime, scores, model_ref, summary)
                self.progress(len(done) + len(errors))
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            for writer in self.writers:
                writer.close()
        return summary

    def tag_one(self, path: Path, size: int, mtime: float, scores: np.ndarray, model_ref: ModelRef,
                summary: Summary) -> None:
        """One photo's scores to its tags and outputs (also what `tagger tag --ray` workers run)."""
        problem = score_problem(scores, self.decision.labels)
        if problem:
            summary.failed.append(TaggerError(path, f"{problem}; nothing written"))
            return
        rejected = rejected_tags(path)  # the user's "no" (tagger review) wins
        result = PhotoResult(path=path, size=size, mtime=mtime, model=model_ref,
                             tags=[t for t in self.decision.tags(scores) if t[0] not in rejected],
                             scores={label: float(s) for label, s in zip(self.decision.labels, scores)})
        self._write(result, summary)

    def _writers_for(self, photo: Path) -> list[Writer]:
        """The writers that may write this photo's outputs: none that writes into a proprietary RAW."""
        if embed_refusal(photo) is None:
            return self.writers
        return [writer for writer in self.writers if not writer.changes_photo]

    def _needing_work(self, found: Iterator[Path | TaggerError], model_ref: ModelRef, summary: Summary
                      ) -> Iterator[Path]:
        for item in found:
            if isinstance(item, TaggerError):
                summary.failed.append(item)
                self.progress(1)
            elif self.writers and not self._writers_for(item):  # nothing to write: not worth decoding
                summary.not_written.append(TaggerError(item, embed_refusal(item)))
                self.progress(1)
            elif not self.force and not self.dry_run and self._is_current(item, model_ref):
                summary.skipped += 1
                self.progress(1)
            else:
                yield item

    def _is_current(self, photo: Path, model_ref: ModelRef) -> bool:
        try:
            stat = photo.stat()
            if rejection_pending(photo):
                return False
            return all(writer.is_current(photo, stat, model_ref) for writer in self._writers_for(photo))
        except (OSError, UnicodeError, RecursionError, ValueError, TaggerError):
            return False  # decoding or writing will report it

    def _write(self, result: PhotoResult, summary: Summary) -> None:
        if self.dry_run:
            self.emit(json.dumps(sidecar_document(result), ensure_ascii=False))
            summary.tagged += 1
            return
        errors = []
        writers = self._writers_for(result.path)
        if len(writers) < len(self.writers):
            summary.not_written.append(TaggerError(result.path, embed_refusal(result.path)))
        try:
            # One run at a time writes a photo and its sidecars (another run on the same folder waits).
            with photo_lock(result.path):
                self._write_locked(result, writers, errors)
        except ExifToolMissing:
            raise  # exiftool died and cannot be started again: fatal, not this photo's fault
        except TaggerError as exc:
            errors.append(exc)
        if errors:
            # Writers that fail for one reason (the photo changed, say) make one line, not one each.
            summary.failed.extend({str(error): error for error in errors}.values())
        else:
            summary.tagged += 1

    def _write_locked(self, result: PhotoResult, writers: list[Writer], errors: list[TaggerError]) -> None:
        # A writer that changes the photo itself (embed) goes first; the others then record the
        # photo's size after that write, so the next run finds every output up to date.
        for writer in sorted(writers, key=lambda w: not w.changes_photo):
            try:
                writer.write(result)
            except ExifToolMissing:
                raise
            except TaggerError as exc:
                errors.append(exc)
                continue
            except (OSError, UnicodeError, RecursionError, ValueError) as exc:
                # Whatever a writer did not foresee costs this photo, never the run.
                errors.append(WriteError(result.path, f"{writer.name} output not written: {describe(exc)}"))
                continue
            if writer.changes_photo:
                try:
                    stat = result.path.stat()
                except OSError:
                    continue
                result = replace(result, size=stat.st_size, mtime=stat.st_mtime)
