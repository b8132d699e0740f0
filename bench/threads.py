"""Which thread settings make `tagger tag` fastest: ONNX Runtime intra-op threads, thread spinning,
and decode workers, measured end to end side by side in one run.

    python bench/threads.py --model MODEL.onnx [--photos 32] [--batch-size 16]

The default of `tagger tag` is the first row (one ORT thread and one decode worker per core, spinning
off); every other row is a ratio against it.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tagger.benchmark import (
    cpu_name,
    end_to_end_rate,
    folder_bench_parser,
    photo_folder,
)
from tagger.modelfile import TaggerModel, cpu_count
from tagger.writers import create_writer


def main() -> None:
    parser = folder_bench_parser(__doc__, ".cache/bench-photos")
    parser.add_argument("--photos", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    cores = cpu_count()
    configs = [  # (ORT intra-op threads, spinning, decode workers)
        (cores, False, cores),
        (cores, True, cores),
        (cores, False, max(1, cores // 2)),
        (cores, False, cores * 2),
        (max(1, cores // 2), False, cores),
    ]
    paths = photo_folder(args.cache, args.photos)
    work = Path(tempfile.mkdtemp(prefix="tagger-threads-"))
    rates = []
    try:
        for path in paths:
            shutil.copy(path, work / path.name)
        for threads, spinning, workers in configs:
            model = TaggerModel(args.model, device="cpu", threads=threads, spinning=spinning)
            rate, _ = end_to_end_rate([work], model, args.batch_size, workers, writers=[create_writer("json")])
            rates.append(rate)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"machine: {cpu_name()}, {cores} cores; model {Path(args.model).name}; {args.photos} photos 4000x3000; "
          f"batch {args.batch_size}")
    print("ORT threads  spinning  decode workers   images/s   vs default")
    for (threads, spinning, workers), rate in zip(configs, rates):
        print(f"{threads:11d}  {str(spinning):8s}  {workers:14d}   {rate:8.1f}   {rate / rates[0]:.2f}")


if __name__ == "__main__":
    main()
