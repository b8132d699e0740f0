"""Test F1 at each run's calibrated thresholds: what `tagger tag` writes, which test mAP does not see.

    python -m bench.quality.f1_at_thresholds [--methods default,no_free,plain_ft]
                                             [--settings long-tailed,1-shot,5-shot] [--worlds]

Reads the run folders the last full `bench.quality.run_all` left in its result cache (by default the
long-tailed setting, every seed of both tasks; --worlds adds task A's other frequency orders that
`bench.quality.worlds` ran, where they are cached), scores the test photos with each run's exported graph, cuts each
tag at the threshold `tagger train` calibrates from the run's validation scores (bagged max-F1 cuts pooled
within frequency groups, train.metrics.calibrated_thresholds; children bring their vocabulary parents, as
tagging does) and prints
macro and micro F1 and macro precision and recall, mean ± sd over seeds, as a Markdown table. Two
more columns cut the same scores another way: at each tag's max-F1 cut on the validation split alone
(the calibration before bagging), and at one global threshold for every tag (the best single one on
validation), as most taggers do.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from bench.quality import pretrain_vlm, worlds
from bench.quality.methods import scores_of_run
from bench.quality.run_all import Plan, TaskSpec, load_test_pixels, written_metrics
from train import runs
from train.metrics import calibrate_thresholds, calibrated_thresholds, f1_summary
from train.report import load_val_scores, val_targets


def global_threshold(scores: np.ndarray, targets: np.ndarray) -> float:
    """The one threshold for every tag with the best micro F1 on validation: what taggers with a single
    global cut-off do, for comparison with the per-tag thresholds `tagger train` calibrates."""
    y = targets.astype(bool)
    candidates = np.linspace(0.02, 0.98, 49)
    f1 = [2 * (s_yes & y).sum() / (s_yes.sum() + y.sum()) for s_yes in (scores >= t for t in candidates)]
    return float(candidates[int(np.argmax(f1))])


def f1_table(plan: Plan, cache_root: Path, methods: list[str], settings=("long-tailed",), with_worlds=False
             ) -> list[str]:
    """Markdown rows: per task, setting and method, mean ± sd over the plan's seeds (a method with no
    cached run there is left out)."""
    results = cache_root / f"results-{plan.vlm.key()}{'-quick' if plan.quick else ''}"  # run_all's cache
    lines = ["| task | setting | method | F1 macro | F1 micro | precision (macro) | recall (macro) | F1 macro, one "
             "max-F1 cut per tag (no bagging) | F1 macro, one global threshold |", "|---|---|---|---|---|---|---|---|---|"]
    specs = [(spec, settings) for spec in plan.tasks]
    if with_worlds:  # task A in its other frequency orders: long-tailed runs only
        specs += [(TaskSpec(worlds.task_name(order), order, replace(worlds.TASK_A, order=order), False), ("long-tailed",))
                  for order in worlds.ORDERS[1:]]
    for spec, task_settings in specs:
        name, task = spec.name, spec.build(cache_root / f"task-{spec.config.key()}")
        pixels = None  # the task's test photos, decoded once (every run of a task shares its preprocessing)
        for setting in task_settings:
            for method in methods:
                rows = []
                for seed in plan.seeds:
                    run_dir = results / name / setting / method / f"seed-{seed}" / "run"
                    if not (run_dir / runs.METRICS).is_file():
                        continue
                    run = runs.load_run(run_dir)
                    if pixels is None:
                        pixels = load_test_pixels(task, run.preprocess, results / name)
                    rows.append(_f1_row(run, run_dir, pixels, task.test.targets))
                if rows:
                    cells = [f"{np.mean(c):.1f} ± {np.std(c):.1f}" for c in zip(*rows)]
                    lines.append(f"| {name} | {setting} | {method} | " + " | ".join(cells) + " |")
    return lines


def _f1_row(run, run_dir: Path, pixels: np.ndarray, test_targets: np.ndarray) -> tuple:
    scores = scores_of_run(run_dir, pixels)
    val, val_y = load_val_scores(run_dir, run.dataset), val_targets(run.dataset)
    # What the trainer calibrates now (a run cached before bagging or pooling stored another cut).
    train_positives = [t["train_positives"] for t in runs.read_json(run_dir / runs.METRICS)["tags"]]
    thresholds = calibrated_thresholds(val, val_y, run.labels, train_positives, seed=run.config["train"]["seed"])
    written = written_metrics(scores, test_targets, thresholds, run.labels)
    single, _ = calibrate_thresholds(val, val_y, run.labels)
    one = np.full(len(run.labels), global_threshold(val, val_y))
    return (*(written[k] for k in ("f1_macro", "f1_micro", "precision_macro", "recall_macro")),
            f1_summary(scores, test_targets, single, run.labels)["f1_macro"],
            f1_summary(scores, test_targets, one, run.labels)["f1_macro"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="default,no_free,plain_ft")
    parser.add_argument("--settings", default="long-tailed", help="comma-separated: long-tailed,1-shot,5-shot")
    parser.add_argument("--worlds", action="store_true", help="add task A's other frequency orders (long-tailed)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print("\n".join(f1_table(Plan.full(), pretrain_vlm.CACHE_ROOT, args.methods.split(","),
                             args.settings.split(","), args.worlds)))


if __name__ == "__main__":
    main()
