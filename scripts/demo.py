"""The whole job on a built-in example, offline, in a few minutes on a laptop CPU.

    python scripts/demo.py [--workdir demo]

1. generate synthetic long-tailed photos (10 object kinds, head/medium/tail) and a balanced held-out set;
2. train a tiny HP-DVAL with the real `tagger train` command;
3. export it with `tagger export` (fp32, and int8 with its agreement figure);
4. tag the held-out folder with `tagger tag` (sidecar JSON beside each photo);
5. score those sidecars against the held-out ground truth: precision, recall and AP per tag,
   and mAP per head/medium/tail group.

Everything lands in --workdir, the model store included (TAGGER_HOME=WORKDIR/home), so the demo
never touches your own models. No weights are downloaded: the CLIP is a tiny one built from
train/model_configs/tagger-tiny.json. A real CLIP's text tower gives every tag a distinct
embedding; a randomly initialised one maps "a photo of a box." and "a photo of a ball." to nearly
the same direction (cosine ~0.95), which leaves the image side nothing to align with. So the demo
first gives its tiny CLIP that one property — a few seconds of tuning the text tower until the
vocabulary's prompts are spread apart — and saves it as the local checkpoint `--pretrained` loads.
The image tower stays random: everything it knows comes from `tagger train`.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

TINY_CONFIG = ROOT / "train" / "model_configs" / "tagger-tiny.json"
MODEL_NAME = "demo"


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def tagger(*args, env: dict) -> subprocess.CompletedProcess:
    """Run the real CLI in a child process, its output going straight to the console."""
    cmd = [sys.executable, "-m", "tagger", *[str(a) for a in args]]
    print("$ tagger " + " ".join(str(a) for a in args), flush=True)
    return subprocess.run(cmd, env=env, cwd=ROOT)


def make_checkpoint(labels: list[str], path: Path, seed: int, steps: int = 60) -> float:
    """A tiny CLIP whose text tower tells the vocabulary's prompts apart; returns the largest cosine
    between two tags' prompt embeddings afterwards."""
    import torch
    import torch.nn.functional as F

    from train.backbone import load_clip
    from train.prompts import prompt_text

    torch.manual_seed(seed)
    clip = load_clip(str(TINY_CONFIG), None)
    model = clip.model
    tokens = clip.tokenizer([prompt_text(tag) for tag in labels])
    text_params = [p for name, p in model.named_parameters() if not name.startswith("visual.")]
    optimizer = torch.optim.Adam(text_params, lr=1e-3)
    eye = torch.eye(len(labels))
    for _ in range(steps):
        P = F.normalize(model.encode_text(tokens), dim=-1)
        loss = ((P @ P.T - eye) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        P = F.normalize(model.encode_text(tokens), dim=-1)
        worst = float((P @ P.T - 2 * eye).max())
    torch.save(model.state_dict(), path)
    return worst


def read_truth(csv_path: Path, folder: Path, labels: list[str]) -> tuple[list[Path], np.ndarray]:
    index = {tag: i for i, tag in enumerate(labels)}
    photos, rows = [], []
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for name, tags in csv.reader(fh):
            row = np.zeros(len(labels), dtype=bool)
            for tag in filter(None, tags.split(";")):
                row[index[tag]] = True
            photos.append(folder / name)
            rows.append(row)
    return photos, np.array(rows)


def read_sidecars(photos: list[Path], labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Scores and yes/no decisions exactly as `tagger tag` wrote them beside each photo."""
    scores = np.zeros((len(photos), len(labels)), dtype=np.float64)
    decided = np.zeros((len(photos), len(labels)), dtype=bool)
    for i, photo in enumerate(photos):
        sidecar = json.loads(photo.with_name(photo.name + ".json").read_text(encoding="utf-8"))
        scores[i] = [sidecar["scores"][tag] for tag in labels]
        for entry in sidecar["tags"]:
            decided[i, labels.index(entry["tag"])] = True
    return scores, decided


def report(labels: list[str], train_positives: dict, truth: np.ndarray, scores: np.ndarray,
           decided: np.ndarray) -> None:
    from train.metrics import average_precision, frequency_group

    print(f"\n{'tag':<12}{'train +':>8}{'group':>8}{'test +':>8}{'precision':>11}{'recall':>8}{'AP':>7}")
    groups: dict[str, list[float]] = {"head": [], "medium": [], "tail": []}
    for c, tag in enumerate(labels):
        n_train = int(train_positives.get(tag, 0))
        group = frequency_group(n_train)
        tp = int((decided[:, c] & truth[:, c]).sum())
        precision = tp / max(1, int(decided[:, c].sum()))
        recall = tp / max(1, int(truth[:, c].sum()))
        ap = average_precision(scores[:, c], truth[:, c])
        groups[group].append(ap)
        print(f"{tag:<12}{n_train:>8}{group:>8}{int(truth[:, c].sum()):>8}{precision:>11.1%}{recall:>8.1%}"
              f"{100 * ap:>7.1f}")
    all_aps = [ap for aps in groups.values() for ap in aps]
    parts = [f"{g} {100 * np.mean(aps):.1f} ({len(aps)} tags)" for g, aps in groups.items() if aps]
    print(f"\nheld-out mAP {100 * np.mean(all_aps):.1f}: " + ", ".join(parts))
    micro_tp = int((decided & truth).sum())
    print(f"all tags at the calibrated thresholds: precision {micro_tp / max(1, int(decided.sum())):.1%}, "
          f"recall {micro_tp / max(1, int(truth.sum())):.1%}; chance AP would be about "
          f"{100 * truth.mean():.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("demo"))
    parser.add_argument("--n-train", type=int, default=1000, help="training photos (long-tailed)")
    parser.add_argument("--n-test", type=int, default=300, help="held-out photos (balanced)")
    parser.add_argument("--epochs", type=int, default=40, help="stage 1 epochs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    started = time.perf_counter()
    work = args.workdir.resolve()
    for sub in ("photos", "run", "home"):  # a fresh demo each time; nothing outside the workdir is touched
        shutil.rmtree(work / sub, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TAGGER_HOME": str(work / "home"), "PYTHONPATH": str(ROOT)}
    env.pop("TAGGER_MODEL", None)

    from tagger.labels import read_labels
    from train.synthetic import generate_dataset

    step("1. synthetic photos")
    data = generate_dataset(work / "photos", n_train=args.n_train, n_test=args.n_test, seed=args.seed)
    labels = read_labels(data.labels_file)
    print(f"{len(data.train)} long-tailed training photos in {data.train_dir}, "
          f"{len(data.test)} balanced held-out photos in {data.test_dir}, {len(labels)} tags")

    step("2. a tiny CLIP to start from (local checkpoint, no download)")
    checkpoint = work / "tiny-clip.pt"
    worst = make_checkpoint(labels, checkpoint, args.seed)
    print(f"{checkpoint}: text tower tuned until no two tag prompts have cosine above {worst:.2f}")

    step("3. train HP-DVAL (stage 1: image tower, stage 2: prompts)")
    # No distillation: its teacher is the random image tower, which has nothing to teach.
    trained = tagger("train", "--labels", data.labels_file, "--data", data.train_dir, "--annotations",
                     data.train_csv, "--backbone", TINY_CONFIG, "--pretrained", checkpoint, "--out", work / "run",
                     "--epochs", args.epochs, "--stage2-epochs", 10, "--lr", 2e-3, "--no-kd", "--no-keywords",
                     "--seed", args.seed, "--name", MODEL_NAME, "--quiet", env=env)
    if trained.returncode:
        return trained.returncode

    step("4. export to ONNX")
    exported = tagger("export", work / "run", "--name", MODEL_NAME, env=env)
    if exported.returncode:
        return exported.returncode
    # The int8 variant lands beside it as demo.int8.onnx; `tagger tag --model demo` runs it on CPU when its
    # export validated it (>= 99% agreement with fp32). A refusal is a result, not a failure.
    tagger("export", work / "run", "--name", MODEL_NAME, "--quantize", "int8", env=env)

    step("5. tag the held-out photos")
    tagged = tagger("tag", data.test_dir, "--model", MODEL_NAME, "--quiet", env=env)
    if tagged.returncode:
        return tagged.returncode

    step("6. results on the held-out photos (from the sidecars `tagger tag` wrote)")
    photos, truth = read_truth(data.test_csv, data.test_dir, labels)
    scores, decided = read_sidecars(photos, labels)
    metrics = json.loads((work / "run" / "metrics.json").read_text(encoding="utf-8"))
    train_positives = {t["tag"]: t["train_positives"] for t in metrics["tags"]}
    report(labels, train_positives, truth, scores, decided)
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s; everything is in {work}")
    print(f"try: TAGGER_HOME={work / 'home'} tagger tag YOUR_PHOTOS --model {MODEL_NAME} --dry-run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
