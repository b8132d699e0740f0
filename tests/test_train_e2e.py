"""End to end: synthetic long-tailed photos -> `tagger train` -> a run that load_run and export can use."""
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

from tagger.cli import cli  # noqa: E402
from train import trainer as trainer_module  # noqa: E402
from train.backbone import load_clip  # noqa: E402
from train.losses import make_loss  # noqa: E402
from train.model import HPDVAL, score_images  # noqa: E402
from train.runs import load_checkpoint, load_run, validated_checkpoint  # noqa: E402
from train.synthetic import generate_dataset  # noqa: E402

TINY = str(Path(__file__).resolve().parents[1] / "train" / "model_configs" / "tagger-tiny.json")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same numbers on any machine, and no fight over 2 shared cores
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("syn") / "data", n_train=300, n_test=0, seed=1)


def mean_ap(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mean over tags with a positive of the mean precision at each positive (ties: negatives first)."""
    aps = []
    for c in range(targets.shape[1]):
        y = targets[:, c].astype(bool)
        if not y.any():
            continue
        order = sorted(range(len(y)), key=lambda i: (-scores[i, c], y[i]))
        hits, precisions = 0, []
        for rank, i in enumerate(order, start=1):
            if y[i]:
                hits += 1
                precisions.append(hits / rank)
        aps.append(sum(precisions) / len(precisions))
    return 100 * float(np.mean(aps))


def train_args(synthetic, out, *extra):
    return ["train", "--labels", str(synthetic.labels_file), "--data", str(synthetic.train_dir),
            "--annotations", str(synthetic.train_csv), "--backbone", TINY, "--out", str(out),
            "--no-keywords", "-q", "--batch-size", "16", *map(str, extra)]


@pytest.mark.slow
def test_training_beats_the_untrained_model(synthetic, tmp_path):
    # From random init the balanced-loss variants learn the tail slowly; BCE shows in seconds that the
    # whole pipeline (cache, augmentation, both stages, selection, calibration) learns.
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, train_args(synthetic, out, "--loss", "bce", "--epochs", 30,
                                                "--stage2-epochs", 5))
    assert result.exit_code == 0, result.output
    assert "head, " in result.output and "tail tags" in result.output  # the histogram came first
    metrics = json.loads((out / "metrics.json").read_text())
    after, before = metrics["val"], metrics["before_training"]
    print(f"val mAP before {before['mAP']:.1f} -> after {after['mAP']:.1f} "
          f"(head {after['mAP_head']}, medium {after['mAP_medium']}, tail {after['mAP_tail']})")
    assert after["mAP"] >= before["mAP"] + 15
    assert after["mAP_tail"] is not None and after["mAP_head"] is not None
    assert f"tail {after['mAP_tail']:.1f}" in result.output
    assert len(metrics["history"]) == 35 and {h["stage"] for h in metrics["history"]} == {1, 2}
    assert len(metrics["thresholds"]) == len(synthetic.tags)

    # The validated model, as export would see it: scores recomputed here give the same mAP as
    # metrics.json. What export gets is its recipe refit on all 300 photos (validation ones too).
    assert load_run(out).summary["refit_images"] == 300
    run = load_run(out, validated_checkpoint(out).name)
    assert run.labels == synthetic.tags
    images = run.validation_images()
    index = {t: i for i, t in enumerate(run.labels)}
    targets = np.zeros((len(run.dataset["val"]), len(run.labels)))
    for row, entry in enumerate(run.dataset["val"]):
        targets[row, [index[t] for t in entry["tags"]]] = 1
    with torch.no_grad():
        trained = score_images(run.parts, torch.from_numpy(images)).numpy()
    assert mean_ap(trained, targets) == pytest.approx(after["mAP"], abs=0.01)

    # ...and "before training" really is the untrained model: rebuilt here from the seed.
    torch.manual_seed(0)
    clip = load_clip(TINY, None)
    counts = [t["train_positives"] for t in metrics["tags"]]
    untrained = HPDVAL(clip, run.labels, class_bias=make_loss("bce", counts, metrics["train_images"]).class_bias,
                       teacher=False).eval()
    with torch.no_grad():
        untrained_scores = score_images(untrained.export_parts(), torch.from_numpy(images)).numpy()
    assert mean_ap(untrained_scores, targets) == pytest.approx(before["mAP"], abs=0.01)
    assert not any(str(p["path"]) in {e["path"] for e in run.dataset["val"]} for p in run.dataset["train"])


@pytest.mark.slow
def test_load_run_round_trip(synthetic, tmp_path):
    out = tmp_path / "run"
    assert CliRunner().invoke(cli, train_args(synthetic, out, "--epochs", 1, "--stage2-epochs", 1,
                                              "--name", "shapes")).exit_code == 0
    run = load_run(out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert run.thresholds == pytest.approx(metrics["thresholds"])
    assert all(0.0 <= t <= 1.0 for t in run.thresholds)
    summary = run.summary
    assert summary["name"] == "shapes" and summary["backbone"] == TINY and summary["pretrained"] is None
    assert summary["train_images"] + summary["val_images"] == 300
    assert set(summary["val_mAP"]) == {"total", "head", "medium", "tail"}
    assert summary["positives"]["box"] > summary["positives"]["Sky|Moon"]
    assert summary["loss"] == "bce" and summary["stages"] == [1, 2]
    assert len(summary["created"]) == 10  # ISO date
    assert run.preprocess.size == 64 and run.preprocess.resize == "shortest"
    assert run.parts.P_G.shape == (10, 64) and run.parts.topk == 10
    assert run.validation_images().shape == (summary["val_images"], 64, 64, 3)
    calibration = run.calibration_images(7)
    assert calibration.shape == (7, 64, 64, 3) and calibration.dtype == np.uint8
    # The saved weights, not a fresh model: the checkpoint's student is what export gets.
    best = load_checkpoint(out / "best.pt")["model"]
    assert torch.equal(run.parts.visual.proj, best["student.proj"])
    assert not any(p.requires_grad for p in run.model.parameters())


@pytest.mark.slow
def test_resume_continues_to_the_same_result(synthetic, tmp_path, monkeypatch):
    args = ("--epochs", 3, "--stage2-epochs", 2, "--lr", "1e-3")
    assert CliRunner().invoke(cli, train_args(synthetic, tmp_path / "straight", *args)).exit_code == 0

    original = trainer_module.Trainer._log_epoch

    def interrupt_after_epoch_2(self, stage, epoch, *rest):
        original(self, stage, epoch, *rest)
        if (stage, epoch) == (1, 2):
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module.Trainer, "_log_epoch", interrupt_after_epoch_2)
    result = CliRunner().invoke(cli, train_args(synthetic, tmp_path / "resumed", *args))
    assert result.exit_code == 130 and "tagger train --resume" in result.output
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    monkeypatch.setattr(trainer_module.Trainer, "_log_epoch", original)
    again = CliRunner().invoke(cli, train_args(synthetic, tmp_path / "resumed"))
    assert again.exit_code == 1 and "already holds a training run" in again.output
    result = CliRunner().invoke(cli, ["train", "--resume", "--out", str(tmp_path / "resumed"), "-q"])
    assert result.exit_code == 0, result.output
    assert "resuming after stage 1 epoch 2" in result.output

    straight = load_checkpoint(tmp_path / "straight" / "last.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert [h["stage"] for h in resumed["history"]] == [1, 1, 1, 2, 2]
    for key, value in straight["model"].items():
        assert torch.allclose(value, resumed["model"][key], atol=1e-6), key
    a = json.loads((tmp_path / "straight" / "metrics.json").read_text())["val"]
    b = json.loads((tmp_path / "resumed" / "metrics.json").read_text())["val"]
    assert a["mAP"] == pytest.approx(b["mAP"], abs=1e-3)
