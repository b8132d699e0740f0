"""Regenerate the quality benchmark: stand-in VLM, tasks, every method × seed, docs/quality.md + plot.

    python -m bench.quality.run_all            # the full benchmark (CPU: under an hour on 2 cores)
    python -m bench.quality.run_all --quick    # smaller everything, for a look in minutes

Results are cached per (VLM, task, schedule, method, seed) under .cache/quality/, so an interrupted
run continues where it stopped; --fresh starts over. The documented wall time is that of a run from
an empty cache.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import resource
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from bench.quality import pretrain_vlm, tasks
from bench.quality.methods import METHODS, Schedule, Setting, run_method, run_tagger_train, tagger_args
from bench.quality.report import DOCS, FEW_SHOT, MAIN, write_report
from tagger.benchmark import cpu_name
from tagger.images import load_image
from train import runs
from train.backbone import load_clip
from train.metrics import per_tag_ap

# Training lengths are fixed in advance; the stage-1 learning rate (`lr` here is a placeholder) is
# picked on the validation split by `select_lr` at the start of every regeneration.
LONG_TAILED = Schedule(epochs=30, stage2_epochs=20, lr=3e-4, stage2_lr=2e-3, batch_size=32, val_fraction=0.2)
FEW_SHOT_SCHEDULES = {1: Schedule(epochs=50, stage2_epochs=50, lr=3e-4, stage2_lr=2e-3, batch_size=8, val_fraction=0.5),
                      5: Schedule(epochs=30, stage2_epochs=30, lr=3e-4, stage2_lr=2e-3, batch_size=16, val_fraction=0.5)}
QUICK_LONG_TAILED = Schedule(epochs=10, stage2_epochs=10, lr=3e-4, batch_size=32)
QUICK_FEW_SHOT = {1: Schedule(epochs=20, stage2_epochs=20, lr=3e-4, batch_size=8, val_fraction=0.5),
                  5: Schedule(epochs=10, stage2_epochs=10, lr=3e-4, batch_size=16, val_fraction=0.5)}
TUNE_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)  # stage-1 learning rates tried (the paper's 1e-5 moves a tiny tower too little)
TUNE_METHOD = "full"  # the method under test picks the rate; every tower-training method then uses it


def test_set_metrics(scores: np.ndarray, targets: np.ndarray, groups: list[str]) -> dict:
    """Test mAP (percent) overall and per fixed frequency group, and the per-tag APs."""
    aps = 100 * per_tag_ap(scores, targets)
    out = {"mAP": round(float(np.nanmean(aps)), 3)}
    for g in ("head", "medium", "tail"):
        chosen = [a for a, gg in zip(aps, groups) if gg == g and not np.isnan(a)]
        out[f"mAP_{g}"] = round(float(np.mean(chosen)), 3) if chosen else None
    out["ap"] = [None if np.isnan(a) else round(float(a), 3) for a in aps]
    return out


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


@dataclass
class Plan:
    """Everything one regeneration uses; `full()` and `quick()` are the two documented ones."""

    vlm: pretrain_vlm.PretrainConfig
    task: tasks.TaskConfig
    long_tailed: Schedule
    few_shot: dict[int, Schedule]
    seeds: list[int]
    methods: list[str]  # method ids to run (zero-shot results also stand for the few-shot settings)
    settings: list[str]  # "long-tailed", "1-shot", "5-shot"
    quick: bool = False
    tune_lrs: tuple[float, ...] = TUNE_LRS  # one value: no selection

    @classmethod
    def full(cls) -> "Plan":
        return cls(pretrain_vlm.PretrainConfig(), tasks.TaskConfig(), LONG_TAILED, FEW_SHOT_SCHEDULES, [0, 1, 2],
                   list(METHODS), ["long-tailed", "1-shot", "5-shot"])

    @classmethod
    def quick_plan(cls) -> "Plan":
        return cls(pretrain_vlm.QUICK, tasks.QUICK, QUICK_LONG_TAILED, QUICK_FEW_SHOT, [0, 1], list(METHODS),
                   ["long-tailed", "1-shot", "5-shot"], quick=True)


def settings_for(task: tasks.Task, plan: Plan) -> list[Setting]:
    out = [Setting("long-tailed", task.lt.folder, task.lt.csv, task.labels_file, plan.long_tailed)]
    for k in task.config.shots:
        # The pool differs per seed: data/annotations are filled in per seed by `setting_for_seed`.
        out.append(Setting(f"{k}-shot", task.root, task.root, task.labels_file, plan.few_shot[k]))
    return [s for s in out if s.name in plan.settings]


def setting_for_seed(setting: Setting, task: tasks.Task, seed: int) -> Setting:
    if setting.name == "long-tailed":
        return setting
    k = int(setting.name.split("-")[0])
    split = task.shots[(k, seed)]
    return Setting(setting.name, split.folder, split.csv, setting.labels, setting.schedule)


def load_test_pixels(task: tasks.Task, preprocess, cache: Path) -> np.ndarray:
    path = cache / f"test-pixels-{preprocess.size}.npy"
    if path.is_file():
        return np.load(path)
    pixels = np.stack([load_image(p, preprocess) for p in task.test.paths])
    np.save(path, pixels)
    return pixels


def select_lr(plan: Plan, setting: Setting, backbone: str, checkpoint: Path, results_dir: Path,
              log=print) -> tuple[float, list[dict]]:
    """The stage-1 learning rate with the best validation mAP for TUNE_METHOD, first seed (test never scored).

    `setting` is the concrete one of that seed (few-shot pools differ per seed)."""
    method, seed = METHODS[TUNE_METHOD], plan.seeds[0]
    rows = []
    for lr in plan.tune_lrs:
        schedule = replace(setting.schedule, lr=lr)
        folder = results_dir / "tune" / setting.name / f"lr-{lr:g}"
        key = _key(asdict(schedule), method.args, seed)
        saved = folder / "val.json"
        if saved.is_file() and json.loads(saved.read_text()).get("key") == key:
            rows.append(json.loads(saved.read_text()))
            continue
        if folder.exists():
            shutil.rmtree(folder)
        started = time.perf_counter()
        run_dir = folder / "run"
        run_tagger_train(tagger_args(method, replace(setting, schedule=schedule), backbone, str(checkpoint), seed,
                                     run_dir), run_dir / "train.log")
        val = runs.read_json(run_dir / runs.METRICS)["val"]
        row = {"key": key, "lr": lr, "val": val, "seconds": round(time.perf_counter() - started, 1),
               "run": str(run_dir)}
        saved.write_text(json.dumps(row, indent=2))
        rows.append(row)
        log(f"[select] {setting.name} {TUNE_METHOD} seed {seed}, stage-1 lr {lr:g}: validation mAP {_f(val['mAP'])}")
    best = max(rows, key=lambda r: -1.0 if r["val"]["mAP"] is None else r["val"]["mAP"])
    return best["lr"], rows


def run(plan: Plan, cache_root: Path, report: Path, fresh: bool = False, log=print) -> dict:
    """Pretrain (or reuse) the VLM, write (or reuse) the tasks, run every missing job, write the report."""
    started_wall, started_cpu, load_start = time.perf_counter(), _cpu_seconds(), _load()
    checkpoint, vlm_summary = pretrain_vlm.ensure_vlm(plan.vlm, log=log, cache_root=cache_root)
    task = tasks.build_task(plan.task, cache_root / f"task-{plan.task.key()}")
    backbone = plan.vlm.backbone
    clip = load_clip(backbone, str(checkpoint))
    results_dir = cache_root / f"results-{plan.vlm.key()}-{plan.task.key()}{'-quick' if plan.quick else ''}"
    results_dir.mkdir(parents=True, exist_ok=True)
    test_pixels = load_test_pixels(task, clip.preprocess, results_dir)

    settings, selections, reusable = [], {}, {}
    for setting in settings_for(task, plan):
        lr, rows = select_lr(plan, setting_for_seed(setting, task, plan.seeds[0]), backbone, checkpoint, results_dir, log)
        if len(plan.tune_lrs) > 1:
            log(f"{setting.name}: stage-1 learning rate {lr:g} (best validation mAP of "
                f"{', '.join(f'{x:g}' for x in plan.tune_lrs)})")
        settings.append(replace(setting, schedule=replace(setting.schedule, lr=lr)))
        selections[setting.name] = {"chosen_lr": lr, "rows": [{k: r[k] for k in ("lr", "val", "seconds")} for r in rows]}
        reusable[setting.name] = next(Path(r["run"]) for r in rows if r["lr"] == lr)
    jobs = []
    for setting in settings:
        methods = MAIN if setting.name == "long-tailed" else [m for m in FEW_SHOT if not m.startswith("zero_shot")]
        for name in methods:
            if name not in plan.methods:
                continue
            method = METHODS[name]
            for seed in (plan.seeds if method.seeded else plan.seeds[:1]):
                jobs.append((setting, method, seed))
    ran = 0
    log(f"{len(jobs)} runs: settings {', '.join(s.name for s in settings)}; seeds {plan.seeds}; results in {results_dir}")
    for n, (setting, method, seed) in enumerate(jobs, 1):
        folder = results_dir / setting.name / method.name / f"seed-{seed}"
        result_path = folder / "result.json"
        schedule_key = _key(asdict(setting.schedule), method.args)
        if result_path.is_file() and not fresh and json.loads(result_path.read_text()).get("schedule_key") == schedule_key:
            continue
        if folder.exists():
            shutil.rmtree(folder)
        concrete = setting_for_seed(setting, task, seed)
        if method.name == TUNE_METHOD and seed == plan.seeds[0]:
            shutil.copytree(reusable[setting.name], folder / "run")  # the selection run is this very job
        ran += 1
        outcome = run_method(method, concrete, backbone, str(checkpoint), seed, folder / "run", test_pixels)
        result = {"setting": setting.name, "method": method.name, "seed": seed, "schedule_key": schedule_key,
                  "schedule": asdict(setting.schedule), "val": outcome.val, "seconds": round(outcome.seconds, 1),
                  "test": test_set_metrics(outcome.test_scores, task.test.targets, task.groups)}
        folder.mkdir(parents=True, exist_ok=True)
        result_path.write_text(json.dumps(result, indent=2))
        t = result["test"]
        log(f"[{n}/{len(jobs)}] {setting.name:11s} {method.name:13s} seed {seed}: test mAP {t['mAP']:.1f} "
            f"(head {_f(t['mAP_head'])} / medium {_f(t['mAP_medium'])} / tail {_f(t['mAP_tail'])}), "
            f"val {_f(outcome.val.get('mAP'))}, {outcome.seconds:.0f}s")
    # Zero-shot needs no training data: the long-tailed scores stand for every setting.
    for setting in settings[1:]:
        for src in results_dir.glob("long-tailed/zero_shot*/seed-*/result.json"):
            dst = results_dir / setting.name / src.parent.parent.name / src.parent.name / "result.json"
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(json.dumps(json.loads(src.read_text()) | {"setting": setting.name}, indent=2))

    wall, cpu = time.perf_counter() - started_wall, _cpu_seconds() - started_cpu
    summary = {
        "quick": plan.quick, "seeds": plan.seeds, "settings": [s.name for s in settings],
        "schedules": {s.name: _schedule_text(s.schedule) for s in settings},
        "selection": {"method": TUNE_METHOD, "seed": plan.seeds[0], "settings": selections},
        "task": json.loads((task.root / "task.json").read_text()),
        "vlm": vlm_summary | {"model": _model_text(backbone)},
        "timing": {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "load_start": load_start, "load_end": _load(),
                   "threads": torch.get_num_threads(), "jobs_run": ran},
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()}, torch {torch.__version__}",
        "finished": _dt.datetime.now().astimezone().isoformat(timespec="minutes"),
    }
    (results_dir / "run.json").write_text(json.dumps(summary, indent=2))
    path = write_report(results_dir, report)
    log(f"wrote {path} ({wall / 60:.1f} min wall, {cpu / 60:.1f} min CPU)")
    return summary | {"results_dir": str(results_dir)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality.run_all", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller VLM corpus, task and schedules, two seeds")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds [default: 0,1,2; quick: 0,1]")
    parser.add_argument("--methods", default=None, help=f"comma-separated, of: {', '.join(METHODS)} [default: all]")
    parser.add_argument("--settings", default=None, help="comma-separated: long-tailed,1-shot,5-shot [default: all]")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--fresh", action="store_true", help="run every job again (the VLM and data stay cached)")
    parser.add_argument("--out", type=Path, default=DOCS / "quality.md", help="report file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    plan = Plan.quick_plan() if args.quick else Plan.full()
    if args.seeds:
        plan.seeds = [int(s) for s in args.seeds.split(",")]
    if args.methods:
        unknown = [m for m in args.methods.split(",") if m not in METHODS]
        if unknown:
            parser.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
        plan.methods = args.methods.split(",")
    if args.settings:
        plan.settings = args.settings.split(",")
    run(plan, pretrain_vlm.CACHE_ROOT, args.out, fresh=args.fresh, log=lambda line: print(line, flush=True))
    return 0


def _schedule_text(s: Schedule) -> str:
    return (f"stage 1 {s.epochs} epochs at lr {s.lr:g}, stage 2 {s.stage2_epochs} epochs at lr {s.stage2_lr:g}, "
            f"batch {s.batch_size}")


def _model_text(backbone: str) -> str:
    cfg = json.loads(Path(backbone).read_text())
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    return (f"{v['image_size']} px input, {v['patch_size']} px patches, {v['layers']} layers of width {v['width']}; "
            f"text {t['layers']} layers of width {t['width']}; embedding {cfg['embed_dim']}")


def _f(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _load() -> str:
    try:
        return " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "?"


if __name__ == "__main__":
    raise SystemExit(main())
