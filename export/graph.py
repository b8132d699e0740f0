"""The inference graph as an nn.Module: `train.model.score_images` over a run's ExportParts.

The math lives only in `score_images`; this wrapper exists so torch.export sees the tag embeddings
and the class bias as the module's buffers (ONNX initializers) rather than as stray tensor constants.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from train.backbone import token_tower
from train.model import ExportParts, score_images


class ScoringGraph(nn.Module):
    """uint8 [B, S, S, 3] RGB -> float32 scores [B, C] in [0, 1]."""

    def __init__(self, parts: ExportParts):
        super().__init__()
        self.visual = token_tower(parts.visual.eval())
        self.register_buffer("P_G", parts.P_G.detach().float().clone())
        self.register_buffer("P_L", parts.P_L.detach().float().clone())
        self.register_buffer("class_bias", parts.class_bias.detach().float().clone())
        self.register_buffer("P_ref", None if parts.P_ref is None else parts.P_ref.detach().float().clone())
        self.head = None if parts.head is None else parts.head.eval()
        self.parts = parts

    @property
    def image_size(self) -> int:
        return self.parts.image_size

    @property
    def num_tags(self) -> int:
        return self.P_G.shape[0]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        parts = dataclasses.replace(self.parts, visual=self.visual, P_G=self.P_G, P_L=self.P_L,
                                    class_bias=self.class_bias, P_ref=self.P_ref, head=self.head)
        return score_images(parts, image)
