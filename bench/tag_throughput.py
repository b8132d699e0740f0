"""Decode-only, model-only and end-to-end `tagger tag` throughput, measured side by side in one run.

    python bench/tag_throughput.py --model MODEL.onnx [--photos 64] [--batch-size 16]

Decoding and the model share the machine's cores, so the best a pipeline can do is
1 / (1/decode_rate + 1/model_rate). The script prints end-to-end as a fraction of that bound.
"""
from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.photos import photo_folder  # noqa: E402
from tagger.modelfile import TaggerModel, cpu_count  # noqa: E402
from tagger.pipeline import decode_stream  # noqa: E402
from tagger.tagging import Decision, TagRun  # noqa: E402
from tagger.writers import create_writer  # noqa: E402


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def decode_rate(paths, model: TaggerModel, workers: int) -> float:
    start = time.perf_counter()
    count = sum(1 for _ in decode_stream(paths, model.info.preprocess, workers, window=4 * workers))
    return count / (time.perf_counter() - start)


def model_rate(model: TaggerModel, batch_size: int, seconds: float = 8.0) -> float:
    size = model.info.preprocess.size
    batch = np.random.default_rng(0).integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)
    model.predict(batch)  # warm-up: first call allocates
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        model.predict(batch)
        done += batch_size
    return done / (time.perf_counter() - start)


def end_to_end_rate(folder: Path, model: TaggerModel, batch_size: int, workers: int) -> float:
    run = TagRun(model=model, writers=[create_writer("json")], decision=Decision.for_model(model),
                 batch_size=batch_size, workers=workers, force=True)
    start = time.perf_counter()
    summary = run.run([folder])
    elapsed = time.perf_counter() - start
    if summary.failed:
        raise SystemExit(f"end-to-end run failed on {len(summary.failed)} photos: {summary.failed[0]}")
    return summary.tagged / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a tagger .onnx model")
    parser.add_argument("--photos", type=int, default=64, help="number of 12 MP JPEGs")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=cpu_count())
    parser.add_argument("--cache", type=Path, default=Path(".cache/bench-photos"),
                        help="where the generated photos are kept between runs")
    args = parser.parse_args()

    paths = photo_folder(args.cache, args.photos)
    work = Path(tempfile.mkdtemp(prefix="tagger-bench-"))
    try:
        for path in paths:  # sidecars go into a scratch copy, not the cache
            shutil.copy(path, work / path.name)
        model = TaggerModel(args.model, device="cpu", spinning=False)
        decode = decode_rate(paths, model, args.workers)
        infer = model_rate(model, args.batch_size)
        e2e = end_to_end_rate(work, model, args.batch_size, args.workers)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    bound = 1.0 / (1.0 / decode + 1.0 / infer)
    print(f"machine: {cpu_name()}, {cpu_count()} cores; model {Path(args.model).name} "
          f"({model.info.model.get('backbone', '?')}); {args.photos} photos 4000x3000; "
          f"batch {args.batch_size}; {args.workers} decode workers")
    print(f"decode-only      {decode:8.1f} images/s")
    print(f"model-only       {infer:8.1f} images/s")
    print(f"bound            {bound:8.1f} images/s  (1 / (1/decode + 1/model): both share the cores)")
    print(f"end-to-end       {e2e:8.1f} images/s")
    print(f"end-to-end / bound = {e2e / bound:.2f}")


if __name__ == "__main__":
    main()
