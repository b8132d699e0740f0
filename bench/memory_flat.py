"""Peak memory of `tagger tag` must not grow with the number of photos.

    python bench/memory_flat.py --model MODEL.onnx [--small 5000 --large 20000]

Tags a folder of `small` photos and one of `large` photos in separate processes and prints each
process's peak RSS and their ratio (target: within 10%).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tagger.benchmark import folder_bench_parser

# Runs the CLI in a child and reports that child's own peak RSS (ru_maxrss, KiB on Linux).
_MEASURE = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def make_folder(folder: Path, count: int) -> Path:
    """`count` small distinct JPEGs in nested folders of 500, generated once."""
    marker = folder / f".complete-{count}"
    if marker.exists():
        return folder
    rng = np.random.default_rng(count)
    for i in range(count):
        path = folder / f"d{i // 500:03}" / f"IMG_{i:06}.jpg"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).resize((320, 240), Image.Resampling.BILINEAR).save(path, quality=85)
    marker.touch()
    return folder


def peak_rss_mib(folder: Path, model: str) -> tuple[float, float]:
    cmd = [sys.executable, "-c", _MEASURE, sys.executable, "-m", "tagger", "tag", str(folder),
           "--model", model, "--force", "--quiet"]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
    elapsed = time.perf_counter() - start
    code, kib = int(out[0]), int(out[1])
    if code not in (0,):
        raise SystemExit(f"tagger tag exited {code} on {folder}")
    return kib / 1024, elapsed


def main() -> None:
    parser = folder_bench_parser(__doc__, ".cache/bench-memory")
    parser.add_argument("--small", type=int, default=5000)
    parser.add_argument("--large", type=int, default=20000)
    args = parser.parse_args()

    results = {}
    for count in (args.small, args.large):
        folder = make_folder(args.cache / str(count), count)
        rss, seconds = peak_rss_mib(folder, args.model)
        results[count] = rss
        print(f"{count:6d} photos: peak RSS {rss:7.1f} MiB  ({count / seconds:.0f} photos/s)")
    ratio = results[args.large] / results[args.small]
    print(f"peak RSS {args.large} / {args.small} photos = {ratio:.3f} (target <= 1.10)")
    print(json.dumps({"small": args.small, "large": args.large, "ratio": round(ratio, 3)}))


if __name__ == "__main__":
    main()
