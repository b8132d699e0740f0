"""Stress: two and three `tagger tag --write embed,xmp` runs at once on the same folder, many rounds.
Every photo must come out whole: present, same pixels, every tag but the keyword fields unchanged.

    python bench/concurrent_runs.py [--rounds 10] [--photos 30] [--runs 2 3] [--code DIR]

`--code DIR` runs the tagger found in DIR instead of this checkout (an older version, to compare).

Each round copies the real camera JPEGs of the samples folder (cycled to --photos) into a fresh
folder, starts the runs together (`--force`, so every run writes every photo) and then compares
each photo with its original: decoded pixels, and `exiftool -a -G1` of everything outside the
keyword fields and the tagger's record. Before issue 12 two runs lost a photo in 1 round of 5.
Prints one line per configuration: photos lost, damaged, runs that failed, wall time per round.
"""
from __future__ import annotations

import argparse
import datetime
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tagger.benchmark import cpu_name  # noqa: E402
from tagger.modelfile import cpu_count  # noqa: E402
from tests.metadata_util import changed_tags, exiftool_json, pixels  # noqa: E402
from tests.onnx_models import build_colour_model  # noqa: E402


def make_photos(samples: Path, count: int, folder: Path) -> list[Path]:
    sources = sorted(p for p in (samples / "jpg").rglob("*.jpg") if p.name != "corrupted.jpg")
    folder.mkdir(parents=True)
    photos = []
    for i in range(count):
        dest = folder / f"IMG_{i:04d}.jpg"
        shutil.copyfile(sources[i % len(sources)], dest)
        photos.append(dest)
    return photos


def one_round(samples: Path, work: Path, model: Path, photos: int, runs: int, code: Path
              ) -> tuple[int, int, int, float]:
    folder = work / "photos"
    shutil.rmtree(folder, ignore_errors=True)
    originals = make_photos(samples, photos, folder)
    before = {p: (meta, pixels(p)) for p, meta in zip(originals, exiftool_json(*originals))}
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "tagger", "tag", str(folder), "--model", str(model),
                               "--write", "embed,xmp", "--force", "-q"], cwd=code,
                              env={**os.environ, "PYTHONPATH": str(code)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(runs)]
    failed_runs = 0
    for proc in procs:
        _out, err = proc.communicate(timeout=1800)
        if proc.returncode != 0:
            failed_runs += 1
            print(err.decode("utf-8", "replace").strip().splitlines()[-3:], file=sys.stderr)
    wall = time.perf_counter() - start
    present = [p for p in originals if p.exists()]
    lost = len(originals) - len(present)
    damaged = 0
    after = dict(zip(present, exiftool_json(*present))) if present else {}
    for photo in present:
        meta, image = before[photo]
        if changed_tags(meta, after[photo]) or not np.array_equal(pixels(photo), image):
            damaged += 1
    return lost, damaged, failed_runs, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--photos", type=int, default=30)
    parser.add_argument("--runs", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--code", type=Path, default=ROOT, help="folder holding the tagger package to run")
    parser.add_argument("--samples", type=Path, default=ROOT.parent / "shared" / "testdata" / "exif-samples")
    args = parser.parse_args()
    print(f"{datetime.date.today()}  {cpu_name()}, {cpu_count()} cores; {args.photos} photos, {args.rounds} rounds; "
          f"tagger from {args.code}")
    print(f"{'runs at once':>12} {'rounds':>6} {'photos lost':>11} {'damaged':>7} {'runs failed':>11} {'s/round':>7}")
    with tempfile.TemporaryDirectory(prefix="tagger-concurrent-") as tmp:
        work = Path(tmp)
        model = build_colour_model(work / "colours.onnx")
        for runs in args.runs:
            totals = [0, 0, 0]
            walls = []
            for _ in range(args.rounds):
                lost, damaged, failed, wall = one_round(args.samples, work, model, args.photos, runs, args.code)
                totals = [totals[0] + lost, totals[1] + damaged, totals[2] + failed]
                walls.append(wall)
            print(f"{runs:>12} {args.rounds:>6} {totals[0]:>11} {totals[1]:>7} {totals[2]:>11} "
                  f"{sum(walls) / len(walls):>7.1f}")


if __name__ == "__main__":
    main()
