"""Generated camera-like photos for benchmarks: 12 MP JPEGs with smooth structure and sensor noise.

Pure noise would make JPEGs unrealistically large and slow to decode; flat colour unrealistically
fast. These land near a real phone photo's 3-5 MB.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter


def make_photo(path: Path, seed: int, size: tuple[int, int] = (4000, 3000), quality: int = 90) -> Path:
    rng = np.random.default_rng(seed)
    width, height = size
    coarse = rng.integers(0, 256, (height // 100, width // 100, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)
    detail = Image.fromarray(rng.integers(0, 256, (height // 4, width // 4, 3), dtype=np.uint8))
    detail = detail.filter(ImageFilter.GaussianBlur(1)).resize(size, Image.Resampling.BILINEAR)
    img = Image.blend(img, detail, 0.25)
    noise = rng.normal(0, 6, (height, width, 1)).astype(np.int16)
    pixels = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=quality)
    return path


def photo_folder(folder: Path, count: int, size: tuple[int, int] = (4000, 3000)) -> list[Path]:
    """`count` photos in `folder`, generated once and reused by later runs."""
    paths = [folder / f"IMG_{i:04}.jpg" for i in range(count)]
    for i, path in enumerate(paths):
        if not path.exists():
            make_photo(path, seed=i, size=size)
    return paths
