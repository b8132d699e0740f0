"""RAW decoding speed, side by side: the embedded-preview path `tagger tag` takes, its half-size
demosaic fallback, and a full demosaic (what a plain `rawpy.imread(...).postprocess()` script
does), with a JPEG of the same scene as the reference. Every path ends in the model's input
(uint8 [S, S, 3]) and runs on one thread per core, as `tagger tag` decodes.

    python bench/raw_decode.py [--photos 6] [--width 6000 --height 4000] [--preview full|1616]

The DNGs are made from camera-like scenes (tagger.benchmark.make_photo) with bench/dng.py: a
16-bit RGGB mosaic plus an embedded baseline JPEG preview, full size by default (Canon and recent
Nikon bodies embed one; Sony's ARW preview is 1616x1080: `--preview 1616`).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.dng import preview_jpeg, write_dng  # noqa: E402
from tagger.benchmark import cpu_name, make_photo, threaded_rate  # noqa: E402
from tagger.images import Preprocess, load_image, resize_image  # noqa: E402
from tagger.modelfile import cpu_count  # noqa: E402
from tagger.raw import open_raw  # noqa: E402


def full_demosaic(path: Path, spec: Preprocess) -> np.ndarray:
    import rawpy

    with rawpy.imread(str(path)) as raw:
        rgb = raw.postprocess(use_camera_wb=True, output_bps=8)  # LibRaw's defaults: AHD, full size
    return resize_image(Image.fromarray(rgb), spec)


def steady_rate(decode, paths: list[Path], workers: int, seconds: float = 3.0) -> float:
    """threaded_rate over the photos repeated until one pass takes `seconds` (fast paths would
    otherwise be timed over a few tens of milliseconds)."""
    rate = threaded_rate(decode, paths, workers)
    repeat = max(1, round(seconds * rate / len(paths)))
    return rate if repeat == 1 else threaded_rate(decode, paths * repeat, workers)


def make_raw_folder(folder: Path, count: int, size: tuple[int, int], preview: str) -> tuple[list[Path], list[Path]]:
    raws, jpegs = [], []
    for i in range(count):
        jpeg = make_photo(folder / f"IMG_{i:04}.jpg", seed=i, size=size)
        scene = np.asarray(Image.open(jpeg).convert("RGB"))
        shown = scene if preview == "full" else np.asarray(Image.fromarray(scene).resize((1616, 1616 * size[1] // size[0])))
        raws.append(write_dng(folder / f"IMG_{i:04}.dng", scene, preview=preview_jpeg(shown), orientation=6))
        jpegs.append(jpeg)
    return raws, jpegs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=6)
    parser.add_argument("--width", type=int, default=6000)
    parser.add_argument("--height", type=int, default=4000)
    parser.add_argument("--preview", choices=["full", "1616"], default="full")
    parser.add_argument("--size", type=int, default=224, help="model input side")
    args = parser.parse_args()
    workers = cpu_count()
    spec = Preprocess(args.size)

    with tempfile.TemporaryDirectory(prefix="tagger-raw-bench-") as scratch:
        print(f"making {args.photos} DNGs of {args.width}x{args.height} ...", file=sys.stderr)
        raws, jpegs = make_raw_folder(Path(scratch), args.photos, (args.width, args.height), args.preview)
        mb = sum(os.path.getsize(p) for p in raws) / len(raws) / 1e6
        rows = []
        for name, decode, paths in [
            ("JPEG of the same scene (reference)", lambda p: load_image(p, spec), jpegs),
            ("RAW, embedded preview (tagger tag)", lambda p: load_image(p, spec), raws),
            ("RAW, half-size demosaic (tagger's fallback)",
             lambda p: resize_image(open_raw(p, spec.size, use_preview=False), spec), raws),
            ("RAW, full demosaic (rawpy postprocess)", lambda p: full_demosaic(p, spec), raws),
        ]:
            print(f"  {name} ...", file=sys.stderr)
            decode(paths[0])  # first call loads libraries
            rows.append((name, steady_rate(decode, paths, workers)))

    full = rows[-1][1]
    print(f"{cpu_name()}, {workers} threads; {args.photos} DNGs of {args.width}x{args.height} "
          f"({mb:.0f} MB each, {args.preview} preview); model input {args.size}px")
    print(f"{'path':46s} {'photos/s':>9s} {'vs full demosaic':>17s}")
    for name, rate in rows:
        print(f"{name:46s} {rate:9.2f} {rate / full:16.1f}x")


if __name__ == "__main__":
    main()
