"""A model from plain CLIP and the user's tag names: tagging before any training.

Calibration without validation data. Raw CLIP cosines sit in a narrow band (about 0.15–0.35) whose
position moves with the backbone, the weights and the tag, so no fixed threshold on them means
anything. Instead each tag prompt competes with a tag-free null prompt:

    score_c = sigmoid(γ·(f·P_c − f·P_null))   with P_c = "a photo of a {tag}.", P_null = "a photo."

which is CLIP's own two-way softmax between the two prompts at the temperature CLIP was trained with
(γ = exp(logit_scale), 100 for released weights). It is backbone-independent, and the threshold 0.5
has a meaning: the photo matches "a photo of a dog." better than "a photo.". It fits the graph
unchanged, because f·P_c − f·P_null = f·(P_c − P_null): the graph's P_G = P_L = P_H − P_null (not
unit length, on purpose) with γ = CLIP's scale and υ = 0.

α defaults to 1 (global view only): the zero-shot baseline the HP-DVAL paper compares against is the
CLS score, and the last layer's patch tokens of an untuned CLIP are poorly aligned with text (MaskCLIP,
Zhou et al. 2022) — stage 1 training is what aligns them.
"""
from __future__ import annotations

import datetime

import torch

from train.backbone import LoadedClip, token_tower
from train.model import ExportParts, default_topk
from train.prompts import NULL_PROMPT, encode_text, prompt_text

THRESHOLD = 0.5  # tag prompt and null prompt tie
ZERO_SHOT_ALPHA = 1.0


@torch.no_grad()
def zero_shot_parts(clip: LoadedClip, labels: list[str], alpha: float = ZERO_SHOT_ALPHA,
                    topk: int | None = None) -> ExportParts:
    """ExportParts for plain CLIP: the student is CLIP's own visual tower, prompts are hand-crafted."""
    visual = token_tower(clip.model.visual.eval())
    P_H = encode_text(clip.model, clip.tokenizer, [prompt_text(tag) for tag in labels])
    P_null = encode_text(clip.model, clip.tokenizer, [NULL_PROMPT])
    direction = (P_H - P_null).cpu()
    n_patches = visual.grid_size[0] * visual.grid_size[1]
    return ExportParts(
        visual=visual, P_G=direction, P_L=direction.clone(), alpha=float(alpha),
        topk=min(topk or default_topk(n_patches), n_patches),
        logit_scale=float(clip.model.logit_scale.exp()), class_bias=torch.zeros(len(labels)),
        mean=tuple(clip.mean), std=tuple(clip.std), image_size=clip.preprocess.size,
    )


def zero_shot_summary(clip: LoadedClip, labels: list[str], name: str, alpha: float) -> dict:
    """`tagger.model` for a zero-shot model: no training, and how its scores are calibrated."""
    return {
        "name": name,
        "backbone": clip.name,
        "pretrained": clip.pretrained,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "kind": "zero-shot",
        "prompt": prompt_text("{tag}"),
        "calibration": f"two-way softmax of each tag prompt against {NULL_PROMPT!r} at CLIP's temperature; "
                       f"threshold {THRESHOLD} = the tag prompt wins",
        "alpha": alpha,
        "training": {"images": 0, "note": "zero-shot: no training data, thresholds not calibrated on photos"},
    }
