"""Images to check an export on when there is no validation set (zero-shot models)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tagger.discover import iter_photos
from tagger.errors import TaggerError
from tagger.images import Preprocess, load_image, resize_image

PROBE_COUNT = 32


def folder_images(folder: str | Path, spec: Preprocess, limit: int = 64) -> np.ndarray:
    """Up to `limit` photos under `folder` as uint8 [N, S, S, 3]; unreadable files are skipped."""
    out = []
    for item in iter_photos([folder]):
        if isinstance(item, TaggerError):
            continue
        try:
            out.append(load_image(item, spec))
        except TaggerError:
            continue
        if len(out) >= limit:
            break
    if not out:
        raise TaggerError(folder, "no readable photos to check the export on")
    return np.stack(out)


def probe_images(spec: Preprocess, count: int = PROBE_COUNT, seed: int = 0) -> np.ndarray:
    """Synthetic scenes (gradients, shapes, colours): real image statistics for a parity check,
    unlike uniform noise, which no layer of a CLIP model ever sees."""
    from train.synthetic import KINDS, draw_scene

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        kinds = [k for k in KINDS if rng.random() < 0.3]
        out.append(resize_image(draw_scene(kinds, rng, size=(spec.size * 4 // 3, spec.size)), spec))
    return np.stack(out)
