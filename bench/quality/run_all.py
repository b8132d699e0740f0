"""Regenerate the quality benchmark: stand-in VLM, tasks, every method × seed, docs/quality.md + plot.

    python -m bench.quality.run_all            # the full benchmark
    python -m bench.quality.run_all --quick    # smaller, baselines + default only: a few minutes

Results are cached per (VLM, task, schedule, method, seed) under .cache/quality/, so an interrupted
run continues where it stopped; --fresh starts over. The documented wall time is that of a run from
an empty cache. Jobs run side by side in worker processes of one torch thread each, one per core:
this model is too small for two threads to share one job well (docs/quality.md says by how much).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime as _dt
import hashlib
import json
import multiprocessing
import os
import platform
import resource
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from bench.quality import hier_task, pretrain_vlm, tasks
from bench.quality.methods import (
    ABLATIONS,
    ALTERNATIVES,
    BASELINES,
    FEW_SHOT_ABLATIONS,
    METHODS,
    SIDE_ABLATIONS,
    Method,
    Schedule,
    Setting,
    run_method,
)
from bench.quality.report import DOCS, write_report
from tagger.benchmark import cpu_name
from tagger.images import load_image
from train import runs
from train.backbone import load_clip
from train.metrics import f1_summary, per_tag_ap, precision_recall

# The full benchmark passes nothing but the validation share: epochs, batch size and learning rate are
# `tagger train`'s own data-dependent defaults, so the numbers are what a user gets. Few-shot pools hold
# 2K photos per tag: half of them validate. Quick runs shorten training to look in minutes.
LONG_TAILED = Schedule(val_fraction=0.2)
FEW_SHOT_SCHEDULES = {1: Schedule(val_fraction=0.5), 5: Schedule(val_fraction=0.5)}
QUICK_LONG_TAILED = Schedule(val_fraction=0.2, epochs=8, stage2_epochs=5)
QUICK_FEW_SHOT = {1: Schedule(val_fraction=0.5, epochs=20, stage2_epochs=10),
                  5: Schedule(val_fraction=0.5, epochs=10, stage2_epochs=5)}
# Rows read off another method's jobs: the default's validated model, before its refit (validated.pt).
VALIDATED_ROW = {"default": "no_refit"}
FEW_SHOT_METHODS = ("zero_shot", "linear_probe", "coop", "plain_ft", "default", *ALTERNATIVES)


@dataclass(frozen=True)
class TaskSpec:
    """One world of tags: the long-tailed 20 object kinds, or the 45-tag Parent|Child vocabulary."""

    name: str  # id in result folders
    title: str  # heading in the report
    config: tasks.TaskConfig | hier_task.HierTaskConfig
    ablations: bool  # run ABLATIONS on its long-tailed setting and FEW_SHOT_ABLATIONS on its few-shot ones
    # (the first task; time is bounded)

    def build(self, root: Path) -> tasks.Task:
        if isinstance(self.config, hier_task.HierTaskConfig):
            return hier_task.build_hier_task(self.config, root)
        return tasks.build_task(self.config, root)


TASKS = (TaskSpec("objects", "Task A: 20 object kinds", tasks.TaskConfig(), True),
         TaskSpec("hier", "Task B: 45 Parent|Child tags", hier_task.HierTaskConfig(), False))
QUICK_TASKS = (TaskSpec("objects", "Task A: 20 object kinds", tasks.QUICK, True),
               TaskSpec("hier", "Task B: 45 Parent|Child tags", hier_task.HIER_QUICK, False))


def test_set_metrics(scores: np.ndarray, targets: np.ndarray, groups: list[str],
                     thresholds: np.ndarray | None = None, labels: list[str] | None = None) -> dict:
    """Test mAP (percent) overall and per fixed frequency group, and the per-tag APs; with calibrated
    thresholds also what a user gets written: F1 (macro and micro) and macro precision and recall, the
    chosen children bringing their vocabulary parents as `tagger tag` decides."""
    aps = 100 * per_tag_ap(scores, targets)
    out = {"mAP": round(float(np.nanmean(aps)), 3)}
    for g in ("head", "medium", "tail"):
        chosen = [a for a, gg in zip(aps, groups) if gg == g and not np.isnan(a)]
        out[f"mAP_{g}"] = round(float(np.mean(chosen)), 3) if chosen else None
    out["ap"] = [None if np.isnan(a) else round(float(a), 3) for a in aps]
    if thresholds is not None:
        out |= written_metrics(scores, targets, thresholds, labels)
    return out


def written_metrics(scores: np.ndarray, targets: np.ndarray, thresholds: np.ndarray, labels: list[str] | None
                    ) -> dict:
    """F1 (macro, micro) and macro precision and recall (percent) of the tags written when each tag is cut
    at its threshold and chosen children bring their vocabulary parents, as `tagger tag` decides."""
    f1 = f1_summary(scores, targets, thresholds, labels)
    precision, recall = precision_recall(scores, targets, thresholds, labels)
    return {"f1_macro": f1["f1_macro"], "f1_micro": f1["f1_micro"],
            "precision_macro": round(float(np.mean([p for p in precision if p is not None])), 3),
            "recall_macro": round(float(np.mean([r for r in recall if r is not None])), 3)}


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


@dataclass
class Plan:
    """Everything one regeneration uses; `full()` and `quick_plan()` are the two documented ones."""

    vlm: pretrain_vlm.PretrainConfig
    tasks: tuple[TaskSpec, ...]
    long_tailed: Schedule
    few_shot: dict[int, Schedule]
    seeds: list[int]
    methods: list[str]  # method ids to run (zero-shot results also stand for the few-shot settings)
    settings: list[str]  # "long-tailed", "1-shot", "5-shot"
    quick: bool = False

    @classmethod
    def full(cls) -> "Plan":
        return cls(pretrain_vlm.PretrainConfig(), TASKS, LONG_TAILED, FEW_SHOT_SCHEDULES, [0, 1, 2],
                   [m for m in METHODS if m not in SIDE_ABLATIONS], ["long-tailed", "1-shot", "5-shot"])

    @classmethod
    def quick_plan(cls) -> "Plan":
        # The baselines and the default only: the ablations are the full run's.
        return cls(pretrain_vlm.QUICK, QUICK_TASKS, QUICK_LONG_TAILED, QUICK_FEW_SHOT, [0, 1], [*BASELINES, "default"],
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


def methods_for(spec: TaskSpec, setting: str, plan: Plan) -> list[str]:
    if setting == "long-tailed":
        wanted = [*BASELINES, "default", *ALTERNATIVES, *((*ABLATIONS, *SIDE_ABLATIONS) if spec.ablations else ())]
    else:
        wanted = [m for m in FEW_SHOT_METHODS if not m.startswith("zero_shot")]  # zero-shot: copied below
        wanted += list(FEW_SHOT_ABLATIONS) if spec.ablations else []
    return [m for m in wanted if m in plan.methods]


def run(plan: Plan, cache_root: Path, report: Path, fresh: bool = False, log=print, adds: bool = False,
        workers: int = 1, threads: int = 1) -> dict:
    """Pretrain (or reuse) the VLM, write (or reuse) the tasks, run every missing job in `workers`
    processes of `threads` torch threads, write the report. `adds`: the plan is a part of the whole
    one (--methods/--settings), added to the last whole run."""
    started_wall, started_cpu, load_start = time.perf_counter(), _cpu_seconds(), _load()
    checkpoint, vlm_summary = pretrain_vlm.ensure_vlm(plan.vlm, log=log, cache_root=cache_root)
    vlm_pretrained_now = time.perf_counter() - started_wall > 0.5 * vlm_summary["pretrain_s"]
    backbone = plan.vlm.backbone
    clip = load_clip(backbone, str(checkpoint))
    results_dir = cache_root / f"results-{plan.vlm.key()}{'-quick' if plan.quick else ''}"
    results_dir.mkdir(parents=True, exist_ok=True)
    built, jobs = {}, []
    for spec in plan.tasks:
        task = spec.build(cache_root / f"task-{spec.config.key()}")
        folder = results_dir / spec.name
        folder.mkdir(parents=True, exist_ok=True)
        test_pixels = load_test_pixels(task, clip.preprocess, folder)
        built[spec.name] = (spec, task, test_pixels)
        for setting in settings_for(task, plan):
            for name in methods_for(spec, setting.name, plan):
                method = METHODS[name]
                runs_on = method.seeds(plan.seeds, setting.name)
                jobs += [Job(folder, spec.config.key(), task, test_pixels, setting, method, seed, backbone, str(checkpoint))
                         for seed in runs_on]
                _drop_unplanned_seeds(results_dir / spec.name / setting.name / name, runs_on, plan.seeds)
    log(f"{len(jobs)} runs on {', '.join(built)}; seeds {plan.seeds}; results in {results_dir}"
        + (f"; {workers} side by side" if workers > 1 else ""))
    ran = 0

    def done(result: dict) -> None:
        nonlocal ran
        ran += 1
        t = result["test"]
        log(f"[{ran}] {result['task']} {result['setting']:11s} {result['method']:16s} seed {result['seed']}: "
            f"test mAP {t['mAP']:.1f} (head {_f(t['mAP_head'])} / medium {_f(t['mAP_medium'])} / tail "
            f"{_f(t['mAP_tail'])}), val {_f(result['val'].get('mAP'))}, {result['seconds']:.0f}s")

    results(jobs, workers, threads, fresh, done)
    # Zero-shot needs no training data: the long-tailed scores stand for every setting of the task.
    for spec, task, _ in built.values():
        for setting in settings_for(task, plan)[1:]:
            for src in (results_dir / spec.name).glob("long-tailed/zero_shot*/seed-*/result.json"):
                dst = results_dir / spec.name / setting.name / src.parent.parent.name / src.parent.name / "result.json"
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_text(json.dumps(json.loads(src.read_text()) | {"setting": setting.name}, indent=2))

    wall, cpu = time.perf_counter() - started_wall, _cpu_seconds() - started_cpu
    summary = {
        "quick": plan.quick, "seeds": plan.seeds, "settings": plan.settings,
        "schedules": {"long-tailed": asdict(plan.long_tailed)} | {f"{k}-shot": asdict(s) for k, s in plan.few_shot.items()},
        "tasks": {spec.name: {"title": spec.title, "ablations": spec.ablations,
                              "design": json.loads((task.root / "task.json").read_text())}
                  for spec, task, _ in built.values()},
        "vlm": vlm_summary | {"model": _model_text(backbone)},
        "timing": {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "load_start": load_start, "load_end": _load(),
                   "threads": threads, "workers": workers, "jobs_run": ran,
                   "vlm_pretrained_in_this_run": vlm_pretrained_now},
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()}, torch {torch.__version__}",
        "finished": _dt.datetime.now().astimezone().isoformat(timespec="minutes"),
    }
    if adds:
        summary = _added_to_previous(results_dir / "run.json", summary, plan)
    (results_dir / "run.json").write_text(json.dumps(summary, indent=2))
    path = write_report(results_dir, report)
    log(f"wrote {path} ({wall / 60:.1f} min wall, {cpu / 60:.1f} min CPU)")
    return summary | {"results_dir": str(results_dir)}


@dataclass(frozen=True, eq=False)
class Job:
    """One method × seed on a task's setting; its result.json goes in `folder`."""

    task_dir: Path
    task_key: str
    task: tasks.Task
    test_pixels: np.ndarray
    setting: Setting
    method: Method
    seed: int
    backbone: str
    checkpoint: str

    @property
    def folder(self) -> Path:
        return self.task_dir / self.setting.name / self.method.name / f"seed-{self.seed}"

    def key(self) -> str:
        return _key(self.task_key, asdict(self.setting.schedule), self.method.args, self.method.kind)


