"""Multi-label classification losses: BCE (default), DB*, DB, the official code's DB, ASL (DESIGN.md §6).

Every loss takes the model's logits z [B, C] (before the class bias) and 0/1 targets y [B, C], and
exposes `class_bias` υ [C]: the shift it applies to the logits, which the model adds again at inference
(`sigmoid(z + υ)`), so the exported scores are the probabilities the loss trained.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LOSSES = ("bce", "dbstar", "db", "db-official", "asl")


@dataclass
class DBConfig:
    alpha_r: float = 0.1  # floor of the rebalancing weight r
    beta: float = 10.0  # steepness of the sigmoid mapping in r
    mu: float = 0.2  # centre of that mapping (0.3 in the DB paper's VOC setting)
    kappa: float = 0.05  # strength of the class-prior bias υ
    neg_scale: float = 2.0  # λ: negative logits scaled by λ, their loss by 1/λ (5 for VOC)
    focal_gamma: float = 2.0  # element-wise focal exponent
    pos_scale: float = 1.0  # positive logits scaled by this (the official code: 5 for COCO, 10 for VOC)
    balance: float = 1.0  # constant factor on the whole loss (the official code: 2)
    bias_over_neg_scale: bool = False  # υ divided by λ, as the official code initialises it


# The DB loss as the official HP-DVAL code configures it for COCO-LT (LMPT's settings).
OFFICIAL_DB = DBConfig(mu=0.2, kappa=0.05, neg_scale=2.0, pos_scale=5.0, balance=2.0, bias_over_neg_scale=True)


def class_bias(class_counts, n_images: int, kappa: float = 0.05) -> torch.Tensor:
    """υ_c = −κ·log(N/n_c − 1): a rare tag starts with a lower logit, as its prior says.

    n_c is kept within [0.5, N − 0.5] so a tag on no image or on every image stays finite.
    """
    counts = torch.as_tensor(class_counts, dtype=torch.float64).clamp(0.5, max(n_images - 0.5, 0.5))
    ratio = (n_images / counts - 1.0).clamp_min(1e-6)
    return (-kappa * torch.log(ratio)).float()


class DBLoss(nn.Module):
    """Distribution-balanced loss; `head_weight=True` is DB*, with w_c = n_c / max n on positives."""

    def __init__(self, class_counts, n_images: int, head_weight: bool = True, config: DBConfig | None = None):
        super().__init__()
        self.config = config or DBConfig()
        counts = torch.as_tensor(class_counts, dtype=torch.float32)
        self.register_buffer("freq_inv", 1.0 / counts.clamp_min(1.0))
        bias = class_bias(counts, n_images, self.config.kappa)
        self.register_buffer("class_bias", bias / self.config.neg_scale if self.config.bias_over_neg_scale else bias)
        weight = counts / counts.max().clamp_min(1.0) if head_weight else torch.ones_like(counts)
        self.register_buffer("pos_weight", weight)

    def rebalance_weight(self, targets: torch.Tensor) -> torch.Tensor:
        """r = α_r + sigmoid(β·((1/n_c) / Σ_{c'∈pos(x)} 1/n_c' − μ)), per image and tag.

        An image with no positive tag would divide by zero; its ratio is taken as 1 (the limit the
        formula reaches for an image sampled through a single tag).
        """
        cfg = self.config
        repeat = (targets * self.freq_inv).sum(dim=1, keepdim=True)
        ratio = torch.where(repeat > 0, self.freq_inv / repeat.clamp_min(1e-12), torch.ones_like(repeat))
        return cfg.alpha_r + torch.sigmoid(cfg.beta * (ratio - cfg.mu))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        targets = targets.to(logits.dtype)
        z = logits + self.class_bias
        lam, ps = cfg.neg_scale, cfg.pos_scale
        # Positive: BCE(s·z, 1), focal on sigmoid(s·z). Negative: BCE(λz, 0)/λ, focal on sigmoid(λz).
        pos = self.pos_weight * F.softplus(-ps * z) * torch.sigmoid(-ps * z).pow(cfg.focal_gamma)
        neg = F.softplus(lam * z) / lam * torch.sigmoid(lam * z).pow(cfg.focal_gamma)
        loss = self.rebalance_weight(targets) * (targets * pos + (1.0 - targets) * neg)
        return cfg.balance * loss.mean()


class ASLLoss(nn.Module):
    """Asymmetric loss (Ridnik et al. 2021): γ− = 4, γ+ = 0, negatives' probabilities shifted by 0.05."""

    def __init__(self, n_classes: int, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05,
                 eps: float = 1e-8):
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = gamma_neg, gamma_pos, clip, eps
        self.register_buffer("class_bias", torch.zeros(n_classes))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.to(logits.dtype)
        p = torch.sigmoid(logits)
        p_neg = (p - self.clip).clamp_min(0.0) if self.clip > 0 else p
        pos = (1 - p).pow(self.gamma_pos) * torch.log(p.clamp_min(self.eps))
        neg = p_neg.pow(self.gamma_neg) * torch.log((1 - p_neg).clamp_min(self.eps))
        return -(targets * pos + (1 - targets) * neg).mean()


class BCELoss(nn.Module):
    def __init__(self, n_classes: int):
        super().__init__()
        self.register_buffer("class_bias", torch.zeros(n_classes))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))


def make_loss(name: str, class_counts, n_images: int) -> nn.Module:
    if name == "dbstar":
        return DBLoss(class_counts, n_images, head_weight=True)
    if name == "db":
        return DBLoss(class_counts, n_images, head_weight=False)
    if name == "db-official":
        return DBLoss(class_counts, n_images, head_weight=False, config=OFFICIAL_DB)
    if name == "asl":
        return ASLLoss(len(class_counts))
    if name == "bce":
        return BCELoss(len(class_counts))
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
