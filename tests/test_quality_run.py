"""The quality benchmark end to end at toy size: VLM pretraining, tasks, methods, results, report."""
import json

import numpy as np
import pytest
import torch

from bench.quality import pretrain_vlm, run_all, tasks
from bench.quality.methods import Schedule
from train.runs import load_run


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    schedule = Schedule(epochs=1, stage2_epochs=1, lr=1e-4, batch_size=16)
    plan = run_all.Plan(
        vlm=pretrain_vlm.PretrainConfig(n_scenes=128, epochs=1, batch_size=64, warmup_steps=1, n_heldout=40),
        task=tasks.TaskConfig(n_pool=40, n_max=16, exponent=1.0, shift=0.0, n_test=24, test_positives=3, shots=(1,),
                              seeds=(0,)),
        long_tailed=schedule, few_shot={1: Schedule(epochs=1, stage2_epochs=1, batch_size=4, val_fraction=0.5)},
        seeds=[0], methods=["zero_shot", "linear_probe", "full", "joint"], settings=["long-tailed", "1-shot"],
        tune_lrs=(1e-4,))
    lines = []
    summary = run_all.run(plan, root / "cache", root / "docs" / "quality.md", log=lines.append)
    torch.set_num_threads(threads)
    return root, summary, lines


def test_every_job_leaves_test_metrics(toy_run):
    root, summary, lines = toy_run
    results = list((root / "cache").glob("results-*/*/*/seed-*/result.json"))
    found = {(r["setting"], r["method"]) for r in map(lambda p: json.loads(p.read_text()), results)}
    assert found == {("long-tailed", m) for m in ("zero_shot", "linear_probe", "full", "joint")} \
        | {("1-shot", m) for m in ("zero_shot", "linear_probe", "full")}
    for path in results:
        test = json.loads(path.read_text())["test"]
        assert 0 <= test["mAP"] <= 100 and len(test["ap"]) == 20
        assert test["mAP_tail"] is not None  # the toy pool is too small for head or medium tags
        assert test["mAP_head"] is None and test["mAP_medium"] is None
    assert summary["vlm"]["zero_shot"]["photo style"]["chance_mAP"] > 0
    assert any(line.startswith("[") and "joint" in line for line in lines)


def test_joint_run_is_a_run_folder_like_tagger_trains(toy_run):
    root, summary, _ = toy_run
    run_dir = next((root / "cache").glob("results-*/long-tailed/joint/seed-0/run"))
    run = load_run(run_dir)
    assert run.labels[:2] == ["ball", "tree"] and len(run.thresholds) == 20
    config = json.loads((run_dir / "config.json").read_text())
    assert config["train"]["method"] == "joint"
    scores = run.model.scores(torch.zeros(2, 64, 64, 3, dtype=torch.uint8))
    assert scores.shape == (2, 20) and bool(((scores >= 0) & (scores <= 1)).all())


def test_report_states_table_claims_and_command(toy_run):
    root, summary, _ = toy_run
    text = (root / "docs" / "quality.md").read_text()
    assert "python -m bench.quality.run_all" in text
    assert "| HP-DVAL (DVAL + HPT + SC, DB*) |" in text and "| linear probe |" in text
    assert "HP-DVAL vs zero-shot CLIP" in text and "sequential stages vs joint training" in text
    assert "## Few-shot" in text and "1-shot" in text
    assert "| long-tailed | **" in text and "| 1-shot | **" in text  # the one learning rate, chosen
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    png = root / "docs" / "quality_ap_vs_frequency.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 500_000


def test_a_second_run_reuses_every_cached_result(toy_run, tmp_path):
    root, summary, _ = toy_run
    plan_results = next((root / "cache").glob("results-*"))
    stamps = {p: p.stat().st_mtime_ns for p in plan_results.glob("long-tailed/*/seed-*/result.json")}
    lines = []
    schedule = Schedule(epochs=1, stage2_epochs=1, lr=1e-4, batch_size=16)
    plan = run_all.Plan(
        vlm=pretrain_vlm.PretrainConfig(n_scenes=128, epochs=1, batch_size=64, warmup_steps=1, n_heldout=40),
        task=tasks.TaskConfig(n_pool=40, n_max=16, exponent=1.0, shift=0.0, n_test=24, test_positives=3, shots=(1,),
                              seeds=(0,)),
        long_tailed=schedule, few_shot={1: Schedule(epochs=1, stage2_epochs=1, batch_size=4, val_fraction=0.5)},
        seeds=[0], methods=["zero_shot", "linear_probe", "full", "joint"], settings=["long-tailed"],
        tune_lrs=(1e-4,))
    run_all.run(plan, root / "cache", tmp_path / "quality.md", log=lines.append)
    assert not any(line.startswith("[") for line in lines)  # no job ran again
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert np.isfinite(json.loads((plan_results / "run.json").read_text())["timing"]["wall_s"])
