"""`tagger tag --ray` against the one-machine `tagger tag` on the same folder, in one run.

    python bench/ray_vs_one.py --model MODEL.onnx [--photos 64] [--batch-size 16] [--address ADDRESS]

Both sides tag scratch copies of the same generated 12 MP JPEGs and write sidecar JSON. Without
--address (or RAY_ADDRESS) Ray starts on this machine, so the ratio shows Ray's overhead (task and actor
start-up, the object store between stages) on the cores the one-machine path uses alone; on a cluster
the Ray side gains one inference actor per GPU and decoding on every node's cores (docs/benchmarks.md).
Ray's start-up is timed apart; each Ray run includes starting its actors and loading the model in them.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from tagger.benchmark import cpu_name, end_to_end_rate, photo_folder
from tagger.cluster import Cluster, WriteSettings
from tagger.modelfile import TaggerModel, cpu_count
from tagger.tagging import Decision, TagRun
from tagger.writers import create_writer


def ray_rate(cluster: Cluster, folder: Path, model: TaggerModel, batch_size: int) -> tuple[float, int]:
    run = TagRun(model=model, writers=[create_writer("json")], decision=Decision.for_model(model),
                 batch_size=batch_size, workers=cpu_count(), force=True)
    start = time.perf_counter()
    summary = cluster.tag(run, [folder], (), WriteSettings.for_run(run, ["json"]))
    elapsed = time.perf_counter() - start
    if summary.failed:
        raise SystemExit(f"the Ray run failed on {len(summary.failed)} photos: {summary.failed[0]}")
    return summary.tagged / elapsed, summary.tagged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a tagger .onnx model")
    parser.add_argument("--photos", type=int, default=64, help="number of 12 MP JPEGs")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--address", default=None, help="a Ray cluster to join [default: RAY_ADDRESS, else local]")
    parser.add_argument("--cache", type=Path, default=Path(".cache/bench-photos"),
                        help="where the generated photos are kept between runs")
    args = parser.parse_args()

    paths = photo_folder(args.cache, args.photos)
    work = Path(tempfile.mkdtemp(prefix="tagger-bench-ray-"))
    try:
        for side in ("one", "ray"):  # sidecars go into scratch copies, not the cache
            (work / side).mkdir()
            for path in paths:
                shutil.copy(path, work / side / path.name)
        model = TaggerModel(args.model, device="cpu", spinning=False)
        one, n_one = end_to_end_rate([work / "one"], model, args.batch_size, cpu_count(),
                                     writers=[create_writer("json")])
        started = time.perf_counter()
        cluster = Cluster.join(args.address, "cpu")
        join_s = time.perf_counter() - started
        on_ray, n_ray = ray_rate(cluster, work / "ray", model, args.batch_size)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert n_one == n_ray == len(paths), (n_one, n_ray)
    print(f"machine: {cpu_name()}, {cpu_count()} cores; model {Path(args.model).name}; {len(paths)} photos "
          f"4000x3000; batch {args.batch_size}")
    print(f"ray: {cluster.describe()}; started or joined in {join_s:.1f}s (not counted below)")
    print(f"one machine (tagger tag)   {one:8.2f} photos/s")
    print(f"Ray Data (tagger tag --ray) {on_ray:7.2f} photos/s")
    print(f"Ray / one machine = {on_ray / one:.2f}")


if __name__ == "__main__":
    main()
