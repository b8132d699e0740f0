"""The free branch: a second copy of the image tower's last blocks that L_kd does not hold.

L_kd holds the tower's photo embedding near the pretrained one. That keeps what CLIP knew about the
rare tags and holds back the tags with many photos: every lighter distillation measured traded one for
the other (docs/training.md). With a free branch the model has both: the tower's first blocks are
shared, its last `blocks` blocks (and its final LayerNorm and projection) exist twice, and each copy
ends in its own tag scores (the prompts against its embedding, plus its own Query2Label head). Stage 1
trains each branch on its own BCE, L_kd on the held one only, and the model's logit is the mean of the
two. Both copies start as the pretrained blocks and both heads at zero, so the untrained model is still
exactly the zero-shot one.

The branch lives on the tower module (`visual.free_branch`), so everything that handles the tower (the
optimizer, WiSE-FT's mixes, EMA, checkpoints, the exported graph) handles it too; the teacher is copied
from the tower before the branch is added and has none.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

ATTRIBUTE = "free_branch"


class FreeBranch(nn.Module):
    def __init__(self, visual: nn.Module, blocks: int, head: nn.Module | None):
        super().__init__()
        resblocks = visual.transformer.resblocks
        if not 1 <= blocks <= len(resblocks):
            raise ValueError(f"a free branch copies 1 to {len(resblocks)} blocks of this tower, not {blocks}")
        self.blocks = copy.deepcopy(resblocks[len(resblocks) - blocks:])
        self.ln_post = copy.deepcopy(visual.ln_post)
        self.proj = nn.Parameter(visual.proj.detach().clone())
        self.head = head


def add_free_branch(visual: nn.Module, blocks: int, head: nn.Module | None) -> None:
    """Give `visual` (an open_clip VisionTransformer) a free branch over its last `blocks` blocks."""
    needed = ("_embeds", "_pool", "_global_pool", "final_ln_after_pool", "transformer", "ln_post", "proj")
    if any(not hasattr(visual, name) for name in needed) or visual.proj is None \
            or getattr(visual, "attn_pool", None) is not None:
        raise ValueError("a free branch needs an open_clip (>= 2.32) ViT tower with an output projection "
                         "and no attention pooling")
    setattr(visual, ATTRIBUTE, FreeBranch(visual, blocks, head))


def free_branch(visual: nn.Module) -> FreeBranch | None:
    return getattr(visual, ATTRIBUTE, None)


def branch_heads(visual: nn.Module, head: nn.Module | None) -> tuple[nn.Module | None, ...]:
    """The Query2Label head (or None) of each branch of `visual`, the held one's (`head`) first."""
    branch = free_branch(visual)
    return (head,) if branch is None else (head, branch.head)


def encode_both(visual: nn.Module, branch: FreeBranch, pixels: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pooled, tokens) of the held tower and of the free branch, as `visual(pixels)` returns them with
    `output_tokens`: pooled projected, tokens after the final LayerNorm, not projected.

    Both branches' blocks run before either projection: the int8 export keeps everything from the
    tower's projection on in fp32 (export.quantize), and the free blocks are tower compute to quantize.
    """
    transformer = visual.transformer
    x = visual._embeds(pixels)
    if not transformer.batch_first:
        x = x.transpose(0, 1)
    shared = len(transformer.resblocks) - len(branch.blocks)
    for block in transformer.resblocks[:shared]:
        x = block(x)
    free = x
    for block in transformer.resblocks[shared:]:
        x = block(x)
    for block in branch.blocks:
        free = block(free)
    if not transformer.batch_first:
        x, free = x.transpose(0, 1), free.transpose(0, 1)
    pooled, tokens = visual._pool(x)
    free_pooled, free_tokens = _pool_with(visual, branch.ln_post, free)
    return pooled @ visual.proj, tokens, free_pooled @ branch.proj, free_tokens


def _pool_with(visual: nn.Module, ln_post: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`visual._pool` with another final LayerNorm (the branch's own)."""
    if visual.final_ln_after_pool:
        pooled, tokens = visual._global_pool(x)
        return ln_post(pooled), tokens
    return visual._global_pool(ln_post(x))
