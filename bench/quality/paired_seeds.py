"""Does a part of the method pay where photos are few? The default against ablations over many seeds,
compared seed by seed:

    python -m bench.quality.paired_seeds                       # 10 seeds, both tasks, 1- and 5-shot:
                                                               # about 30 min on 2 idle cores
                                                               # (measured with one job at a time)
    python -m bench.quality.paired_seeds --seeds 5 --methods with_sc --tasks objects

The full benchmark runs 3 seeds and judges a difference by the seeds' spread. A part whose effect is a
few tenths of a point cannot show that way, however consistent: each seed draws its own few-shot pool,
split and start, and those move every method's score together by more than the part does. Here both
runs of a seed share all of that, so the paired difference (ablation − default) isolates the part; it
is reported as its mean ± standard error with how many seeds went lower and higher. An ablation runs
without the refit and is paired with the default's validated model (`no_refit`) from the same job.

Results are cached like run_all's, in their own folder (the few-shot pools of seeds past the benchmark's
three are new data); a changed trainer default needs --fresh.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from bench.quality import pretrain_vlm
from bench.quality.methods import METHODS
from bench.quality.report import paired
from bench.quality.run_all import TASKS, VALIDATED_ROW, Job, Plan, default_workers, load_test_pixels, results, settings_for
from train.backbone import load_clip

ABLATED = ("no_stage2", "with_sc")  # the parts that act on the prompts (run_all's FEW_SHOT_ABLATIONS)


def run(plan: Plan, cache_root: Path, n_seeds: int, methods=ABLATED, log=print, fresh: bool = False,
        workers: int = 1, threads: int = 1) -> list[dict]:
    """Every (task, few-shot setting, seed, method) of the plan's tasks with seeds 0..n_seeds-1, the
    default included, `workers` side by side; returns one row per (task, setting, ablated method) with
    the paired statistics."""
    checkpoint, _ = pretrain_vlm.ensure_vlm(plan.vlm, log=log, cache_root=cache_root)
    clip = load_clip(plan.vlm.backbone, str(checkpoint))
    seeds = list(range(n_seeds))
    jobs, places = [], []
    for spec in plan.tasks:
        config = replace(spec.config, seeds=tuple(seeds))  # a few-shot pool per seed
        task = replace(spec, config=config).build(cache_root / f"task-{config.key()}")
        task_dir = cache_root / f"paired-{plan.vlm.key()}" / spec.name
        task_dir.mkdir(parents=True, exist_ok=True)
        test_pixels = load_test_pixels(task, clip.preprocess, task_dir)
        for setting in settings_for(task, plan):
            if setting.name != "long-tailed":
                places.append((spec, setting, task_dir))
                jobs += [Job(task_dir, config.key(), task, test_pixels, setting, METHODS[name], seed, plan.vlm.backbone,
                             str(checkpoint)) for seed in seeds for name in ("default", *methods)]
    results(jobs, workers, threads, fresh, log=lambda r: log(
        f"{r['task']} {r['setting']} {r['method']:10s} seed {r['seed']}: test mAP {r['test']['mAP']:.1f}"))
    rows = []
    for spec, setting, task_dir in places:
        def mAP(name: str, seed: int) -> float:
            return json.loads((task_dir / setting.name / name / f"seed-{seed}" / "result.json").read_text())["test"]["mAP"]
        scores = {name: {seed: mAP(name, seed) for seed in seeds} for name in ("default", VALIDATED_ROW["default"], *methods)}
        for name in methods:
            rows.append({"task": spec.title, "setting": setting.name, "method": name}
                        | paired(scores[METHODS[name].reference], scores[name]))
    return rows


def table(rows: list[dict]) -> list[str]:
    lines = ["| task | setting | method | seeds | held to (its reference) | method | difference (± se) | lower / higher |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['setting']} | {METHODS[r['method']].label} | {r['seeds']} | "
                     f"{r['default']:.2f} | {r['ablated']:.2f} | {r['diff']:+.2f} ± {r['se']:.2f} | "
                     f"{r['lower']} / {r['higher']} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality.paired_seeds", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 [default: 10]")
    parser.add_argument("--methods", default=",".join(ABLATED), help=f"comma-separated [default: {','.join(ABLATED)}]")
    parser.add_argument("--tasks", default=",".join(t.name for t in TASKS), help="comma-separated: objects,hier")
    parser.add_argument("--settings", default="1-shot,5-shot")
    parser.add_argument("--workers", type=int, default=None, help="jobs side by side [default: one per core, one on a GPU]")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per job [default: 1]")
    parser.add_argument("--fresh", action="store_true", help="run every job again")
    args = parser.parse_args(argv)
    unknown = [m for m in args.methods.split(",") if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    workers = args.workers or default_workers(args.threads)
    torch.set_num_threads(workers * args.threads)
    plan = Plan.full()
    plan.tasks = tuple(t for t in TASKS if t.name in args.tasks.split(","))
    plan.settings = args.settings.split(",")
    rows = run(plan, pretrain_vlm.CACHE_ROOT, args.seeds, args.methods.split(","),
               log=lambda line: print(line, flush=True), fresh=args.fresh, workers=workers, threads=args.threads)
    print("\n".join(table(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
