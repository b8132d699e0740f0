"""discover → decode → batch → infer, with decoding overlapped with inference and memory bounded.

Decoding runs in a thread pool (Pillow releases the GIL while decoding and resizing); the model runs
in the caller's thread (ONNX Runtime releases it too). At most `window` photos are in flight, so
memory is the same for ten photos or a million.
"""
from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tagger.errors import TaggerError
from tagger.images import Preprocess, load_image


@dataclass(frozen=True)
class Decoded:
    path: Path
    stat: os.stat_result  # taken before decoding: the sidecar records the version that was tagged
    pixels: np.ndarray  # uint8 [S, S, 3]


def decode_one(path: Path, spec: Preprocess) -> Decoded:
    try:
        stat = path.stat()
    except OSError as exc:
        raise TaggerError(path, f"cannot read ({exc.strerror or exc})") from None
    return Decoded(path, stat, load_image(path, spec))


def decode_stream(paths: Iterable[Path], spec: Preprocess, workers: int, window: int
                  ) -> Iterator[Decoded | TaggerError]:
    """Decoded photos in input order; a photo that fails becomes its TaggerError."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque[Future] = deque()
        try:
            for path in paths:
                pending.append(pool.submit(decode_one, path, spec))
                if len(pending) >= window:
                    yield _result(pending.popleft())
            while pending:
                yield _result(pending.popleft())
        finally:
            # On Ctrl-C or an early stop, drop queued decodes instead of finishing them.
            for future in pending:
                future.cancel()


def _result(future: Future) -> Decoded | TaggerError:
    try:
        return future.result()
    except TaggerError as exc:
        return exc
    except MemoryError:
        return TaggerError(None, "out of memory while decoding")


def batches(items: Iterable[Decoded | TaggerError], batch_size: int
            ) -> Iterator[tuple[list[Decoded], list[TaggerError]]]:
    """Group decoded photos into model batches; errors ride along with the batch they arrived in."""
    batch: list[Decoded] = []
    errors: list[TaggerError] = []
    for item in items:
        if isinstance(item, TaggerError):
            errors.append(item)
        else:
            batch.append(item)
        if len(batch) >= batch_size:
            yield batch, errors
            batch, errors = [], []
    if batch or errors:
        yield batch, errors


def run_model(paths: Iterable[Path], predict: Callable[[np.ndarray], np.ndarray], spec: Preprocess, *,
              batch_size: int, workers: int) -> Iterator[tuple[list[tuple[Decoded, np.ndarray]], list[TaggerError]]]:
    """Scores for every photo, one batch at a time: ([(photo, scores[C])], [errors])."""
    # Two batches in flight keep the decoders busy while the model works on the current one.
    window = max(2 * batch_size, workers * 2)
    for batch, errors in batches(decode_stream(paths, spec, workers, window), batch_size):
        if batch:
            pixels = np.stack([d.pixels for d in batch])
            scores = predict(pixels)
            yield list(zip(batch, scores)), errors
        else:
            yield [], errors