def results(jobs: list[Job], workers: int = 1, threads: int = 1, fresh: bool = False, log=None) -> list[dict]:
    """Every job's result in order: cached ones read back, the others run (`run_jobs`), each passed to
    `log` as it finishes."""
    for result in run_jobs(jobs, workers, threads, fresh):
        if log is not None:
            log(result)
    return [cached_result(job) for job in jobs]


def run_jobs(jobs: list[Job], workers: int = 1, threads: int = 1, fresh: bool = False):
    """Run every job that has no cached result (every job, when fresh) and yield each result as it
    finishes: in this process when workers is 1, else in that many spawned processes of `threads`
    torch threads each."""
    todo = list({job.folder: job for job in jobs if fresh or cached_result(job) is None}.values())
    if workers <= 1:
        yield from map(run_job, todo)
        return
    # spawn, not fork: a forked child would inherit this process's torch thread pool in whatever state it is.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=torch.set_num_threads,
                                                initargs=(threads,)) as pool:
        futures = [pool.submit(run_job, job) for job in todo]
        try:
            for future in concurrent.futures.as_completed(futures):
                yield future.result()
        finally:
            for future in futures:  # a failed job stops the run: the queued ones need not start
                future.cancel()


def cached_result(job: Job) -> dict | None:
    """The result.json the same job left, if it did."""
    path = job.folder / "result.json"
    if not path.is_file():
        return None
    cached = json.loads(path.read_text())
    return cached if cached.get("key") == job.key() else None


