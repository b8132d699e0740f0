"""HP-DVAL (DESIGN.md §6): a CLIP student scored against tag prompts in a global and a local view.

Raw CLIP cosines carry a per-photo offset: some photos sit closer to every prompt than others, so
ranking photos by one tag's raw cosine mixes "this photo shows a dog" with "this photo is close to
all text". Each view's scores are therefore normalised per photo before the per-tag bias, over the
tags plus one tag-free reference prompt ("a photo."), so a one-tag vocabulary stays meaningful:
`center` subtracts their mean (shift-invariant, like CLIP's softmax over classes), `l2` divides by
their L2 norm (the official HP-DVAL code), `none` keeps raw cosines (the paper).

`score_images` is the one PyTorch definition of the inference graph; `export/` wraps it for ONNX, the
trainer's validation goes through the same `dual_view_logits`, so training, export and runtime agree.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from train.backbone import LoadedClip, token_tower
from train.free_branch import add_free_branch, branch_heads, encode_both, free_branch
from train.prompts import CTX_INIT, NULL_PROMPT, PromptLearner, TextEncoder, encode_prompts, encode_text
from train.q2l import HEADS, Q2LHead

TOPK_FRACTION = 0.16  # k ≈ 16% of the patches: 32 of 196 (B/16), 8 of 49 (B/32)
# How a view's per-tag scores are made comparable across photos before the per-tag bias (module doc).
SCORE_NORMS = ("center", "l2", "none")
MAX_LOGIT_SCALE = 100.0  # CLIP clamps its learned temperature here too


@dataclass
class HPDVALConfig:
    alpha: float = 1.0  # weight of the global (CLS) view; 1 − alpha goes to the local (patch) view (paper: 0.4)
    topk: int | None = None  # patches pooled per tag in the local view; None: 16% of the patches
    ctx_init: str = CTX_INIT  # the M = 4 context vectors start as this phrase's token embeddings
    logit_scale_init: float | None = None  # γ (logits are γ·s); None: CLIP's own learned temperature
    score_norm: str = "center"  # per-photo normalisation of each view's scores: center | l2 | none
    head: str = "dual-view"  # "q2l": add a Query2Label head's residual logit (train.q2l)
    head_layers: int = 1  # decoder layers of the q2l head
    free_blocks: int = 0  # the tower's last N blocks get a copy L_kd does not hold (train.free_branch); 0: none


@dataclass
class ExportParts:
    """What the inference graph needs, detached from training.

    `visual` is the student tower with `output_tokens=True`: it returns `(pooled, tokens)` where
    pooled = CLS after `ln_post @ proj` and tokens = patch tokens after `ln_post` but NOT projected;
    `score_images` applies `visual.proj` to the tokens itself. It shares weights with the model.
    """

    visual: nn.Module
    P_G: torch.Tensor  # [C, D] L2-normalized global-view tag embeddings
    P_L: torch.Tensor  # [C, D] L2-normalized local-view tag embeddings
    alpha: float
    topk: int
    logit_scale: float  # γ
    class_bias: torch.Tensor  # [C] added to the logit before the sigmoid: the loss's υ + the learned tag bias
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int
    score_norm: str = "none"
    P_ref: torch.Tensor | None = None  # [R, D] reference prompts joining the per-photo normalisation
    head: nn.Module | None = None  # train.q2l.Q2LHead: its residual logit is added before the bias


def default_topk(n_patches: int) -> int:
    return max(1, round(TOPK_FRACTION * n_patches))


def normalize_pixels(images_uint8_nhwc: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 [B, S, S, 3] -> normalized float [B, 3, S, S]: the model-side half of preprocessing."""
    x = images_uint8_nhwc.to(torch.float32) / 255.0
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=x.device)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=x.device)
    return ((x - mean_t) / std_t).permute(0, 3, 1, 2)


