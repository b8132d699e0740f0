"""A Query2Label head (Liu et al. 2021) on the CLIP student: one query per tag probes the photo's tokens.

Each tag's query attends over the photo's projected, L2-normalised tokens (the CLS embedding and the
patches) through a small Transformer decoder (self-attention among the tag queries, then cross-attention
to the tokens, then a feed-forward layer, pre-norm), and a per-tag linear classifier reads the result.

Two choices that plain Q2L does not make, both so that the head starts from CLIP's knowledge:
- the queries start at the tags' prompt embeddings (`a photo of a {tag}.`), so a rare tag's query knows
  what to look for before it has seen a photo of it;
- the head's logit is a *residual* added to the dual-view logit, and its classifier starts at zero: the
  untrained model scores exactly as zero-shot CLIP does, training grows the head from there, and the
  never-worse-than-untrained selection keeps its meaning.

Attention is written with plain matmuls and a softmax (no fused kernels), so the ONNX export and its int8
variant see ordinary MatMul/Softmax nodes.
"""
from __future__ import annotations

import math

import torch
from torch import nn

HEADS = ("dual-view", "q2l")  # `tagger train --head`: the dual view alone, or with this head's residual


class Attention(nn.Module):
    """Multi-head attention of queries [B, Q, D] over keys/values [B, K, D]."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"the head's width {dim} is not a multiple of its {heads} attention heads")
        self.heads = heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """x and memory may differ in batch size where one of them is 1 (broadcast)."""
        h, d_h = self.heads, x.shape[-1] // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:  # [B, T, D] -> [B, H, T, D/H]
            return t.reshape(t.shape[0], t.shape[1], h, d_h).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(memory)), split(self.v(memory))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d_h), dim=-1)
        mixed = (weights @ v).transpose(1, 2)
        return self.out(mixed.reshape(mixed.shape[0], mixed.shape[1], h * d_h))


class DecoderLayer(nn.Module):
    """Pre-norm: queries attend to each other (label co-occurrence), then to the tokens, then an MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2):
        super().__init__()
        self.norm_self, self.norm_cross, self.norm_memory, self.norm_mlp = (nn.LayerNorm(dim) for _ in range(4))
        self.self_attn = Attention(dim, heads)
        self.cross_attn = Attention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        x = self.norm_self(queries)
        queries = queries + self.self_attn(x, x)
        queries = queries + self.cross_attn(self.norm_cross(queries), self.norm_memory(memory))
        return queries + self.mlp(self.norm_mlp(queries))


class Q2LHead(nn.Module):
    """Per-tag residual logits [B, C] from the student's tokens; exactly zero until it is trained."""

    def __init__(self, tag_embeddings: torch.Tensor, layers: int = 1, heads: int = 4):
        super().__init__()
        n_tags, dim = tag_embeddings.shape
        self.queries = nn.Parameter(tag_embeddings.detach().float().clone())
        self.layers = nn.ModuleList(DecoderLayer(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Parameter(torch.zeros(n_tags, dim))

    def forward(self, f_cls: torch.Tensor, f_patch: torch.Tensor) -> torch.Tensor:
        """f_cls [B, D] and f_patch [B, N, D], L2-normalised (`train.model.encode_image`)."""
        memory = torch.cat([f_cls.unsqueeze(1), f_patch], dim=1)
        # One copy of the queries [1, C, D], not one per photo: the first layer's self-attention then
        # reads only weights, so ONNX Runtime folds it into a constant at load time and a photo pays for
        # the cross-attention and the MLP alone; the batch dimension appears when the photo's tokens do.
        x = self.queries.to(memory.dtype).unsqueeze(0)
        for layer in self.layers:
            x = layer(x, memory)
        return (self.norm(x) * self.classifier.to(x.dtype)).sum(dim=-1)
