"""bench/quality/reproduce_lt.py on a tiny fake VOC-LT in the Distribution-Balanced-loss release format."""
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.quality import reproduce_lt, world

TINY = Path(__file__).resolve().parents[1] / "train" / "model_configs" / "tagger-tiny.json"
CLASSES = ["ball", "tree", "sun", "moon"]


def _write_images(root: Path, folder: str, n: int, rng) -> list[str]:
    lines = []
    for i in range(n):
        labels = sorted(rng.choice(len(CLASSES), size=int(rng.integers(1, 3)), replace=False).tolist())
        scene = world.sample_scene([CLASSES[c] for c in labels], rng, world.PHOTO_STYLE)
        rel = f"VOCdevkit/{folder}/JPEGImages/{i:06d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        world.render(scene, world.PHOTO_STYLE).save(root / rel, quality=90)
        lines.append(" ".join([rel, *map(str, labels)]))
    return lines


@pytest.fixture(scope="module")
def fake_voc_lt(tmp_path_factory):
    """Images under ROOT, list/label files and pickles under APPENDIX as the DB-loss/LMPT release lays them out."""
    base = tmp_path_factory.mktemp("voclt")
    root, appendix = base / "data", base / "appendix" / "VOCdevkit"
    rng = np.random.default_rng(0)
    train = _write_images(root, "VOC2012", 24, rng)
    test = _write_images(root, "VOC2007", 12, rng)
    (appendix / "longtail2012").mkdir(parents=True)
    (appendix / "voc_lt_train.txt").write_text("\n".join(train) + "\n")
    (appendix / "voc_lt_test.txt").write_text("\n".join(test) + "\n")
    (appendix / "voc_labels.txt").write_text("".join(f"{name} {i}\n" for i, name in enumerate(CLASSES)))
    gt = np.zeros((len(train), len(CLASSES)), np.int64)
    for r, line in enumerate(train):
        gt[r, [int(i) for i in line.split()[1:]]] = 1
    with open(appendix / "longtail2012" / "class_freq.pkl", "wb") as fh:
        pickle.dump({"gt_labels": gt, "class_freq": gt.sum(axis=0), "neg_class_freq": len(gt) - gt.sum(axis=0)}, fh)
    with open(appendix / "longtail2012" / "class_split.pkl", "wb") as fh:
        pickle.dump({"head": {np.int64(0)}, "middle": {1, 2}, "tail": {3}}, fh)
    return root, base / "appendix", base


def test_reproduce_runs_the_protocol_and_prints_ours_beside_the_paper(fake_voc_lt, capsys):
    root, appendix, base = fake_voc_lt
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        code = reproduce_lt.main(["--dataset", "voc-lt", "--root", str(root), "--appendix", str(appendix),
                                  "--backbone", str(TINY), "--pretrained", "none", "--epochs", "1",
                                  "--stage2-epochs", "1", "--batch-size", "8", "--lr", "1e-3", "--device", "cpu",
                                  "--workers", "2", "--out", str(base / "out")])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "24 training / 12 test images; groups head 1 / middle 2 / tail 1" in out
    assert "paper: HP-DVAL" in out and "93.06" in out and "98.58" in out
    results = json.loads((base / "out" / "results.json").read_text())
    ours = results["ours"]
    assert set(ours) == {"zero-shot CLIP", "HP-DVAL (tagger train)"}
    for m in ours.values():
        assert 0 <= m["mAP"] <= 100 and set(m["ap"]) == set(CLASSES)
        # group means are the release's split: head is class 0 alone, tail class 3 alone
        assert m["mAP_head"] == pytest.approx(m["ap"]["ball"], abs=1e-3)
        assert m["mAP_tail"] == pytest.approx(m["ap"]["moon"], abs=1e-3)
    csv_rows = (base / "out" / "inputs" / "train.csv").read_text().splitlines()
    assert len(csv_rows) == 24 and csv_rows[0].startswith("VOCdevkit/VOC2012/JPEGImages/000000.jpg,")
    assert results["paper"]["HP-DVAL"]["mAP"] == 93.06


def test_bad_split_files_get_one_line_errors(fake_voc_lt, tmp_path, capsys):
    root, appendix, base = fake_voc_lt
    bad_list = tmp_path / "bad.txt"
    bad_list.write_text("VOCdevkit/VOC2012/JPEGImages/000000.jpg 0 7\n")
    code = reproduce_lt.main(["--dataset", "voc-lt", "--root", str(root), "--appendix", str(appendix),
                              "--train-list", str(bad_list), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and f"{bad_list}: line 1: class index outside 0..3" in err
    split = tmp_path / "split.pkl"
    split.write_bytes(b"not a pickle")
    code = reproduce_lt.main(["--dataset", "voc-lt", "--root", str(root), "--appendix", str(appendix),
                              "--class-split", str(split), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and f"{split}: not a readable pickle" in err and len(err.strip().splitlines()) == 1
    missing_root = tmp_path / "nowhere"
    code = reproduce_lt.main(["--dataset", "voc-lt", "--root", str(missing_root), "--appendix", str(appendix),
                              "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "training image not found (24 of 24 missing)" in err