def standardize(pixels01_nchw: torch.Tensor, mean, std) -> torch.Tensor:
    """float [B, 3, S, S] in [0, 1] (augmented pixels) -> normalized, as `normalize_pixels` does."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=pixels01_nchw.device).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=pixels01_nchw.device).view(1, 3, 1, 1)
    return (pixels01_nchw - mean_t) / std_t


def encode_image(visual: nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(f_cls [B, D], f_patch [B, N, D], both L2-normalized; pooled [B, D] unnormalized, for L_kd).

    A tower with a free branch (train.free_branch) gives both branches' features on a branch axis:
    f_cls [B, 2, D] and f_patch [B, 2, N, D], held branch first; pooled is the held branch's.
    """
    branch = free_branch(visual)
    if branch is None:
        pooled, tokens = visual(pixels)
        return F.normalize(pooled, dim=-1), F.normalize(tokens @ visual.proj, dim=-1), pooled
    pooled, tokens, free_pooled, free_tokens = encode_both(visual, branch, pixels)
    f_cls = torch.stack([F.normalize(pooled, dim=-1), F.normalize(free_pooled, dim=-1)], dim=1)
    f_patch = torch.stack([F.normalize(tokens @ visual.proj, dim=-1),
                           F.normalize(free_tokens @ branch.proj, dim=-1)], dim=1)
    return f_cls, f_patch, pooled


def normalize_scores(scores: torch.Tensor, norm: str) -> torch.Tensor:
    """[B, C + R] scores of the tags and the R reference prompts -> the tags' [B, C], normalised per photo."""
    if norm == "center":
        return scores - scores.mean(dim=-1, keepdim=True)
    if norm == "l2":
        return scores / scores.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    if norm == "none":
        return scores
    raise ValueError(f"score_norm must be one of {', '.join(SCORE_NORMS)}, not {norm!r}")


def dual_view_logits(f_cls: torch.Tensor, f_patch: torch.Tensor, P_G: torch.Tensor, P_L: torch.Tensor,
                     alpha: float, topk: int, logit_scale: torch.Tensor | float, score_norm: str = "none",
                     P_ref: torch.Tensor | None = None) -> torch.Tensor:
    """z = γ·(α·n(s_G) + (1−α)·n(s_L)): s_G = f_cls·P_Gᵀ, s_L = mean of the top-k patches of f_patch·P_Lᵀ,
    n the per-photo normalisation over the tags and the reference prompts P_ref (which are then dropped)."""
    n_tags = P_G.shape[0]
    if P_ref is not None and score_norm != "none":
        P_G = torch.cat([P_G, P_ref.to(P_G.dtype)])
        P_L = torch.cat([P_L, P_ref.to(P_L.dtype)])
    s_global = normalize_scores(f_cls @ P_G.t(), score_norm)[:, :n_tags]
    patch_scores = f_patch @ P_L.t()  # [B, N, C + R]
    s_local = normalize_scores(torch.topk(patch_scores, topk, dim=1).values.mean(dim=1), score_norm)[:, :n_tags]
    return logit_scale * (alpha * s_global + (1.0 - alpha) * s_local)


def branch_logits(f_cls: torch.Tensor, f_patch: torch.Tensor, P_G: torch.Tensor, P_L: torch.Tensor, alpha: float,
                  topk: int, logit_scale: torch.Tensor | float, score_norm: str, P_ref: torch.Tensor | None,
                  heads: tuple[nn.Module | None, ...]) -> list[torch.Tensor]:
    """Each branch's logits [B, C] before any bias: the dual view plus the branch's Query2Label head.
    One branch: f_cls [B, D], f_patch [B, N, D]; with a free branch, a branch axis after the batch one
    (`encode_image`) and one head per branch."""
    if f_cls.dim() == 2:
        f_cls, f_patch = f_cls.unsqueeze(1), f_patch.unsqueeze(1)
    out = []
    for b, head in enumerate(heads):
        z = dual_view_logits(f_cls[:, b], f_patch[:, b], P_G, P_L, alpha, topk, logit_scale, score_norm, P_ref)
        out.append(z if head is None else z + head(f_cls[:, b], f_patch[:, b]))
    return out


def tag_logits(*args, **kwargs) -> torch.Tensor:
    """The model's logits [B, C] before any bias: the mean of its branches' (`branch_logits`)."""
    branches = branch_logits(*args, **kwargs)
    return branches[0] if len(branches) == 1 else torch.stack(branches).mean(dim=0)


