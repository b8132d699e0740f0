"""Prompts for the tags: the hand-crafted "a photo of a {tag}." and the learnable contexts (CoOp style).

A prompt is `[SOS, ctx_1..ctx_M, tag tokens, ".", EOS, pad...]`. The contexts replace the embeddings of
"a photo of a" in that tokenization, so with the contexts at their initial value the prompt encoder is
exactly CLIP's `encode_text("a photo of a {tag}.")`.
"""
from __future__ import annotations

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool
from torch import nn

from tagger.labels import leaf

CTX_INIT = "a photo of a"
NULL_PROMPT = "a photo."  # names no tag: the reference every tag prompt is compared with


def prompt_text(tag: str, ctx_init: str = CTX_INIT) -> str:
    """`Animals|Dog` -> "a photo of a dog.": the prompt names the most specific level."""
    return f"{ctx_init} {leaf(tag).replace('_', ' ')}."


class TextEncoder(nn.Module):
    """CLIP's text transformer fed with prompt embeddings instead of token ids."""

    def __init__(self, clip: open_clip.CLIP):
        super().__init__()
        self.transformer = clip.transformer
        self.positional_embedding = clip.positional_embedding
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)
        self.pool_type = clip.text_pool_type
        self.eos_id = getattr(clip, "text_eos_id", None)

    def forward(self, embeddings: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """[C, L, W] prompt embeddings (+ their token ids, to find EOT) -> [C, D] unnormalized features."""
        cast = self.transformer.get_cast_dtype()
        length = embeddings.shape[1]
        attn_mask = self.attn_mask
        if self.pool_type == "argmax" and attn_mask is not None:
            # Attention is causal, so nothing after the last EOT reaches the pooled token: skip the
            # padding (~10x less work for short tags, the same numbers up to float rounding).
            length = int(token_ids.argmax(dim=-1).max()) + 1
            attn_mask = attn_mask[:length, :length]
        x = embeddings[:, :length].to(cast) + self.positional_embedding[:length].to(cast)
        x = self.transformer(x, attn_mask=attn_mask)
        x = self.ln_final(x)
        x = text_global_pool(x, token_ids[:, :length], self.pool_type, eos_token_id=self.eos_id)
        if self.text_projection is not None:
            x = self.text_projection(x) if isinstance(self.text_projection, nn.Linear) else x @ self.text_projection
        return x


class PromptLearner(nn.Module):
    """Two class-shared contexts of M vectors: `ctx_global` for the CLS view, `ctx_local` for patches."""

    def __init__(self, token_embedding: nn.Embedding, tokenizer, tags: list[str], ctx_init: str = CTX_INIT):
        super().__init__()
        token_ids = tokenizer([prompt_text(tag, ctx_init) for tag in tags])
        init_ids = tokenizer([ctx_init])[0]
        n_ctx = int((init_ids != 0).sum()) - 2  # minus SOS and EOS
        ctx_ids = init_ids[1:1 + n_ctx]
        if n_ctx < 1 or not torch.equal(token_ids[:, 1:1 + n_ctx], ctx_ids.expand(len(tags), -1)):
            raise ValueError("prompt learning needs a CLIP tokenizer that starts every prompt with "
                             f"[SOS, {ctx_init!r} tokens]")
        with torch.no_grad():
            weight = token_embedding.weight
            embedded = token_embedding(token_ids.to(weight.device)).float()
        self.n_ctx = n_ctx
        self.ctx_global = nn.Parameter(embedded[0, 1:1 + n_ctx].clone())
        self.ctx_local = nn.Parameter(embedded[0, 1:1 + n_ctx].clone())
        # Persistent: a saved run rebuilds its prompts without the 49k-row token embedding.
        self.register_buffer("ctx_init", embedded[0, 1:1 + n_ctx].clone())
        self.register_buffer("token_prefix", embedded[:, :1].clone())
        self.register_buffer("token_suffix", embedded[:, 1 + n_ctx:].clone())
        self.register_buffer("token_ids", token_ids.clone())

    def embeddings(self, ctx: torch.Tensor) -> torch.Tensor:
        """[C, L, W]: every tag's prompt with the given [M, W] context."""
        n = self.token_prefix.shape[0]
        return torch.cat([self.token_prefix, ctx.unsqueeze(0).expand(n, -1, -1).to(self.token_prefix.dtype),
                          self.token_suffix], dim=1)


@torch.no_grad()
def encode_text(clip: open_clip.CLIP, tokenizer, texts: list[str]) -> torch.Tensor:
    """[T, D] L2-normalized CLIP text embeddings of plain texts."""
    tokens = tokenizer(texts).to(next(clip.parameters()).device)
    return F.normalize(clip.encode_text(tokens).float(), dim=-1)


def encode_prompts(text: TextEncoder, prompts: PromptLearner, ctx: torch.Tensor) -> torch.Tensor:
    """[C, D] L2-normalized text embeddings of every tag's prompt with context `ctx`."""
    return F.normalize(text(prompts.embeddings(ctx), prompts.token_ids).float(), dim=-1)
