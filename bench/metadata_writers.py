"""Cost of the metadata writers per photo, side by side in one run: XMP sidecar vs. embed, write
vs. the up-to-date check a re-run does, and the keyword reader `tagger train` uses.

    python bench/metadata_writers.py [--photos 200] [--samples ../shared/testdata/exif-samples]

Photos are copies of the real camera JPEGs in the samples folder (a mix of 8 KB to 5 MB files,
cycled to --photos), written in a temporary folder. Figures are the median per-photo time and the
resulting photos/s. The embed write is 3 exiftool calls (read, write, fill in the size record).
"""
from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from tagger.benchmark import cpu_name
from tagger.keywords import read_user_keywords
from tagger.modelfile import cpu_count
from tagger.writers.base import ModelRef, PhotoResult
from tagger.writers.embed import EmbedWriter
from tagger.writers.xmp_sidecar import XmpWriter

ROOT = Path(__file__).resolve().parents[1]
MODEL = ModelRef("bench", "0" * 64)
TAGS = [("dog", 0.9), ("Animals|Cat", 0.8), ("beach", 0.7)]


def make_photos(samples: Path, count: int, folder: Path) -> list[Path]:
    sources = sorted(p for p in (samples / "jpg").rglob("*.jpg") if p.name != "corrupted.jpg")
    photos = []
    for i in range(count):
        src = sources[i % len(sources)]
        dest = folder / f"{i:05d}_{src.name}"
        shutil.copyfile(src, dest)
        photos.append(dest)
    return photos


def per_photo(fn, photos: list[Path]) -> list[float]:
    times = []
    for photo in photos:
        start = time.perf_counter()
        fn(photo)
        times.append(time.perf_counter() - start)
    return times


def result_for(photo: Path) -> PhotoResult:
    stat = photo.stat()
    return PhotoResult(photo, stat.st_size, stat.st_mtime, MODEL, TAGS, {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--samples", type=Path, default=ROOT.parent / "shared" / "testdata" / "exif-samples")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        photos = make_photos(args.samples, args.photos, Path(tmp))
        megabytes = sum(p.stat().st_size for p in photos) / 2**20

        xmp = XmpWriter()
        rows.append(("xmp sidecar: write", per_photo(lambda p: xmp.write(result_for(p)), photos)))
        rows.append(("xmp sidecar: is_current", per_photo(lambda p: xmp.is_current(p, p.stat(), MODEL), photos)))

        start = time.perf_counter()
        embed = EmbedWriter()
        startup = time.perf_counter() - start
        try:
            rows.append(("embed: write", per_photo(lambda p: embed.write(result_for(p)), photos)))
            rows.append(("embed: is_current", per_photo(lambda p: embed.is_current(p, p.stat(), MODEL), photos)))
        finally:
            embed.close()

        start = time.perf_counter()
        found = read_user_keywords(photos)
        reader = time.perf_counter() - start
        assert len(found) == len(photos)

    print(f"# metadata writers — {datetime.date.today()}, {cpu_name()}, {cpu_count()} cores, "
          f"{args.photos} photos ({megabytes:.0f} MB)")
    print(f"{'step':28s} {'median ms/photo':>16s} {'photos/s':>10s}")
    for name, times in rows:
        median = statistics.median(times)
        print(f"{name:28s} {median * 1000:16.2f} {len(times) / sum(times):10.0f}")
    print(f"{'keyword reader (batched)':28s} {reader / len(photos) * 1000:16.2f} {len(photos) / reader:10.0f}")
    print(f"exiftool start-up: {startup * 1000:.0f} ms (once per run)")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
