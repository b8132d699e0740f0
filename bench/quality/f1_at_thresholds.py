"""Test F1 at each run's calibrated thresholds: what `tagger tag` writes, which test mAP does not see.

    python -m bench.quality.f1_at_thresholds [--methods default,dual_view,plain_ft]

Reads the run folders the last full `bench.quality.run_all` left in its result cache (long-tailed
setting, every seed of both tasks), scores the test photos with each run's exported graph, cuts each
tag at the threshold the run calibrated on its validation split (children bring their vocabulary
parents, as tagging does) and prints macro and micro F1 and macro precision and recall, mean ± sd
over seeds, as a Markdown table; the last column cuts every tag at one global threshold instead (the
best single one on validation), as most taggers do.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from bench.quality import pretrain_vlm
from bench.quality.methods import scores_of_run
from bench.quality.run_all import Plan, load_test_pixels
from train import runs
from train.metrics import f1_summary, precision_recall
from train.report import load_val_scores, val_targets


def global_threshold(scores: np.ndarray, targets: np.ndarray) -> float:
    """The one threshold for every tag with the best micro F1 on validation: what taggers with a single
    global cut-off do, for comparison with the per-tag thresholds `tagger train` calibrates."""
    y = targets.astype(bool)
    candidates = np.linspace(0.02, 0.98, 49)
    f1 = [2 * (s_yes & y).sum() / (s_yes.sum() + y.sum()) for s_yes in (scores >= t for t in candidates)]
    return float(candidates[int(np.argmax(f1))])


def f1_table(plan: Plan, cache_root: Path, methods: list[str]) -> list[str]:
    """Markdown rows: per task and method, mean ± sd over the plan's seeds of the long-tailed runs."""
    results = cache_root / f"results-{plan.vlm.key()}{'-quick' if plan.quick else ''}"  # run_all's cache
    lines = ["| task | method | F1 macro | F1 micro | precision (macro) | recall (macro) | F1 macro, one global "
             "threshold |", "|---|---|---|---|---|---|---|"]
    for spec in plan.tasks:
        task = spec.build(cache_root / f"task-{spec.config.key()}")
        pixels = None  # the task's test photos, decoded once (every run of a task shares its preprocessing)
        for method in methods:
            rows = []
            for seed in plan.seeds:
                run_dir = results / spec.name / "long-tailed" / method / f"seed-{seed}" / "run"
                run = runs.load_run(run_dir)
                if pixels is None:
                    pixels = load_test_pixels(task, run.preprocess, results / spec.name)
                scores = scores_of_run(run_dir, pixels)
                f1 = f1_summary(scores, task.test.targets, np.asarray(run.thresholds), run.labels)
                precision, recall = precision_recall(scores, task.test.targets, run.thresholds, run.labels)
                one = np.full(len(run.labels), global_threshold(load_val_scores(run_dir, run.dataset),
                                                                val_targets(run.dataset)))
                rows.append((f1["f1_macro"], f1["f1_micro"], np.mean([p for p in precision if p is not None]),
                             np.mean([r for r in recall if r is not None]),
                             f1_summary(scores, task.test.targets, one, run.labels)["f1_macro"]))
            cells = [f"{np.mean(c):.1f} ± {np.std(c):.1f}" for c in zip(*rows)]
            lines.append(f"| {spec.name} | {method} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="default,dual_view,plain_ft")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print("\n".join(f1_table(Plan.full(), pretrain_vlm.CACHE_ROOT, args.methods.split(","))))


if __name__ == "__main__":
    main()
