"""Size and start-up time of the packaged binary, side by side with `python -m tagger`, in one run.

    bash scripts/build_binary.sh [--onefile]      # makes dist/tagger/ (and dist/tagger-onefile)
    python bench/binary_startup.py [--runs 21]

Start-up is the wall time of `tagger --help` (which loads every command module), the median of
--runs runs, the binary and Python interleaved so that load from other processes hits both alike.
Budget (issue 6): one-folder size <= 150 MB, binary `--help` <= 0.5 s.
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tagger.benchmark import cpu_name
from tagger.modelfile import cpu_count

ROOT = Path(__file__).resolve().parents[1]
SIZE_BUDGET_MB = 150.0
START_BUDGET_S = 0.5


def folder_mb(path: Path) -> float:
    """Bytes as shipped: regular files only (PyInstaller's symlinks in _internal/ point inside)."""
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) / 2**20


def time_once(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=ROOT / "dist" / "tagger", help="one-folder bundle")
    parser.add_argument("--onefile", type=Path, default=ROOT / "dist" / "tagger-onefile",
                        help="one-file binary, measured when it exists")
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()

    binary = args.bundle / "tagger"
    if not os.access(binary, os.X_OK):
        sys.exit(f"{binary}: not built; run `bash scripts/build_binary.sh` first")
    contenders = {"one-folder binary": [str(binary), "--help"],
                  "python -m tagger": [sys.executable, "-m", "tagger", "--help"]}
    if os.access(args.onefile, os.X_OK):
        contenders["one-file binary"] = [str(args.onefile), "--help"]

    for argv in contenders.values():  # warm the page cache; the first run of anything reads from disk
        time_once(argv)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.runs):
        for name, argv in contenders.items():
            times[name].append(time_once(argv))
    median = {name: statistics.median(values) for name, values in times.items()}

    size = folder_mb(args.bundle)
    print(f"date: {datetime.date.today().isoformat()}; machine: {cpu_name()}, {cpu_count()} cores; "
          f"Python {sys.version.split()[0]}; {args.runs} runs each, interleaved")
    print(f"one-folder size        {size:8.1f} MB   (budget {SIZE_BUDGET_MB:.0f} MB: "
          f"{'ok' if size <= SIZE_BUDGET_MB else 'OVER'})")
    if "one-file binary" in contenders:
        print(f"one-file size          {folder_mb(args.onefile):8.1f} MB")
    for name, value in median.items():
        spread = f"{min(times[name]):.3f}-{max(times[name]):.3f}"
        print(f"{name + ' --help':<30} {value:6.3f} s median  (range {spread} s)")
    verdict = "ok" if median["one-folder binary"] <= START_BUDGET_S else "OVER"
    print(f"binary start budget {START_BUDGET_S} s: {verdict}")
    print(f"start-up ratio one-folder / python -m tagger = "
          f"{median['one-folder binary'] / median['python -m tagger']:.2f}")


if __name__ == "__main__":
    main()
