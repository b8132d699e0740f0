"""`tagger tag` against the plain open_clip script a user would otherwise write, in one run.

    python bench/vs_open_clip.py [--photos 48] [--backbone ViT-B-32]

Both sides run the same ViT weights (random-initialized: speed does not depend on the values) on
the same folder of generated 12 MP JPEGs, on this machine's CPU cores:
- plain script: Pillow full decode + open_clip's own preprocess + PyTorch eager, batch 16;
- tagger: `tagger tag` end to end (draft decoding overlapped with ONNX Runtime), with the fp32 and
  the int8 export of the same weights.
It also reports decode-only and model-only rates, end-to-end as a fraction of their bound, and int8
vs fp32 tag-decision agreement (fp32 parity with PyTorch is enforced by `tagger export` itself).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tagger.benchmark import Bound, cpu_name, decode_rate, end_to_end_rate, model_rate, photo_folder
from tagger.images import load_image
from tagger.modelfile import TaggerModel, cpu_count
from tagger.writers import create_writer

LABELS = ["dog", "cat", "beach", "mountain", "city", "food", "people", "car", "flower", "snow",
          "sunset", "forest", "building", "water", "night", "portrait"]


def plain_open_clip_rate(paths: list[Path], clip, preprocess, text: torch.Tensor, batch_size: int = 16) -> float:
    """What the README of a CLIP tagger tells you to do: decode, preprocess, encode, compare."""
    start = time.perf_counter()
    from PIL import Image

    with torch.inference_mode():
        for i in range(0, len(paths), batch_size):
            images = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths[i:i + batch_size]])
            features = clip.encode_image(images)
            features = features / features.norm(dim=-1, keepdim=True)
            torch.sigmoid(100 * features @ text.T - 25)
    return len(paths) / (time.perf_counter() - start)


def export(checkpoint: Path, labels_file: Path, backbone: str, out: Path, quantize: str | None) -> Path:
    cmd = [sys.executable, "-m", "tagger", "export", "--zero-shot", "--labels", str(labels_file),
           "--backbone", backbone, "--pretrained", str(checkpoint), "--out", str(out)]
    if quantize:
        cmd += ["--quantize", quantize]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out


def decisions(model: TaggerModel, pixels: np.ndarray) -> np.ndarray:
    scores = np.concatenate([model.predict(pixels[i:i + 16]) for i in range(0, len(pixels), 16)])
    return scores >= np.asarray(model.info.thresholds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=48)
    parser.add_argument("--backbone", default="ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--cache", type=Path, default=Path(".cache"))
    args = parser.parse_args()

    import open_clip

    torch.set_num_threads(cpu_count())
    paths = photo_folder(args.cache / "bench-photos", args.photos)
    work = Path(tempfile.mkdtemp(prefix="tagger-vs-openclip-"))
    try:
        torch.manual_seed(0)
        clip, _, preprocess = open_clip.create_model_and_transforms(args.backbone, pretrained=None)
        clip.eval()
        checkpoint = work / "weights.pt"
        torch.save(clip.state_dict(), checkpoint)
        labels_file = work / "labels.txt"
        labels_file.write_text("\n".join(LABELS) + "\n")
        with torch.inference_mode():
            text = clip.encode_text(open_clip.get_tokenizer(args.backbone)([f"a photo of a {t}." for t in LABELS]))
            text = text / text.norm(dim=-1, keepdim=True)

        fp32 = TaggerModel(export(checkpoint, labels_file, args.backbone, work / "fp32.onnx", None),
                           device="cpu", spinning=False)
        int8 = TaggerModel(export(checkpoint, labels_file, args.backbone, work / "int8.onnx", "int8"),
                           device="cpu", spinning=False)

        photos = work / "photos"
        photos.mkdir()
        for path in paths:
            shutil.copy(path, photos / path.name)

        workers = cpu_count()
        plain = plain_open_clip_rate(paths, clip, preprocess, text, args.batch_size)
        with torch.inference_mode():
            batch = torch.randn(args.batch_size, 3, 224, 224)
            clip.encode_image(batch)
            start, done = time.perf_counter(), 0
            while time.perf_counter() - start < 5:
                clip.encode_image(batch)
                done += args.batch_size
            eager = done / (time.perf_counter() - start)
        rows = {}
        for name, model in (("fp32", fp32), ("int8", int8)):
            bound = Bound(decode_rate(paths, model, workers), model_rate(model, args.batch_size))
            e2e, _ = end_to_end_rate([photos], model, args.batch_size, workers, writers=[create_writer("json")])
            rows[name] = (bound, e2e)

        pixels = np.stack([load_image(p, fp32.info.preprocess) for p in paths])
        fp32_dec, int8_dec = decisions(fp32, pixels), decisions(int8, pixels)
        int8_agreement = float((fp32_dec == int8_dec).mean())
        scores_gap = float(np.abs(np.concatenate([fp32.predict(pixels[i:i + 16]) for i in range(0, len(pixels), 16)])
                                  - np.concatenate([int8.predict(pixels[i:i + 16]) for i in range(0, len(pixels), 16)])).max())
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"machine: {cpu_name()}, {cpu_count()} cores; {args.backbone}; {args.photos} photos 4000x3000; "
          f"batch {args.batch_size}")
    print(f"PyTorch eager model-only          {eager:7.1f} images/s")
    print(f"plain open_clip script end-to-end {plain:7.1f} images/s")
    for name, (bound, e2e) in rows.items():
        print(f"tagger {name}: decode-only {bound.decode:6.1f}, model-only {bound.model:6.1f}, bound "
              f"{bound.rate:6.1f}, end-to-end {e2e:6.1f} images/s = {e2e / bound.rate:.2f} of bound, "
              f"{e2e / plain:.1f}x the plain script")
    print(f"ONNX fp32 vs PyTorch eager model-only: {rows['fp32'][0].model / eager:.1f}x")
    print(f"int8 vs fp32 tag decisions agree on {int8_agreement:.1%} (max score difference {scores_gap:.3f})")
    print(json.dumps({"plain": plain, "eager": eager, **{f"{k}_e2e": v[1] for k, v in rows.items()},
                      "int8_agreement": int8_agreement}))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
