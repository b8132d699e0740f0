"""The quality benchmark end to end at toy size: VLM pretraining, both tasks, methods, results, report."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from bench.quality import hier_task, paired_seeds, pretrain_vlm, run_all, tasks, world, worlds
from bench.quality.f1_at_thresholds import f1_table
from bench.quality.methods import METHODS as METHODS_BY_NAME
from bench.quality.methods import Schedule, scores_of_parts, scores_of_run
from bench.quality.report import ablation_lines, paired
from train.metrics import f1_summary
from train.runs import VALIDATED, load_run, validated_checkpoint

METHODS = ["zero_shot", "linear_probe", "default", "no_kd", "with_sc"]


def toy_plan(settings=("long-tailed", "1-shot")) -> run_all.Plan:
    objects = tasks.TaskConfig(n_pool=40, n_max=16, exponent=1.0, shift=0.0, n_test=24, test_positives=3,
                               shots=(1,), seeds=(0,))
    hier = hier_task.HierTaskConfig(n_pool=60, n_max=20, n_min=2, n_test=36, test_positives=2, shots=(1,), seeds=(0,))
    return run_all.Plan(
        vlm=pretrain_vlm.PretrainConfig(n_scenes=128, epochs=1, batch_size=64, warmup_steps=1, n_heldout=40),
        tasks=(run_all.TaskSpec("objects", "Task A", objects, True), run_all.TaskSpec("hier", "Task B", hier, False)),
        long_tailed=Schedule(epochs=1, stage2_epochs=1, batch_size=16),
        few_shot={1: Schedule(val_fraction=0.5, epochs=1, stage2_epochs=1, batch_size=4)},
        seeds=[0], methods=METHODS, settings=list(settings))


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    lines = []
    # Two jobs side by side, as the full benchmark runs them on 2 cores: real spawned workers.
    summary = run_all.run(toy_plan(), root / "cache", root / "docs" / "quality.md", log=lines.append,
                          workers=2, threads=1)
    torch.set_num_threads(threads)
    return root, summary, lines


def test_every_job_leaves_test_metrics(toy_run):
    root, summary, lines = toy_run
    results = [json.loads(p.read_text()) for p in (root / "cache").glob("results-*/*/*/*/seed-*/result.json")]
    found = {(r["task"], r["setting"], r["method"]) for r in results}
    # Ablations run on the first task only, and only the few-shot ones (L_sc here) in its few-shot
    # settings; zero-shot stands for every setting; every default job also leaves its validated model's row.
    assert found == ({("objects", "long-tailed", m) for m in [*METHODS, "no_refit"]}
                     | {("hier", "long-tailed", m) for m in [*METHODS, "no_refit"] if m not in ("no_kd", "with_sc")}
                     | {(t, "1-shot", m) for t in ("objects", "hier")
                        for m in ("zero_shot", "linear_probe", "default", "no_refit")}
                     | {("objects", "1-shot", "with_sc")})
    for r in results:
        assert 0 <= r["test"]["mAP"] <= 100 and len(r["test"]["ap"]) == (20 if r["task"] == "objects" else 45)
    default = next(r for r in results if r["method"] == "default" and r["setting"] == "long-tailed")
    assert default["picked"]["epochs"] == 1 and default["picked"]["lr"] > 0  # the trainer's own rate
    assert summary["vlm"]["zero_shot"]["photo style"]["chance_mAP"] > 0
    assert any(line.startswith("[") and "no_kd" in line for line in lines)


def test_one_job_runs_a_job_of_the_full_run_again_elsewhere_to_the_same_result(toy_run, tmp_path):
    # bench.quality.one_job: how a GPU's run compares with the full run's needs the same job, not a
    # look-alike, and must leave the full run's results alone.
    from bench.quality import one_job
    root, _, _ = toy_run
    [(mine, full)] = one_job.jobs(["objects:long-tailed:default:0"], root / "cache", tmp_path, plan=toy_plan())
    assert mine.folder.is_relative_to(tmp_path) and mine.key() == full.key()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the full run's workers: the same float sums
    try:
        again = run_all.run_job(mine)
    finally:
        torch.set_num_threads(threads)
    assert again["test"] == run_all.cached_result(full)["test"]
    with pytest.raises(SystemExit, match="TASK:SETTING:METHOD:SEED"):
        one_job.jobs(["objects:long-tailed:default"], root / "cache", tmp_path, plan=toy_plan())


def test_default_run_is_a_run_folder_export_can_load(toy_run):
    root, summary, _ = toy_run
    run_dir = next((root / "cache").glob("results-*/hier/long-tailed/default/seed-0/run"))
    run = load_run(run_dir)
    assert "ball" in run.labels and "ball|red ball" in run.labels and len(run.thresholds) == 45


def test_f1_at_thresholds_reads_every_seed_of_the_cached_runs(toy_run):
    root, _, _ = toy_run
    lines = f1_table(toy_plan(), root / "cache", ["default"], ("long-tailed", "1-shot"))
    assert [line.split(" | ")[:3] for line in lines[2:]] == [
        ["| objects", "long-tailed", "default"], ["| objects", "1-shot", "default"],
        ["| hier", "long-tailed", "default"], ["| hier", "1-shot", "default"]]
    for line in lines[2:]:
        cells = [float(c.split(" ± ")[0]) for c in line.strip(" |").split(" | ")[3:]]
        assert len(cells) == 6 and all(0 <= c <= 100 for c in cells)


def test_a_result_holds_what_the_run_writes_at_its_own_thresholds(toy_run):
    """F1 in result.json is the test photos cut at the thresholds the run stored (children bringing
    their parents); the linear probe is cut at thresholds calibrated on its validation split; zero-shot,
    with no validation split, has none."""
    root, _, _ = toy_run
    spec = toy_plan().tasks[1]
    task = spec.build(root / "cache" / f"task-{spec.config.key()}")
    task_dir = next((root / "cache").glob("results-*/hier"))
    result = json.loads((task_dir / "long-tailed/default/seed-0/result.json").read_text())
    run = load_run(task_dir / "long-tailed/default/seed-0/run")
    pixels = run_all.load_test_pixels(task, run.preprocess, task_dir)
    expected = f1_summary(scores_of_run(run.run_dir, pixels), task.test.targets, np.array(run.thresholds), run.labels)
    assert result["test"]["f1_macro"] == expected["f1_macro"] and result["test"]["f1_micro"] == expected["f1_micro"]
    assert 0 <= result["test"]["precision_macro"] <= 100 and 0 <= result["test"]["recall_macro"] <= 100
    probe = json.loads((task_dir / "long-tailed/linear_probe/seed-0/result.json").read_text())
    assert 0 <= probe["test"]["f1_macro"] <= 100
    assert "f1_macro" not in json.loads((task_dir / "long-tailed/zero_shot/seed-0/result.json").read_text())["test"]


def test_the_no_refit_row_is_the_default_jobs_validated_model(toy_run):
    # Catches: the row read off the refit model (best.pt), or off nothing: the ablations are held to it.
    root, _, _ = toy_run
    refits = 0
    for spec in toy_plan().tasks:
        task = spec.build(root / "cache" / f"task-{spec.config.key()}")
        task_dir = next((root / "cache").glob(f"results-*/{spec.name}"))
        for setting in ("long-tailed", "1-shot"):
            run_dir = task_dir / setting / "default/seed-0/run"
            refits += (run_dir / VALIDATED).is_file()
            validated = load_run(run_dir, validated_checkpoint(run_dir).name)
            pixels = run_all.load_test_pixels(task, validated.preprocess, task_dir)
            expected = run_all.test_set_metrics(scores_of_parts(validated.parts, pixels), task.test.targets, task.groups)
            row = json.loads((task_dir / setting / "no_refit/seed-0/result.json").read_text())
            assert row["test"]["mAP"] == expected["mAP"] and row["method"] == "no_refit"
    assert refits >= 1  # the refit branch is exercised, not only runs that kept the untrained model


def test_report_states_targets_tables_and_command(toy_run):
    root, summary, _ = toy_run
    text = (root / "docs" / "quality.md").read_text()
    assert "python -m bench.quality.run_all" in text
    assert "2 jobs side by side of 1 torch thread each" in text  # what the wall time was measured with
    assert "| **tagger train (default)** |" in text and "| linear probe |" in text
    assert "| F1 at its thresholds | precision / recall |" in text and "what gets written" in text
    assert "long-tailed, overall: default" in text and "the +3 target" in text
    assert "1-shot: default" in text and "vs zero-shot" in text
    # Ablations (run without the refit) are held to the default's validated model; the refit to it too.
    validated = "vs the default's validated model (no refit either)"
    assert f"**− L_kd** {validated}" in text
    assert f"**+ L_sc (paper; off by default)** {validated}, 1-shot" in text and "| + L_sc (paper; off by default) | " in text
    assert "| − refit (the validated model: `--no-refit`) |" in text and "**− refit (the validated model" in text
    assert "## Task A: long-tailed" in text and "## Task B: long-tailed" in text and "few-shot" in text
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    png = root / "docs" / "quality_ap_vs_frequency.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 500_000


def test_a_second_run_reuses_every_cached_result(toy_run, tmp_path):
    root, summary, _ = toy_run
    plan_results = next((root / "cache").glob("results-*"))
    stamps = {p: p.stat().st_mtime_ns for p in plan_results.glob("*/long-tailed/*/seed-*/result.json")}
    lines = []
    run_all.run(toy_plan(("long-tailed",)), root / "cache", tmp_path / "quality.md", log=lines.append)
    assert not any(line.startswith("[") for line in lines)  # no job ran again
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert np.isfinite(json.loads((plan_results / "run.json").read_text())["timing"]["wall_s"])


def test_a_run_of_some_methods_adds_to_the_last_whole_run(toy_run, tmp_path):
    root, _, _ = toy_run
    last = json.loads(next((root / "cache").glob("results-*/run.json")).read_text())
    plan = toy_plan(("1-shot",))
    plan.methods = ["zero_shot"]  # nothing to run, but the report must say what was added
    added = run_all.run(plan, root / "cache", tmp_path / "quality.md", log=lambda line: None, adds=True)
    assert added["settings"] == ["long-tailed", "1-shot"]  # the last run's settings and this one's
    assert added["timing"] == last["timing"] and added["added"][-1]["methods"] == ["zero_shot"]
    text = (tmp_path / "quality.md").read_text()
    assert "--methods zero_shot --settings 1-shot` added 0 jobs" in text and "few-shot" in text


def _result(method: str, seed: int, mAP: float) -> dict:
    test = {"mAP": mAP, "mAP_head": mAP, "mAP_medium": mAP, "mAP_tail": mAP}
    return {"task": "objects", "setting": "long-tailed", "method": method, "seed": seed, "test": test}


def test_a_side_ablation_runs_on_the_first_seed_and_is_compared_with_that_seed_of_the_default(tmp_path):
    side, part = METHODS_BY_NAME["kd_paper"], METHODS_BY_NAME["no_kd"]
    assert side.seeds([0, 1, 2]) == [0] and part.seeds([0, 1, 2]) == [0, 1, 2]
    # Stage 2 is a part where photos are few, a settled side question long-tailed.
    prompts = METHODS_BY_NAME["no_stage2"]
    assert prompts.seeds([0, 1, 2], "long-tailed") == [0] and prompts.seeds([0, 1, 2], "5-shot") == [0, 1, 2]
    assert "kd_paper" not in run_all.Plan.full().methods and "no_kd" in run_all.Plan.full().methods
    # Results the method's older, all-seed runs left behind are dropped, not reported beside the new one.
    folder = tmp_path / "kd_paper"
    for seed in (0, 1, 2):
        (folder / f"seed-{seed}").mkdir(parents=True)
    run_all._drop_unplanned_seeds(folder, side.seeds([0, 1, 2]), [0, 1, 2])
    assert sorted(p.name for p in folder.iterdir()) == ["seed-0"]
    # Seed 0 of the validated default (what an ablation, run without the refit, is held to) scores 40;
    # its mean over three seeds is 50. The one-seed ablation at 41 is better than seed 0, not worse than
    # the mean; the refit default's own runs do not enter.
    results = [_result("no_refit", 0, 40.0), _result("no_refit", 1, 55.0), _result("no_refit", 2, 55.0),
               _result("default", 0, 60.0), _result("kd_paper", 0, 41.0)]
    (line,) = ablation_lines(results, "objects", ("kd_paper",))
    assert "(seed 0 only)" in line and "**better** (+1.0 mAP" in line


def test_an_ablation_line_pairs_the_seeds():
    """Seeds spread 40 to 55, so the spread rule sees no difference; seed by seed the ablation is lower
    every time, and the line says so."""
    results = [_result("no_refit", s, m) for s, m in ((0, 40.0), (1, 55.0), (2, 48.0))] \
        + [_result("no_stage2", s, m) for s, m in ((0, 39.0), (1, 54.5), (2, 47.9))]
    (line,) = ablation_lines(results, "objects", ("no_stage2",))
    assert "**no clear difference**" in line
    assert line.endswith("seed by seed -1.0 to -0.1, lower on 3 and higher on 0 of 3.")


def test_paired_seeds_compares_each_seed_of_an_ablation_with_the_same_seed_of_the_default(toy_run):
    root, _, _ = toy_run
    plan = toy_plan(("1-shot",))
    plan.tasks = plan.tasks[:1]
    (row,) = paired_seeds.run(plan, root / "cache", 2, ("with_sc",), log=lambda line: None)
    results = {(r["method"], r["seed"]): r["test"]["mAP"] for r in map(
        lambda p: json.loads(p.read_text()), (root / "cache").glob("paired-*/objects/1-shot/*/seed-*/result.json"))}
    # The default's jobs leave its validated model too, which an ablation (run without the refit) is held to.
    assert sorted(results) == [("default", 0), ("default", 1), ("no_refit", 0), ("no_refit", 1), ("with_sc", 0),
                               ("with_sc", 1)]
    diffs = [results["with_sc", s] - results["no_refit", s] for s in (0, 1)]
    assert row["seeds"] == 2 and row["diff"] == pytest.approx(np.mean(diffs))
    assert row["se"] == pytest.approx(np.std(diffs, ddof=1) / np.sqrt(2))
    # Seeds past the benchmark's own draw their own few-shot pools.
    assert len({p.name for p in (root / "cache").glob("task-*/shot1-s1")}) == 1


def test_paired_statistics_count_each_way_and_ignore_a_seed_one_side_lacks():
    stats = paired({0: 40.0, 1: 55.0, 2: 48.0, 3: 50.0}, {0: 39.0, 1: 55.5, 2: 48.0})
    assert stats["seeds"] == 3 and stats["diff"] == pytest.approx(-0.5 / 3)
    assert (stats["lower"], stats["higher"]) == (1, 1)
    assert stats["default"] == pytest.approx(143 / 3) and stats["ablated"] == pytest.approx(142.5 / 3)


def test_a_frequency_order_changes_which_kinds_are_rare_and_nothing_else():
    kinds = list(world.KINDS)
    assert tasks.kinds_by_frequency("world") == kinds
    assert tasks.kinds_by_frequency("reversed") == kinds[::-1]
    shuffled = tasks.kinds_by_frequency("shuffled-1")
    assert sorted(shuffled) == sorted(kinds) and shuffled != kinds
    assert shuffled == tasks.kinds_by_frequency("shuffled-1") != tasks.kinds_by_frequency("shuffled-2")
    with pytest.raises(ValueError, match="shuffled-N"):
        tasks.kinds_by_frequency("random")
    assert len({tasks.TaskConfig(order=o).key() for o in ("world", "reversed", "shuffled-1")}) == 3


def test_worlds_reuses_task_a_runs_and_compares_the_default_with_each_baseline(toy_run):
    root, _, _ = toy_run
    plan = toy_plan()
    objects = plan.tasks[0].config
    lines = []
    out = root / "docs" / "quality-worlds.md"
    table = worlds.run(orders=("world", "reversed"), seeds=[0], cache_root=root / "cache", out=out,
                       log=lines.append, task_config=objects, vlm=plan.vlm, schedule=plan.long_tailed)
    ran = [line.split()[:2] for line in lines if " seed " in line]
    # run_all ran zero-shot, the probe and the default on task A: the world order reuses them.
    assert sorted(m for order, m in ran if order == "world") == ["coop", "plain_ft"]
    assert sorted(m for order, m in ran if order == "reversed") == sorted([*worlds.BASELINES, "default"])
    # Only which kind gets which count changes: the same counts per rank, the kinds in reverse.
    built = {o: tasks.build_task(replace(objects, order=o), root / "cache" / f"task-{replace(objects, order=o).key()}")
             for o in ("world", "reversed")}
    assert built["reversed"].tags == built["world"].tags[::-1]
    assert np.array_equal(built["reversed"].lt.targets.sum(axis=0), built["world"].lt.targets.sum(axis=0))
    assert table["reversed"].tail_kinds[-1] == built["world"].tags[0]
    text = out.read_text()
    assert "python -m bench.quality.worlds" in text and "| world (" in text and "| reversed (" in text
    for order in ("world", "reversed"):
        _, overall, tail = worlds.margins(table[order].cells)
        assert f"{overall:+.1f} / {tail:+.1f} |" in text


def test_the_margin_is_over_the_strongest_baseline_overall_and_on_the_tail():
    def row(**means):
        return {m: {"mAP": worlds.Cell([v[0]]), "mAP_tail": worlds.Cell([v[1]])} for m, v in means.items()}
    table = row(zero_shot=(30, 45), linear_probe=(35, 20), coop=(40, 41), plain_ft=(44, 30), default=(46, 47))
    best, overall, tail = worlds.margins(table)
    assert best == "plain_ft" and overall == pytest.approx(2.0) and tail == pytest.approx(2.0)  # tail: zero-shot's 45