def run_job(job: Job) -> dict:
    """Run one job now: its result, also written to its result.json (and, for the default, its
    validated model's row)."""
    folder, task = job.folder, job.task
    if folder.exists():
        shutil.rmtree(folder)
    outcome = run_method(job.method, setting_for_seed(job.setting, task, job.seed), job.backbone, job.checkpoint,
                         job.seed, folder / "run", job.test_pixels)
    result = {"task": job.task_dir.name, "setting": job.setting.name, "method": job.method.name, "seed": job.seed,
              "key": job.key(), "val": outcome.val, "seconds": round(outcome.seconds, 1),
              "picked": _picked(folder / "run"),
              "test": test_set_metrics(outcome.test_scores, task.test.targets, task.groups, outcome.thresholds,
                                       outcome.labels)}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "result.json").write_text(json.dumps(result, indent=2))
    if job.method.name in VALIDATED_ROW and outcome.validated is not None:
        # The same job's validated model (before its refit), at its own thresholds: a row of its own.
        derived = job.task_dir / job.setting.name / VALIDATED_ROW[job.method.name] / f"seed-{job.seed}"
        derived.mkdir(parents=True, exist_ok=True)
        scores, thresholds = outcome.validated
        (derived / "result.json").write_text(json.dumps(result | {
            "method": VALIDATED_ROW[job.method.name],
            "test": test_set_metrics(scores, task.test.targets, task.groups, thresholds, outcome.labels)}, indent=2))
    return result


