"""The correction loop end to end: train -> tag -> review (scripted) -> retrain, and what it buys.

    python bench/review_loop.py [--workdir build/review-loop] [--tag tent] [--wrong 30]

A catalog with wrong labels is the usual reason a tag is weak (report.html shows them as the tag's
false alarms and misses). This script makes one on the demo data and fixes it the way a user would:

1. synthetic long-tailed photos (scripts/demo.py's data) whose catalog CSV also puts `--tag` on
   `--wrong` photos that do not show it;
2. `tagger train` (the demo's tiny CLIP, random image tower) -> run1, with report.html;
3. `tagger export` and `tagger tag` over the training folder (sidecar JSON beside each photo);
4. `tagger review` started for real; a scripted reviewer reads its queue over HTTP (with the token)
   and, for `--tag` only, rejects every suggestion that the ground truth says is a false alarm;
5. `tagger train` again, same settings and seed -> run2 (the rejections are known negatives that
   override the wrong CSV labels).

It prints, for run1 and run2, the tag's validation AP (metrics.json: validation labels are the
catalog's, corrected in run2 where the reviewer rejected them) and its AP on the held-out test
photos with the true labels (the same photos and labels for both runs: the fair comparison).

Changing labels changes the stratified split, so run2 differs from run1 in more than the labels.
`--control` also trains run1's catalog again with the next seed (another split, no review), so the
run-to-run variation can be read beside the review's effect.
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
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.demo import TINY_CONFIG, make_checkpoint, read_sidecars, read_truth  # noqa: E402
from tagger.labels import read_labels  # noqa: E402
from train.metrics import average_precision  # noqa: E402
from train.synthetic import generate_dataset  # noqa: E402


def tagger(*args, env: dict) -> None:
    print("$ tagger " + " ".join(str(a) for a in args), flush=True)
    subprocess.run([sys.executable, "-m", "tagger", *map(str, args)], env=env, cwd=ROOT, check=True)


def corrupt_catalog(train_csv: Path, tag: str, n_wrong: int, seed: int) -> set[str]:
    """Add `tag` to n_wrong photos that do not show it; returns their file names."""
    with open(train_csv, newline="", encoding="utf-8") as fh:
        rows = [(name, [t for t in tags.split(";") if t]) for name, tags in csv.reader(fh)]
    without = [i for i, (_, tags) in enumerate(rows) if tag not in tags]
    pick = np.random.default_rng(seed).choice(without, size=min(n_wrong, len(without)), replace=False)
    for i in pick:
        rows[i][1].append(tag)
    with open(train_csv, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows((name, ";".join(tags)) for name, tags in rows)
    return {rows[i][0] for i in pick}


def scripted_review(folder: Path, tag: str, truth: dict[str, set[str]], env: dict, model: str) -> dict:
    """Start `tagger review`, reject the tag's false alarms through its API, stop it."""
    proc = subprocess.Popen([sys.executable, "-m", "tagger", "review", str(folder), "--model", model,
                             "--no-browser"], env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        base, token = url.split("/?token=")
        headers = {"X-Tagger-Token": token}

        def call(path, body=None):
            req = urllib.request.Request(base + path, headers={**headers, "Content-Type": "application/json"},
                                         data=None if body is None else json.dumps(body).encode())
            with urllib.request.urlopen(req, timeout=30) as response:
                return json.loads(response.read())

        queue = {t["tag"]: t for t in call("/api/queue")["tags"]}
        items = queue[tag]["items"] if tag in queue else []
        suggested = [i for i in items if i["suggested"]]
        rejected = 0
        for item in suggested:
            if tag not in truth[item["name"]]:
                call("/api/decide", {"photo": item["id"], "tag": tag, "verdict": "reject"})
                rejected += 1
        return {"shown": len(items), "suggested": len(suggested), "rejected": rejected}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def tag_figures(run: Path, tag: str, test_photos, test_truth, labels, env: dict, name: str) -> dict:
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    row = next(t for t in metrics["tags"] if t["tag"] == tag)
    tagger("export", run, "--name", name, env=env)
    tagger("tag", test_photos[0].parent, "--model", name, "--force", "--quiet", env=env)
    scores, _ = read_sidecars(test_photos, labels)
    c = labels.index(tag)
    return {"val_ap": row["ap"], "val_positives": row["val_positives"], "train_positives": row["train_positives"],
            "test_ap": round(100 * average_precision(scores[:, c], test_truth[:, c]), 2),
            "test_mAP": round(100 * float(np.mean([average_precision(scores[:, i], test_truth[:, i])
                                                  for i in range(len(labels))])), 2),
            "val_mAP": metrics["val"]["mAP"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=ROOT / "build" / "review-loop")
    parser.add_argument("--tag", default="tent", help="the tag whose catalog labels are wrong")
    parser.add_argument("--wrong", type=int, default=30, help="photos wrongly labelled with --tag")
    parser.add_argument("--n-train", type=int, default=600)
    parser.add_argument("--n-test", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--control", action="store_true", help="also train the uncorrected catalog with seed+1")
    args = parser.parse_args()

    started = time.perf_counter()
    work = args.workdir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "TAGGER_HOME": str(work / "home"), "PYTHONPATH": str(ROOT)}
    env.pop("TAGGER_MODEL", None)

    data = generate_dataset(work / "photos", n_train=args.n_train, n_test=args.n_test, seed=args.seed)
    labels = read_labels(data.labels_file)
    wrong = corrupt_catalog(data.train_csv, args.tag, args.wrong, args.seed)
    truth = {p.name: set(tags) for p, tags in data.train}
    print(f"{len(data.train)} training photos; catalog labels {args.tag!r} on {len(wrong)} photos without it "
          f"(and on {sum(args.tag in t for t in truth.values())} with it)")
    checkpoint = work / "tiny-clip.pt"
    make_checkpoint(labels, checkpoint, args.seed)
    test_photos, test_truth = read_truth(data.test_csv, data.test_dir, labels)

    def train(out: Path, folder: Path = data.train_dir, seed: int = args.seed) -> None:
        tagger("train", "--labels", data.labels_file, "--data", folder, "--annotations", data.train_csv,
               "--backbone", TINY_CONFIG, "--pretrained", checkpoint, "--out", out, "--epochs", args.epochs,
               "--stage2-epochs", 10, "--lr", 2e-3, "--no-kd", "--no-keywords", "--seed", seed, "--quiet",
               env=env)

    if args.control:  # the catalog as it was, before any sidecar exists
        shutil.copytree(data.train_dir, work / "photos" / "train-control")

    train(work / "run1")
    before = tag_figures(work / "run1", args.tag, test_photos, test_truth, labels, env, "loop1")
    tagger("tag", data.train_dir, "--model", "loop1", "--quiet", env=env)
    review = scripted_review(data.train_dir, args.tag, truth, env, "loop1")
    print(f"review of {args.tag!r}: {review['shown']} photos shown, {review['suggested']} suggested, "
          f"{review['rejected']} false alarms rejected")
    train(work / "run2")
    after = tag_figures(work / "run2", args.tag, test_photos, test_truth, labels, env, "loop2")
    control = None
    if args.control:
        train(work / "run-control", work / "photos" / "train-control", args.seed + 1)
        control = tag_figures(work / "run-control", args.tag, test_photos, test_truth, labels, env, "control")

    print(f"\n{args.tag!r}, before -> after the review ({time.perf_counter() - started:.0f} s in all)"
          + ("; control: no review, next seed" if control else "") + ":")
    for key, what in (("train_positives", "training photos labelled"), ("val_ap", "validation AP"),
                      ("test_ap", "held-out AP (true labels)"), ("val_mAP", "validation mAP, all tags"),
                      ("test_mAP", "held-out mAP, all tags")):
        print(f"  {what:<28}{before[key]:>8} -> {after[key]:<8}" + (f"  control {control[key]}" if control else ""))
    print(json.dumps({"review": review, "before": before, "after": after, "control": control}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
