"""Run chosen jobs of the full benchmark on this machine, beside the cached result of the same job.

    python -m bench.quality.one_job objects:long-tailed:default:0 hier:1-shot:plain_ft:2 [--out DIR]

Each job is TASK:SETTING:METHOD:SEED (tasks: objects, hier). It trains from the cached VLM and task
(`python -m bench.quality.run_all` makes them) into a folder of its own, so the full run's results stay
as they are, and prints its test figures with the cached ones of the full run, when there are any: how a
GPU's bf16 training compares with the CPU's float32 on the same data and seed, say. `--cache` points at
another copy of the cache's VLM, task and test-pixel files (the same layout), e.g. one carried to a GPU
machine.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench.quality import pretrain_vlm
from bench.quality.methods import METHODS
from bench.quality.run_all import Job, Plan, cached_result, load_test_pixels, run_job, settings_for
from train.backbone import load_clip


def jobs(names: list[str], cache: Path, out: Path, plan: Plan | None = None) -> list[tuple[Job, Job]]:
    """(job to run under `out`, the same job of the full run under `cache`) per name."""
    plan = plan or Plan.full()
    specs = {spec.name: spec for spec in plan.tasks}
    checkpoint = cache / f"vlm-{plan.vlm.key()}" / "vlm.pt"
    results = cache / f"results-{plan.vlm.key()}"
    preprocess = load_clip(plan.vlm.backbone, str(checkpoint)).preprocess  # the test pixels are cached per size
    pairs = []
    for name in names:
        try:
            task_name, setting_name, method, seed = name.split(":")
            spec, method = specs[task_name], METHODS[method]
        except (ValueError, KeyError):
            raise SystemExit(f"{name}: expected TASK:SETTING:METHOD:SEED, TASK one of {', '.join(specs)}, "
                             f"METHOD one of {', '.join(METHODS)}") from None
        task = spec.build(cache / f"task-{spec.config.key()}")
        settings = {s.name: s for s in settings_for(task, plan)}
        if setting_name not in settings:
            raise SystemExit(f"{name}: setting one of {', '.join(settings)}")
        pixels = load_test_pixels(task, preprocess, results / spec.name)

        def job(folder: Path) -> Job:
            return Job(folder / spec.name, spec.config.key(), task, pixels, settings[setting_name], method,
                       int(seed), plan.vlm.backbone, str(checkpoint))
        pairs.append((job(out), job(results)))
    return pairs


def line(result: dict) -> str:
    t = result["test"]
    return (f"test mAP {t['mAP']:.2f} (head {t['mAP_head']:.2f} / medium {t['mAP_medium']:.2f} / tail "
            f"{t['mAP_tail']:.2f}), F1 {t.get('f1_macro', float('nan')):.2f}, val mAP {result['val'].get('mAP')}, "
            f"picked {(result.get('picked') or {}).get('best')}, {result['seconds']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality.one_job", description=__doc__.split("\n\n")[0])
    parser.add_argument("jobs", nargs="+", metavar="TASK:SETTING:METHOD:SEED")
    parser.add_argument("--cache", type=Path, default=pretrain_vlm.CACHE_ROOT)
    parser.add_argument("--out", type=Path, default=Path("runs/one-job"), help="where the jobs run and write")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, " + (f"CUDA: {torch.cuda.get_device_name()}" if torch.cuda.is_available()
                                            else "CPU"), flush=True)
    for name, (mine, full) in zip(args.jobs, jobs(args.jobs, args.cache, args.out)):
        started = time.perf_counter()
        result = run_job(mine)
        print(f"{name}: {line(result)} (wall {time.perf_counter() - started:.0f} s)", flush=True)
        before = cached_result(full)
        print(f"{' ' * len(name)}  full run: {line(before)}" if before else f"{' ' * len(name)}  full run: none cached",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