class HPDVAL(nn.Module):
    """Student/teacher visual towers, frozen text encoder, learnable contexts, γ and tag bias; class bias υ."""

    def __init__(self, clip: LoadedClip, labels: list[str], class_bias: torch.Tensor | None = None,
                 config: HPDVALConfig | None = None, teacher: bool = True):
        super().__init__()
        config = config or HPDVALConfig()
        self.labels = list(labels)
        self.config = config
        self.mean, self.std = tuple(clip.mean), tuple(clip.std)
        self.image_size = clip.preprocess.size

        self.student = token_tower(clip.model.visual)
        # The teacher only serves L_kd in stage 1; a loaded run (inference, export) has none.
        self.teacher = copy.deepcopy(self.student).requires_grad_(False).eval() if teacher else None
        self.text = TextEncoder(clip.model).requires_grad_(False)
        self.prompts = PromptLearner(clip.model.token_embedding, clip.tokenizer, self.labels, config.ctx_init)

        n_patches = self.student.grid_size[0] * self.student.grid_size[1]
        self.topk = min(config.topk or default_topk(n_patches), n_patches)
        self.alpha = float(config.alpha)
        if config.score_norm not in SCORE_NORMS:
            raise ValueError(f"score_norm must be one of {', '.join(SCORE_NORMS)}, not {config.score_norm!r}")
        self.score_norm = config.score_norm
        scale = config.logit_scale_init
        if scale is None:
            scale = min(float(clip.model.logit_scale.detach().exp()), MAX_LOGIT_SCALE)
        self.logit_scale = nn.Parameter(torch.tensor(float(scale)))
        bias = torch.zeros(len(self.labels)) if class_bias is None else torch.as_tensor(class_bias).float()
        if bias.shape != (len(self.labels),):
            raise ValueError(f"class_bias must have one value per tag ({len(self.labels)}), got {tuple(bias.shape)}")
        self.register_buffer("class_bias", bias.clone())
        # A learned per-tag offset on the logit: it absorbs each tag's prior, so the image tower is not
        # pushed to make every photo look unlike rare tags. The trainer starts it at the tag's prior.
        self.tag_bias = nn.Parameter(torch.zeros(len(self.labels)))
        with torch.no_grad():
            # P_H through the prompt path with the initial context == encode_text("a photo of a {tag}.")
            self.register_buffer("text_hand", encode_prompts(self.text, self.prompts, self.prompts.ctx_init))
            self.register_buffer("text_null", encode_text(clip.model, clip.tokenizer, [NULL_PROMPT]))
        if config.head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, not {config.head!r}")
        self.head = self._new_head()
        if config.free_blocks:  # after the teacher's copy of the tower: the teacher has no free branch
            add_free_branch(self.student, config.free_blocks, self._new_head())

    # -- text side ---------------------------------------------------------------------------------
    def text_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(P_G, P_L) from the learned contexts, each [C, D] L2-normalized."""
        return (encode_prompts(self.text, self.prompts, self.prompts.ctx_global),
                encode_prompts(self.text, self.prompts, self.prompts.ctx_local))

    def consistency_loss(self, P_G: torch.Tensor, P_L: torch.Tensor, branch: str = "global") -> torch.Tensor:
        """L_sc = mean |P_learned − P_H|: the paper ties the global prompts, the official code the local."""
        learned = P_G if branch == "global" else P_L
        return (learned.float() - self.text_hand).abs().mean()

    # -- image side --------------------------------------------------------------------------------
    def encode(self, pixels: torch.Tensor, tower: str = "student"):
        return encode_image(self.student if tower == "student" else self.teacher, pixels)

    def logits(self, f_cls: torch.Tensor, f_patch: torch.Tensor, P_G: torch.Tensor, P_L: torch.Tensor) -> torch.Tensor:
        """Logits z [B, C] before the loss's class bias υ (the learned tag bias is in): the mean of the
        branches' (`branch_logits`)."""
        return tag_logits(*self._logit_args(f_cls, f_patch, P_G, P_L)) + self.tag_bias

    def branch_logits(self, f_cls: torch.Tensor, f_patch: torch.Tensor, P_G: torch.Tensor, P_L: torch.Tensor
                      ) -> list[torch.Tensor]:
        """Each branch's logits [B, C] (held branch first), tag bias in: what stage 1 trains, one loss each."""
        return [z + self.tag_bias for z in branch_logits(*self._logit_args(f_cls, f_patch, P_G, P_L))]

    def _logit_args(self, f_cls, f_patch, P_G, P_L) -> tuple:
        return (f_cls.float(), f_patch.float(), P_G.float(), P_L.float(), self.alpha, self.topk, self.logit_scale,
                self.score_norm, self.text_null, self.heads())

    def heads(self) -> tuple[nn.Module | None, ...]:
        """One Query2Label head (or None) per branch, held branch first."""
        return branch_heads(self.student, self.head)

    def _new_head(self) -> Q2LHead | None:
        dim = self.text_hand.shape[1]
        return (Q2LHead(self.text_hand, layers=self.config.head_layers, heads=max(1, dim // 64))
                if self.config.head == "q2l" else None)

    def init_tag_bias(self, class_counts, n_images: int, mean_logits: torch.Tensor | None = None) -> None:
        """Start each tag's logit, on an average training photo, at the tag's log prior odds.

        `mean_logits` [C] is γ·score averaged over training photos (before any bias): subtracting it
        matters where scores are not centred (raw cosines times CLIP's temperature of 100 sit near +30,
        where the sigmoid saturates to 1.0 for every photo and the ranking is lost).
        """
        counts = torch.as_tensor(class_counts, dtype=torch.float64).clamp(0.5, max(n_images - 0.5, 0.5))
        prior_logit = (torch.log(counts / (n_images - counts).clamp_min(0.5))).float()
        offset = torch.zeros_like(prior_logit) if mean_logits is None else mean_logits.detach().float().cpu()
        with torch.no_grad():
            self.tag_bias.copy_((prior_logit - offset - self.class_bias.cpu()).to(self.tag_bias.device))

    # -- stages --------------------------------------------------------------------------------------
    def stage_parameters(self, stage: int) -> list[nn.Parameter]:
        """Stage 1 trains the student tower, γ, the tag bias and the head; stage 2 the two contexts and the tag bias."""
        if stage == 1:
            head = [] if self.head is None else list(self.head.parameters())
            return [*self.student.parameters(), self.logit_scale, self.tag_bias, *head]
        if stage == 2:
            return [self.prompts.ctx_global, self.prompts.ctx_local, self.tag_bias]
        raise ValueError(f"no stage {stage}")

    def set_stage(self, stage: int) -> list[nn.Parameter]:
        """Freeze everything but the stage's parameters; returns them for the optimizer."""
        self.requires_grad_(False)
        params = self.stage_parameters(stage)
        for param in params:
            param.requires_grad_(True)
        return params

    def inference_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything but the teacher (rebuilt from the backbone when training resumes)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("teacher.")}

    @torch.no_grad()
    def export_parts(self) -> ExportParts:
        P_G, P_L = self.text_features()
        return ExportParts(
            visual=self.student, P_G=P_G.detach().clone(), P_L=P_L.detach().clone(),
            alpha=self.alpha, topk=self.topk, logit_scale=float(self.logit_scale.detach()),
            class_bias=(self.class_bias + self.tag_bias).detach().clone(), mean=self.mean, std=self.std,
            image_size=self.image_size, score_norm=self.score_norm, P_ref=self.text_null.detach().clone(),
            head=self.head,
        )


def score_images(parts: ExportParts, images_uint8_nhwc: torch.Tensor) -> torch.Tensor:
    """sigmoid(γ·(α·n(s_G) + (1−α)·n(s_L)) + bias) for uint8 [B, S, S, 3] RGB images -> float32 [B, C]."""
    pixels = normalize_pixels(images_uint8_nhwc, parts.mean, parts.std)
    f_cls, f_patch, _ = encode_image(parts.visual, pixels)
    P_G = parts.P_G.to(f_cls.dtype)
    P_L = parts.P_L.to(f_cls.dtype)
    P_ref = None if parts.P_ref is None else parts.P_ref.to(f_cls.dtype)
    logits = tag_logits(f_cls, f_patch, P_G, P_L, parts.alpha, parts.topk, parts.logit_scale, parts.score_norm,
                        P_ref, branch_heads(parts.visual, parts.head))
    return torch.sigmoid(logits + parts.class_bias.to(logits.dtype))
