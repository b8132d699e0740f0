"""`torchrun --nproc_per_node 2 -m tagger train` on the CPU (gloo) trains the model one process trains."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

from train.synthetic import generate_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "train" / "model_configs" / "tagger-tiny.json")
LR = 2e-3
TOLERANCE = 0.1  # of one Adam step (lr): see the weight comparison below


def _train(launcher: list[str], synthetic, out: Path, pretrained: Path | None) -> subprocess.CompletedProcess:
    args = ["--labels", str(synthetic.labels_file), "--data", str(synthetic.train_dir),
            "--annotations", str(synthetic.train_csv), "--backbone", TINY, "--out", str(out), "--no-keywords",
            "-q", "--device", "cpu", "--batch-size", "15", "--epochs", "3", "--stage2-epochs", "1",
            "--lr", str(LR), "--seed", "3", *(["--pretrained", str(pretrained)] if pretrained else [])]
    # One thread per process: the same float sums in every run, and no fight over the cores.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([*launcher, "-m", "tagger", "train", *args], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("start", ["random", "pretrained"])
def test_torchrun_two_processes_train_what_one_process_trains(tmp_path, start):
    # 96 training photos in global batches of 15: 6 steps an epoch, one of them the 21-photo merged
    # last batch, split 8/7 and 11/10 between the ranks (unequal shares, as a real run has them).
    # From a random tower nothing is distilled; from a pretrained one (a saved random CLIP standing in),
    # L_kd holds the tower and the free branch trains beside it, as a user's run does.
    synthetic = generate_dataset(tmp_path / "data", n_train=120, n_test=0, seed=1)
    pretrained = None
    if start == "pretrained":
        from train.backbone import load_clip
        torch.manual_seed(7)
        pretrained = tmp_path / "tiny.pt"
        torch.save(load_clip(TINY, None).model.state_dict(), pretrained)
    one = _train([sys.executable], synthetic, tmp_path / "one", pretrained)
    assert one.returncode == 0, one.stdout + one.stderr
    two = _train([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
                 synthetic, tmp_path / "two", pretrained)
    assert two.returncode == 0, two.stdout + two.stderr
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config["model"]["free_blocks"] == (3 if start == "pretrained" else 0)

    assert "2 processes (gloo)" in two.stdout
    # Rank 0 alone logs: each epoch and the final line once.
    assert len(re.findall(r"^stage 1 epoch 3/3", two.stdout, re.M)) == 1 and two.stdout.count("run saved in") == 1
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    # Validation mAP is rounded to 3 decimals; 0.01 leaves room for a tie broken the other way by
    # float32 noise on another CPU, while any real training difference moves it by whole points.
    assert m2["best"] == m1["best"]
    assert m2["val"]["mAP"] == pytest.approx(m1["val"]["mAP"], abs=0.01)
    for h1, h2 in zip(m1["history"], m2["history"], strict=True):
        assert h2["mAP"] == pytest.approx(h1["mAP"], abs=0.01)
        if h1["loss"] is not None:  # the epoch loss is the mean over the global batches
            assert h2["loss"] == pytest.approx(h1["loss"], rel=1e-5)

    # DDP averages the two shares' gradients; weighted by share size that is the one-process
    # gradient up to float32 summation order (~1e-7 relative), which Adam turns into weight
    # differences far below one step (a step moves a weight by at most about lr). Left out: the
    # attention key biases, whose true gradient is exactly zero (softmax ignores a shift shared by all
    # keys), so each run steps them by ±lr on rounding noise alone, and they change no output.
    # Training on one rank's half, or with per-rank augmentation draws, moves weights by whole steps.
    _assert_same_weights(tmp_path / "one" / "last.pt", tmp_path / "two" / "last.pt")

    # The refit (the pick trained again on every labelled photo, best.pt) is shared the same way: the
    # ranks take their slices of its global batches, and it ends where one process's refit ends. A
    # refit run by rank 0 alone would say 1 process (and hold the global batch in one device's memory).
    assert m1["refit"]["processes"] == 1 and m2["refit"]["processes"] == 2
    assert m2["refit"]["photos"] == m1["refit"]["photos"] == m1["train_images"] + m1["val_images"]
    _assert_same_weights(tmp_path / "one" / "best.pt", tmp_path / "two" / "best.pt")
    assert m2["thresholds"] == pytest.approx(m1["thresholds"], abs=1e-3)


def _assert_same_weights(one: Path, two: Path) -> None:
    w1 = torch.load(one, weights_only=False)["model"]
    w2 = torch.load(two, weights_only=False)["model"]
    assert w1.keys() == w2.keys()
    diffs = sorted(((_without_key_bias(k, w1[k]) - _without_key_bias(k, w2[k])).abs().max().item(), k)
                   for k in w1 if w1[k].is_floating_point())
    print(one.name, "largest weight differences", diffs[-4:])
    assert diffs[-1][0] < TOLERANCE * LR, diffs[-1]


def _without_key_bias(name: str, value):
    value = value.float()
    if name.endswith("attn.in_proj_bias"):  # [q | k | v]
        d = value.shape[0] // 3
        value = torch.cat([value[:d], value[2 * d:]])
    return value
