"""Is the default's margin a property of one world? Task A's long-tailed setting with the frequency order
of its 20 object kinds changed, everything else equal (the same pool structure, test design, schedules):

    python -m bench.quality.worlds     # about 31 min on 2 idle cores (the world order's runs are shared
                                       # with run_all's task A: cached there, they cost nothing here)

Which kinds are rare decides how much a method that keeps the pretrained prior gains over one that
fine-tunes freely: a rare kind the stand-in already knows is kept by L_kd, one it knows badly is held
back. The benchmark's task A is one draw of that; this runs the issue's comparison (the default against
zero-shot, the linear probe, CoOp and plain fine-tuning, 3 seeds) on the world's order, its reverse and
two random orders, and writes docs/quality-worlds.md.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from bench.quality import pretrain_vlm, tasks
from bench.quality.methods import METHODS, Schedule, Setting
from bench.quality.report import DOCS, GROUPS, Cell
from bench.quality.run_all import LONG_TAILED, Job, default_workers, load_test_pixels, results
from tagger.benchmark import cpu_name
from train.backbone import load_clip

ORDERS = ("world", "reversed", "shuffled-1", "shuffled-2")
BASELINES = ("zero_shot", "linear_probe", "coop", "plain_ft")
SEEDS = (0, 1, 2)
TASK_NAME = "objects"  # run_all's task A: the world order's results are the same jobs
TASK_A, VLM = tasks.TaskConfig(), pretrain_vlm.PretrainConfig()


@dataclass
class World:
    """One frequency order's results: its tail kinds, and method -> column -> Cell over the seeds."""

    tail_kinds: list[str]
    cells: dict[str, dict[str, Cell]]


def task_name(order: str) -> str:
    return TASK_NAME if order == "world" else f"{TASK_NAME}-{order}"


def run(orders=ORDERS, seeds=SEEDS, cache_root: Path = pretrain_vlm.CACHE_ROOT, out: Path = DOCS / "quality-worlds.md",
        log=print, task_config: tasks.TaskConfig = TASK_A, vlm: pretrain_vlm.PretrainConfig = VLM,
        schedule: Schedule = LONG_TAILED, workers: int = 1, threads: int = 1) -> dict[str, World]:
    """Every (order, method, seed) job not cached yet, `workers` side by side; returns each order's
    World and writes the report. The defaults are the documented run; tests pass toy sizes."""
    started = time.perf_counter()
    checkpoint, _ = pretrain_vlm.ensure_vlm(vlm, log=log, cache_root=cache_root)
    clip = load_clip(vlm.backbone, str(checkpoint))
    results_dir = cache_root / f"results-{vlm.key()}"
    built, jobs = {}, []
    for order in orders:
        config = replace(task_config, order=order)
        task = tasks.build_task(config, cache_root / f"task-{config.key()}")
        task_dir = results_dir / task_name(order)
        task_dir.mkdir(parents=True, exist_ok=True)
        test_pixels = load_test_pixels(task, clip.preprocess, task_dir)
        setting = Setting("long-tailed", task.lt.folder, task.lt.csv, task.labels_file, schedule)
        built[order] = task
        jobs += [Job(task_dir, config.key(), task, test_pixels, setting, METHODS[name], seed, vlm.backbone,
                     str(checkpoint)) for name in (*BASELINES, "default") for seed in METHODS[name].seeds(list(seeds))]
    ran = 0
    order_of = {task_name(order): order for order in orders}

    def done(result: dict) -> None:
        nonlocal ran
        ran += 1
        log(f"{order_of[result['task']]:10s} {result['method']:13s} seed {result['seed']}: test mAP {result['test']['mAP']:.1f} "
            f"(tail {result['test']['mAP_tail']:.1f}), {result['seconds']:.0f}s")

    by_job = dict(zip(jobs, results(jobs, workers, threads, log=done)))
    table = {}
    for order, task in built.items():
        cells = {}
        for name in (*BASELINES, "default"):
            mine = [r for job, r in by_job.items() if job.method.name == name and job.task_dir.name == task_name(order)]
            cells[name] = {c: Cell([r["test"][c] for r in mine]) for c in ("mAP", *(f"mAP_{g}" for g in GROUPS))}
        table[order] = World([t for t, g in zip(task.tags, task.groups) if g == "tail"], cells)
    minutes = (time.perf_counter() - started) / 60
    out.write_text(report(table, seeds, ran, minutes))
    log(f"wrote {out} ({ran} jobs run, {minutes:.1f} min)")
    return table


def margins(row: dict[str, dict[str, Cell]]) -> tuple[str, float, float]:
    """The strongest baseline (by overall mean) and the default's margin over the best baseline overall
    and on the tail, as the issue states the target."""
    best = max(BASELINES, key=lambda m: row[m]["mAP"].mean)
    overall = row["default"]["mAP"].mean - max(row[m]["mAP"].mean for m in BASELINES)
    tail = row["default"]["mAP_tail"].mean - max(row[m]["mAP_tail"].mean for m in BASELINES)
    return best, overall, tail


def report(table: dict, seeds, ran: int, minutes: float) -> str:
    lines = [
        "# Quality across worlds: task A with its kinds' frequency order changed",
        "",
        ("Generated by `python -m bench.quality.worlds` "
         f"({_dt.datetime.now().astimezone().isoformat(timespec='minutes')}, {cpu_name()}, {os.cpu_count()} cores, "
         f"{platform.system()}, torch {torch.__version__}; {ran} jobs run now, {minutes:.1f} min wall)."),
        "",
        ("Task A of `docs/quality.md` (20 object kinds, 1000 long-tailed photos, a balanced test set), with only "
         "the order changed in which the kinds get the power law's counts: `world` is the "
         "benchmark's task A itself, `reversed` makes its rarest kinds the most frequent, `shuffled-N` draws an "
         f"order from seed N. Test mAP over seeds {', '.join(map(str, seeds))} (zero-shot has no seed), mean ± sd."),
        "",
        "| order (its tail kinds) | zero-shot | linear probe | CoOp | plain FT | **default** | default − best baseline: overall / tail |",
        "|---|---|---|---|---|---|---|",
    ]
    for order, row in table.items():
        _, overall, tail = margins(row.cells)
        cells = " | ".join(f"{row.cells[m]['mAP'].text()} (tail {row.cells[m]['mAP_tail'].mean:.1f})"
                           for m in (*BASELINES, "default"))
        lines.append(f"| {order} ({', '.join(row.tail_kinds)}) | {cells} | {overall:+.1f} / {tail:+.1f} |")
    mean_overall = sum(margins(r.cells)[1] for r in table.values()) / len(table)
    mean_tail = sum(margins(r.cells)[2] for r in table.values()) / len(table)
    lines += ["", f"Mean margin over the {len(table)} orders: **{mean_overall:+.1f} overall, {mean_tail:+.1f} on the tail**.",
              "The issue's target is +3 on both, per task.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality.worlds", description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", default=",".join(ORDERS), help=f"comma-separated [default: {','.join(ORDERS)}]")
    parser.add_argument("--workers", type=int, default=None, help="jobs side by side [default: one per core, one on a GPU]")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per job [default: 1]")
    parser.add_argument("--out", type=Path, default=DOCS / "quality-worlds.md", help="report file")
    args = parser.parse_args(argv)
    workers = args.workers or default_workers(args.threads)
    torch.set_num_threads(workers * args.threads)
    run(orders=args.orders.split(","), out=args.out, log=lambda line: print(line, flush=True), workers=workers,
        threads=args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
