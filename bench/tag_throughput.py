"""Decode-only, model-only and end-to-end `tagger tag` throughput, measured side by side in one run.

    python bench/tag_throughput.py --model MODEL.onnx [--photos 64] [--batch-size 16]

Decoding and the model share the machine's cores, so the best a pipeline can do is
1 / (1/decode_rate + 1/model_rate). The script prints end-to-end as a fraction of that bound.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tagger.benchmark import (
    Bound,
    cpu_name,
    decode_rate,
    end_to_end_rate,
    folder_bench_parser,
    model_rate,
    photo_folder,
)
from tagger.modelfile import TaggerModel, cpu_count
from tagger.writers import create_writer


def main() -> None:
    parser = folder_bench_parser(__doc__, ".cache/bench-photos")
    parser.add_argument("--photos", type=int, default=64, help="number of 12 MP JPEGs")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=cpu_count())
    args = parser.parse_args()

    paths = photo_folder(args.cache, args.photos)
    work = Path(tempfile.mkdtemp(prefix="tagger-bench-"))
    try:
        for path in paths:  # sidecars go into a scratch copy, not the cache
            shutil.copy(path, work / path.name)
        model = TaggerModel(args.model, device="cpu", spinning=False)
        bound = Bound(decode=decode_rate(paths, model, args.workers), model=model_rate(model, args.batch_size))
        e2e, _ = end_to_end_rate([work], model, args.batch_size, args.workers, writers=[create_writer("json")])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"machine: {cpu_name()}, {cpu_count()} cores; model {Path(args.model).name} "
          f"({model.info.model.get('backbone', '?')}); {args.photos} photos 4000x3000; "
          f"batch {args.batch_size}; {args.workers} decode workers")
    print(f"decode-only      {bound.decode:8.1f} images/s")
    print(f"model-only       {bound.model:8.1f} images/s")
    print(f"bound            {bound.rate:8.1f} images/s  (1 / (1/decode + 1/model): both share the cores)")
    print(f"end-to-end       {e2e:8.1f} images/s  (writing sidecar JSON)")
    print(f"end-to-end / bound = {e2e / bound.rate:.2f}")


if __name__ == "__main__":
    main()