def _drop_unplanned_seeds(folder: Path, runs_on: list[int], planned: list[int]) -> None:
    """A method now run on fewer of the planned seeds than before must not report its older results
    (made by other code) beside the new one."""
    for seed in set(planned) - set(runs_on):
        shutil.rmtree(folder / f"seed-{seed}", ignore_errors=True)


def _added_to_previous(path: Path, summary: dict, plan: Plan) -> dict:
    """A run restricted with --methods/--settings adds jobs to the last whole run: the report keeps that
    run's settings and timing (what the whole benchmark costs) and names the addition beside it."""
    if not path.is_file():
        return summary
    whole = Plan.quick_plan() if plan.quick else Plan.full()
    previous = json.loads(path.read_text())
    added = {k: summary[k] for k in ("timing", "finished")} | {"methods": plan.methods, "settings": plan.settings}
    settings = [s for s in whole.settings if s in {*previous.get("settings", ()), *plan.settings}]
    return summary | {k: previous[k] for k in ("timing", "finished", "machine") if k in previous} \
        | {"settings": settings, "added": [*previous.get("added", []), added]}


def _picked(run_dir: Path) -> dict | None:
    """What the trainer chose on its own: resolved settings and the selected candidate."""
    if not (run_dir / runs.CONFIG).is_file() or not (run_dir / runs.METRICS).is_file():
        return None
    train_cfg = runs.read_json(run_dir / runs.CONFIG)["train"]
    return {k: train_cfg[k] for k in ("epochs", "stage2_epochs", "batch_size", "lr")} \
        | {"best": runs.read_json(run_dir / runs.METRICS)["best"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality.run_all", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller VLM corpus, task and schedules, two seeds")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds [default: 0,1,2; quick: 0,1]")
    parser.add_argument("--methods", default=None, help=f"comma-separated, of: {', '.join(METHODS)} [default: all]")
    parser.add_argument("--settings", default=None, help="comma-separated: long-tailed,1-shot,5-shot [default: all]")
    parser.add_argument("--workers", type=int, default=None,
                        help="jobs side by side [default: one per core, one on a GPU]")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per job [default: 1]")
    parser.add_argument("--fresh", action="store_true", help="run every job again (the VLM and data stay cached)")
    parser.add_argument("--out", type=Path, default=DOCS / "quality.md", help="report file")
    args = parser.parse_args(argv)
    workers = args.workers or default_workers(args.threads)
    torch.set_num_threads(workers * args.threads)  # the VLM's pretraining, before the jobs: every core
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
    run(plan, pretrain_vlm.CACHE_ROOT, args.out, fresh=args.fresh, log=lambda line: print(line, flush=True),
        adds=bool(args.methods or args.settings), workers=workers, threads=args.threads)
    return 0


def default_workers(threads: int) -> int:
    """One job per `threads` cores on a CPU; one on a GPU, which the jobs would otherwise share."""
    if torch.cuda.is_available():
        return 1
    return max(1, len(os.sched_getaffinity(0)) // max(1, threads))


def _model_text(backbone: str) -> str:
    cfg = json.loads(Path(backbone).read_text())
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    return (f"{v['image_size']} px input, {v['patch_size']} px patches, {v['layers']} layers of width {v['width']}; "
            f"text {t['layers']} layers of width {t['width']}; embedding {cfg['embed_dim']}")


def _f(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def _cpu_seconds() -> float:
    """This process's CPU time and its finished workers'."""
    return sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))


def _load() -> str:
    try:
        return " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "?"


if __name__ == "__main__":
    raise SystemExit(main())
