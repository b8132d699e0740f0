"""Validation: the student's features of cached photos, their tag scores, and mAP.

Scores go through `HPDVAL.logits` (the same `dual_view_logits` the exported graph runs) plus the
loss's class bias, so what validation ranks is what `tagger tag` will output.
"""
from __future__ import annotations

import numpy as np
import torch

from train.cache import ImageCache
from train.config import precision
from train.metrics import map_summary
from train.model import HPDVAL, normalize_pixels
from train.prepare import Prepared


FEATURE_FP16_BYTES = 1 << 30


@torch.no_grad()
def extract_features(model: HPDVAL, cache: ImageCache, indices: np.ndarray, batch_size: int,
                     device: torch.device, exact: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's (f_cls [N, D], f_patch [N, P, D]) on CPU for un-augmented cached photos, in the
    device's training precision or, `exact`, in the exported model's float32 (`config.precision`).

    Patch features of many photos are large (10,000 photos of ViT-B/16: 4 GB in float32), so past
    FEATURE_FP16_BYTES they are kept in float16 and cast back per batch.
    """
    model.eval()
    n_patches = model.student.grid_size[0] * model.student.grid_size[1] * len(model.heads())
    half = len(indices) * n_patches * model.text_hand.shape[1] * 4 > FEATURE_FP16_BYTES
    cls_parts, patch_parts = [], []
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        pixels = normalize_pixels(torch.from_numpy(cache.get(chunk)).to(device), model.mean, model.std)
        with precision(device, exact):
            f_cls, f_patch, _ = model.encode(pixels)
        cls_parts.append(f_cls.float().cpu())
        patch_parts.append(f_patch.to(torch.float16 if half else torch.float32).cpu())
    d = model.text_hand.shape[1]
    if not cls_parts:
        return torch.zeros(0, d), torch.zeros(0, 1, d)
    return torch.cat(cls_parts), torch.cat(patch_parts)


@torch.no_grad()
def scores_from_features(model: HPDVAL, f_cls: torch.Tensor, f_patch: torch.Tensor, device: torch.device,
                         batch_size: int = 256) -> np.ndarray:
    P_G, P_L = model.text_features()
    out = []
    for start in range(0, len(f_cls), batch_size):
        z = model.logits(f_cls[start:start + batch_size].to(device), f_patch[start:start + batch_size].to(device),
                         P_G, P_L)
        out.append(torch.sigmoid(z + model.class_bias).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, len(model.labels)), np.float32)


def photo_scores(model: HPDVAL, data: Prepared, indices: np.ndarray, device: torch.device, batch_size: int,
                 exact: bool = False) -> np.ndarray:
    """Scores [N, C] of the cached photos `indices`, as validation scores them."""
    return cache_scores(model, data.cache, indices, device, batch_size, exact)


def cache_scores(model: HPDVAL, cache: ImageCache, indices: np.ndarray, device: torch.device, batch_size: int,
                 exact: bool = False) -> np.ndarray:
    """Scores [N, C] of rows `indices` of any photo cache (the labelled photos', or another)."""
    return scores_from_features(model, *extract_features(model, cache, indices, batch_size, device, exact), device)


def evaluate(model: HPDVAL, data: Prepared, device: torch.device, batch_size: int,
             features: tuple[torch.Tensor, torch.Tensor] | None = None, exact: bool = False) -> tuple[dict, np.ndarray]:
    """Validation mAP summary and the scores [N_val, C]; `exact` as in `extract_features`."""
    if features is None:
        features = extract_features(model, data.cache, data.val_idx, batch_size, device, exact)
    scores = scores_from_features(model, *features, device)
    summary = map_summary(scores, data.targets[data.val_idx], data.targets[data.train_idx].sum(axis=0))
    return summary, scores
