"""Throughput measurements shared by `tagger bench` and the scripts in bench/.

Decoding and the model share the machine's cores, so the best a pipeline can reach is
1 / (1/decode_rate + 1/model_rate); end-to-end is reported against that bound.
"""
from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from tagger.errors import TaggerError
from tagger.images import Preprocess, load_image, resize_image
from tagger.modelfile import TaggerModel
from tagger.pipeline import decode_stream
from tagger.tagging import Decision, TagRun


def folder_bench_parser(doc: str, cache: str) -> argparse.ArgumentParser:
    """The options every bench/ script that tags a generated folder takes: the model under test and
    where its generated photos are kept between runs (making 12 MP JPEGs takes longer than tagging)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a tagger .onnx model")
    parser.add_argument("--cache", type=Path, default=Path(cache),
                        help="where the generated photos are kept between runs")
    return parser


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def make_photo(path: Path, seed: int, size: tuple[int, int] = (4000, 3000), quality: int = 90) -> Path:
    """A camera-like JPEG: smooth structure plus sensor noise, 3-5 MB at 12 MP like a phone photo.
    (Pure noise would be unrealistically slow to decode, flat colour unrealistically fast.)"""
    rng = np.random.default_rng(seed)
    width, height = size
    coarse = rng.integers(0, 256, (max(1, height // 100), max(1, width // 100), 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)
    detail = Image.fromarray(rng.integers(0, 256, (max(1, height // 4), max(1, width // 4), 3), dtype=np.uint8))
    detail = detail.filter(ImageFilter.GaussianBlur(1)).resize(size, Image.Resampling.BILINEAR)
    img = Image.blend(img, detail, 0.25)
    noise = rng.normal(0, 6, (height, width, 1)).astype(np.int16)
    pixels = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=quality)
    return path


def photo_folder(folder: Path, count: int, size: tuple[int, int] = (4000, 3000)) -> list[Path]:
    """`count` generated photos in `folder`, made once and reused by later runs."""
    paths = [folder / f"IMG_{i:04}.jpg" for i in range(count)]
    for i, path in enumerate(paths):
        if not path.exists():
            make_photo(path, seed=i, size=size)
    return paths


def decode_rate(paths: Sequence[Path], model: TaggerModel, workers: int) -> float:
    """Photos/s decoded and resized to the model's input with `workers` threads (no model)."""
    start = time.perf_counter()
    count = sum(1 for _ in decode_stream(paths, model.info.preprocess, workers, window=4 * workers))
    return count / (time.perf_counter() - start)


def threaded_rate(decode: Callable[[Path], object], paths: Sequence[Path], workers: int) -> float:
    """Photos/s that `decode` gets through on `workers` threads; photos it cannot read are not counted."""
    def one(path: Path) -> bool:
        try:
            decode(path)
        except TaggerError:
            return False
        return True

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = sum(pool.map(one, paths))
    return done / (time.perf_counter() - start)


def raw_decode_rates(paths: Sequence[Path], spec: Preprocess, workers: int, demosaic_photos: int = 8
                     ) -> dict[str, float]:
    """RAW files to model input, photos/s: as `tagger tag` decodes them (the embedded preview when
    it is large enough) and by the half-size demosaic it falls back to (on the first few files)."""
    from tagger.raw import open_raw

    return {
        "as_tagged": threaded_rate(lambda p: load_image(p, spec), paths, workers),
        "demosaic": threaded_rate(lambda p: resize_image(open_raw(p, spec.size, use_preview=False), spec),
                                  paths[:demosaic_photos], workers),
    }


def model_rate(model: TaggerModel, batch_size: int, seconds: float = 5.0) -> float:
    """Photos/s through the model alone, on a pre-decoded batch."""
    size = model.info.preprocess.size
    batch = np.random.default_rng(0).integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)
    model.predict(batch)  # the first call allocates and tunes
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done == 0:
        model.predict(batch)
        done += batch_size
    return done / (time.perf_counter() - start)


def end_to_end_rate(roots: Sequence[Path], model: TaggerModel, batch_size: int, workers: int,
                    writers: Sequence | None = None) -> tuple[float, int]:
    """(photos/s, photos) for a whole tagging run. Without writers it is a dry run: nothing is written,
    so it is safe on a user's own photo folders."""
    run = TagRun(model=model, writers=list(writers or []), decision=Decision.for_model(model),
                 batch_size=batch_size, workers=workers, force=True, dry_run=writers is None,
                 emit=lambda line: None)
    start = time.perf_counter()
    summary = run.run(roots)
    elapsed = time.perf_counter() - start
    return summary.tagged / elapsed, summary.tagged


@dataclass(frozen=True)
class Bound:
    decode: float
    model: float

    @property
    def rate(self) -> float:
        return 1.0 / (1.0 / self.decode + 1.0 / self.model)
