"""What the scoring parts cost at tagging time: the exported graph with and without the q2l head, and
with a free branch of the tower's last blocks (train.free_branch), side by side, one run.

    python -m bench.head_speed [--backbone ViT-B-32] [--tags 100] [--free-blocks 12,6] [--batch-size 16] [--seconds 20]

Every graph is what `tagger export` writes (train.model.score_images; the q2l one adds the head's
residual logit, a free branch its copy of the last blocks and its own head), random weights (speed
does not depend on the values), fp32 and int8 (dynamic, the default), on ONNX Runtime with this
machine's cores, timed in interleaved rounds so that a neighbour's load hits every variant alike. The
head's self-attention grows with the square of the tag count, so the ratio is worth measuring at the
vocabulary size a user has (`--tags`).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from bench.export_speed import interleaved_rates
from export.build import ExportSettings, build_model_file
from export.check_images import probe_images
from export.parity import onnx_session
from tagger.benchmark import cpu_name
from tagger.modelfile import INPUT_NAME, OUTPUT_NAME, build_metadata, cpu_count
from train.backbone import load_clip
from train.model import HPDVAL, HPDVALConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="ViT-B-32")
    parser.add_argument("--tags", type=int, default=100)
    parser.add_argument("--free-blocks", default="", help="comma-separated free branch sizes to add, e.g. 12,6")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured time per variant (over 4 rounds)")
    args = parser.parse_args()

    threads = cpu_count()
    torch.set_num_threads(threads)
    labels = [f"tag{i}" for i in range(args.tags)]
    thresholds = [0.5] * len(labels)
    clip = load_clip(args.backbone, None)
    images = probe_images(clip.preprocess, count=16)

    def metadata(report: dict) -> dict[str, str]:
        return build_metadata(labels, thresholds, clip.preprocess, {"name": "bench", "backbone": args.backbone,
                                                                    "created": "bench", "export": report})

    graphs = {"dual-view": ("dual-view", 0), "q2l": ("q2l", 0)}
    graphs |= {f"q2l+free {k}": ("q2l", int(k)) for k in filter(None, args.free_blocks.split(","))}
    runners, sizes = {}, {}
    for name, (head, free_blocks) in graphs.items():
        torch.manual_seed(0)
        model = HPDVAL(load_clip(args.backbone, None), labels, teacher=False,
                       config=HPDVALConfig(head=head, free_blocks=free_blocks)).eval()
        for q2l in model.heads():  # a trained head's classifier is not zero; the cost is the same either way
            if q2l is not None:
                torch.nn.init.normal_(q2l.classifier, std=0.02)
        parts = model.export_parts()
        for variant in ("fp32", "int8"):
            result = build_model_file(parts, thresholds, images, metadata,
                                      ExportSettings(variant, threads=threads, force=True))
            session = onnx_session(result.data, threads)
            runners[(name, variant)] = (lambda s: lambda x: s.run([OUTPUT_NAME], {INPUT_NAME: x}))(session)
            sizes[(name, variant)] = len(result.data) / 1e6

    batch = np.ascontiguousarray(np.resize(images, (args.batch_size, *images.shape[1:])))
    rates = interleaved_rates(runners, batch, args.seconds)

    print(f"{args.backbone} (random weights), {args.tags} tags, batch {args.batch_size}, {threads} threads, {cpu_name()}")
    print(f"\n{'graph':<24}{'images/s':>10}{'file MB':>10}")
    for (name, variant), rate in rates.items():
        print(f"{name + ' ' + variant:<24}{rate:>10.1f}{sizes[(name, variant)]:>10.1f}")
    for variant in ("fp32", "int8"):
        for name in graphs:
            if name != "dual-view":
                print(f"ratio {name} / dual-view, {variant}: {rates[(name, variant)] / rates[('dual-view', variant)]:.2f}")


if __name__ == "__main__":
    main()
