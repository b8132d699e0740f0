"""HP-DVAL (DESIGN.md §6): a CLIP student scored against tag prompts in a global and a local view.

`score_images` is the one PyTorch definition of the inference graph; `export/` wraps it for ONNX, the
trainer's validation goes through the same `dual_view_logits`, so training, export and runtime agree.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from train.backbone import LoadedClip
from train.prompts import CTX_INIT, PromptLearner, TextEncoder, encode_prompts

TOPK_FRACTION = 0.16  # k ≈ 16% of the patches: 32 of 196 (B/16), 8 of 49 (B/32)


@dataclass
class HPDVALConfig:
    alpha: float = 0.4  # weight of the global (CLS) view; 1 − alpha goes to the local (patch) view
    topk: int | None = None  # patches pooled per tag in the local view; None: 16% of the patches
    ctx_init: str = CTX_INIT  # the M = 4 context vectors start as this phrase's token embeddings
    logit_scale_init: float = 20.0  # γ: logits are γ·s for cosine scores s in [−1, 1]


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
    class_bias: torch.Tensor  # [C] υ, added to the logit before the sigmoid (zeros for bce/asl)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int


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
    """(f_cls [B, D], f_patch [B, N, D], both L2-normalized; pooled [B, D] unnormalized, for L_kd)."""
    pooled, tokens = visual(pixels)
    f_cls = F.normalize(pooled, dim=-1)
    f_patch = F.normalize(tokens @ visual.proj, dim=-1)
    return f_cls, f_patch, pooled


def dual_view_logits(f_cls: torch.Tensor, f_patch: torch.Tensor, P_G: torch.Tensor, P_L: torch.Tensor,
                     alpha: float, topk: int, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """z = γ·(α·s_G + (1−α)·s_L): s_G = f_cls·P_Gᵀ, s_L = mean of the top-k patches of f_patch·P_Lᵀ."""
    s_global = f_cls @ P_G.t()
    patch_scores = f_patch @ P_L.t()  # [B, N, C]
    s_local = torch.topk(patch_scores, topk, dim=1).values.mean(dim=1)
    return logit_scale * (alpha * s_global + (1.0 - alpha) * s_local)


class HPDVAL(nn.Module):
    """Student/teacher visual towers, frozen text encoder, learnable contexts and γ, class bias υ."""

    def __init__(self, clip: LoadedClip, labels: list[str], class_bias: torch.Tensor | None = None,
                 config: HPDVALConfig | None = None, teacher: bool = True):
        super().__init__()
        config = config or HPDVALConfig()
        self.labels = list(labels)
        self.config = config
        self.mean, self.std = tuple(clip.mean), tuple(clip.std)
        self.image_size = clip.preprocess.size

        self.student = clip.model.visual
        self.student.output_tokens = True
        # The teacher only serves L_kd in stage 1; a loaded run (inference, export) has none.
        self.teacher = copy.deepcopy(self.student).requires_grad_(False).eval() if teacher else None
        self.text = TextEncoder(clip.model).requires_grad_(False)
        self.prompts = PromptLearner(clip.model.token_embedding, clip.tokenizer, self.labels, config.ctx_init)

        n_patches = self.student.grid_size[0] * self.student.grid_size[1]
        self.topk = min(config.topk or default_topk(n_patches), n_patches)
        self.alpha = float(config.alpha)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))
        bias = torch.zeros(len(self.labels)) if class_bias is None else torch.as_tensor(class_bias).float()
        if bias.shape != (len(self.labels),):
            raise ValueError(f"class_bias must have one value per tag ({len(self.labels)}), got {tuple(bias.shape)}")
        self.register_buffer("class_bias", bias.clone())
        with torch.no_grad():
            # P_H through the prompt path with the initial context == encode_text("a photo of a {tag}.")
            self.register_buffer("text_hand", encode_prompts(self.text, self.prompts, self.prompts.ctx_init))

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
        return dual_view_logits(f_cls.float(), f_patch.float(), P_G.float(), P_L.float(),
                                self.alpha, self.topk, self.logit_scale)

    def forward(self, pixels: torch.Tensor, prompts: str = "learned") -> torch.Tensor:
        """Logits z [B, C] (before υ) for normalized pixels; prompts "hand" uses P_H in both views."""
        f_cls, f_patch, _ = self.encode(pixels)
        P_G, P_L = (self.text_hand, self.text_hand) if prompts == "hand" else self.text_features()
        return self.logits(f_cls, f_patch, P_G, P_L)

    @torch.no_grad()
    def scores(self, images_uint8_nhwc: torch.Tensor) -> torch.Tensor:
        """Tag scores in [0, 1] for uint8 NHWC images: the runtime's output."""
        return score_images(self.export_parts(), images_uint8_nhwc)

    # -- stages --------------------------------------------------------------------------------------
    def stage_parameters(self, stage: int) -> list[nn.Parameter]:
        """Stage 1 trains the student tower and γ; stage 2 only the two contexts."""
        if stage == 1:
            return [*self.student.parameters(), self.logit_scale]
        if stage == 2:
            return [self.prompts.ctx_global, self.prompts.ctx_local]
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
            class_bias=self.class_bias.detach().clone(), mean=self.mean, std=self.std,
            image_size=self.image_size,
        )


def score_images(parts: ExportParts, images_uint8_nhwc: torch.Tensor) -> torch.Tensor:
    """sigmoid(γ·(α·s_G + (1−α)·s_L) + υ) for uint8 [B, S, S, 3] RGB images -> float32 [B, C]."""
    pixels = normalize_pixels(images_uint8_nhwc, parts.mean, parts.std)
    f_cls, f_patch, _ = encode_image(parts.visual, pixels)
    P_G = parts.P_G.to(f_cls.dtype)
    P_L = parts.P_L.to(f_cls.dtype)
    logits = dual_view_logits(f_cls, f_patch, P_G, P_L, parts.alpha, parts.topk, parts.logit_scale)
    return torch.sigmoid(logits + parts.class_bias.to(logits.dtype))
