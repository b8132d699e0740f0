"""Model-only speed of one exported HP-DVAL graph: PyTorch eager vs ONNX Runtime fp32 vs int8, one run.

    python bench/export_speed.py [--backbone ViT-B-32] [--batch-size 16] [--seconds 20]

The graph is what `tagger export` writes for a run (train.model.score_images over the student tower,
P_G/P_L constants, top-k local pooling, fusion, sigmoid), with random-initialized weights: speed does
not depend on the values. Every variant gets the same uint8 batches on this machine's cores, timed in
interleaved rounds so that a neighbour's load hits all of them alike; int8 is measured both ways
(dynamic, the default, and static QDQ with calibration) since that choice was made on these numbers.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from export.build import ExportSettings, build_model_file
from export.check_images import probe_images
from export.graph import ScoringGraph
from export.parity import onnx_session
from tagger.benchmark import cpu_name
from tagger.modelfile import INPUT_NAME, OUTPUT_NAME, build_metadata, cpu_count
from train.backbone import load_clip
from train.model import HPDVAL

LABELS = [f"tag{i}" for i in range(20)]


def timed(fn, batch: np.ndarray, seconds: float) -> tuple[int, float]:
    """(images, seconds) for repeated calls on one batch until `seconds` have passed."""
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn(batch)
        images += len(batch)
    return images, time.perf_counter() - start


def interleaved_rates(runners: dict, batch: np.ndarray, seconds: float, rounds: int = 4) -> dict:
    """Images/s of each runner on `batch`, after one warm-up call each, timed in interleaved rounds
    so that a neighbour's load hits every runner alike."""
    for fn in runners.values():  # warm-up: first calls allocate
        fn(batch)
    totals = {name: [0, 0.0] for name in runners}
    for _ in range(rounds):
        for name, fn in runners.items():
            n, s = timed(fn, batch, seconds / rounds)
            totals[name][0] += n
            totals[name][1] += s
    return {name: n / s for name, (n, s) in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured time per variant (over 4 rounds)")
    args = parser.parse_args()

    threads = cpu_count()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    clip = load_clip(args.backbone, None)
    model = HPDVAL(clip, LABELS, teacher=False).eval()
    parts = model.export_parts()
    spec = clip.preprocess
    images = probe_images(spec, count=32)
    thresholds = [0.5] * len(LABELS)

    def metadata(report: dict) -> dict[str, str]:
        return build_metadata(LABELS, thresholds, spec, {"name": "bench", "backbone": args.backbone,
                                                          "created": "bench", "export": report})

    print(f"{args.backbone} (random weights), {len(LABELS)} tags, batch {args.batch_size}, {threads} threads, "
          f"{cpu_name()}")
    t0 = time.perf_counter()
    fp32 = build_model_file(parts, thresholds, images, metadata, ExportSettings("fp32", threads=threads))
    print(f"export fp32 {time.perf_counter() - t0:.0f} s; {fp32.parity}")
    variants = {"fp32": fp32}
    for method in ("dynamic", "static"):
        t0 = time.perf_counter()
        variants[f"int8-{method}"] = build_model_file(
            parts, thresholds, images, metadata,
            ExportSettings("int8", int8_method=method, threads=threads, force=True), calibration_images=images)
        print(f"export int8 {method} {time.perf_counter() - t0:.0f} s; {variants[f'int8-{method}'].agreement}")

    graph = ScoringGraph(parts).eval()
    batch = np.ascontiguousarray(np.resize(images, (args.batch_size, *images.shape[1:])))

    def eager(x: np.ndarray) -> None:
        with torch.inference_mode():
            graph(torch.from_numpy(x))

    runners = {"pytorch eager fp32": eager}
    for key, result in variants.items():
        session = onnx_session(result.data, threads)
        runners[f"onnxruntime {key}"] = (lambda s: lambda x: s.run([OUTPUT_NAME], {INPUT_NAME: x}))(session)
    rates = interleaved_rates(runners, batch, args.seconds)
    sizes = {f"onnxruntime {k}": len(v.data) / 1e6 for k, v in variants.items()}

    print(f"\n{'variant':<28}{'images/s':>10}{'file MB':>10}")
    for name, rate in rates.items():
        size = f"{sizes[name]:.0f}" if name in sizes else "-"
        print(f"{name:<28}{rate:>10.1f}{size:>10}")
    base = rates["onnxruntime fp32"]
    print(f"\nratio onnxruntime fp32 / pytorch eager: {base / rates['pytorch eager fp32']:.2f}")
    print(f"ratio int8 dynamic / fp32 (onnxruntime): {rates['onnxruntime int8-dynamic'] / base:.2f}")
    print(f"ratio int8 static / fp32 (onnxruntime):  {rates['onnxruntime int8-static'] / base:.2f}")


if __name__ == "__main__":
    main()
