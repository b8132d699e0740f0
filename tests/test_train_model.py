"""HP-DVAL model pieces on a real tiny open_clip ViT: prompts, features, pooling, the inference graph."""
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

import torch.nn.functional as F  # noqa: E402

from train.backbone import load_clip, token_tower  # noqa: E402
from train.model import HPDVAL, HPDVALConfig, dual_view_logits, encode_image, normalize_scores, score_images  # noqa: E402
from train.prompts import prompt_text  # noqa: E402

TINY = Path(__file__).resolve().parents[1] / "train" / "model_configs" / "tagger-tiny.json"
TAGS = ["dog", "Animals|Cat", "red ball", "Sky|Sun"]


@pytest.fixture
def clip():
    torch.manual_seed(0)
    return load_clip(str(TINY), None)


def test_prompt_encoder_with_initial_context_is_clip_encode_text(clip):
    expected = clip.model.encode_text(clip.tokenizer([prompt_text(t) for t in TAGS]), normalize=True)
    model = HPDVAL(clip, TAGS, teacher=False)
    assert prompt_text("Animals|Cat") == "a photo of a Cat."
    assert torch.allclose(model.text_hand, expected, atol=1e-5)
    # P_G and P_L come from the same encoder with the (still initial) learned contexts.
    P_G, P_L = model.text_features()
    assert torch.allclose(P_G, expected, atol=1e-5) and torch.allclose(P_L, expected, atol=1e-5)
    # The contexts start as the embedding of "a photo of a" and are M = 4 vectors.
    ids = clip.tokenizer(["a photo of a"])[0, 1:5]
    with torch.no_grad():
        assert torch.equal(model.prompts.ctx_global, clip.model.token_embedding(ids))
    assert model.prompts.ctx_local.shape == (4, clip.model.token_embedding.weight.shape[1])


def test_changed_context_changes_the_prompts(clip):
    model = HPDVAL(clip, TAGS, teacher=False)
    with torch.no_grad():
        # Random, not constant: LayerNorm would erase a shift shared by every dimension.
        model.prompts.ctx_local.add_(torch.randn(model.prompts.ctx_local.shape, generator=torch.Generator().manual_seed(3)))
    P_G, P_L = model.text_features()
    assert torch.allclose(P_G, model.text_hand, atol=1e-5)
    assert not torch.allclose(P_L, model.text_hand, atol=1e-3)


def test_projected_patch_tokens_and_topk_pooling_by_hand(clip):
    visual = token_tower(clip.model.visual)
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        f_cls, f_patch, pooled = encode_image(visual, pixels)
        # By hand: run the tower, take ln_post'd patch tokens, project them with visual.proj.
        x = visual._embeds(pixels)
        x = visual.transformer(x)
        x = visual.ln_post(x)
        cls_by_hand = x[:, 0] @ visual.proj
        patch_by_hand = x[:, 1:] @ visual.proj
    assert f_patch.shape == (2, 64, 64) and f_cls.shape == (2, 64)
    assert torch.allclose(pooled, cls_by_hand, atol=1e-5)
    assert torch.allclose(f_cls, F.normalize(cls_by_hand, dim=-1), atol=1e-5)
    assert torch.allclose(f_patch, F.normalize(patch_by_hand, dim=-1), atol=1e-5)
    assert torch.allclose(f_patch.norm(dim=-1), torch.ones(2, 64), atol=1e-5)

    # Top-k pooling on a small case computed by hand: 1 image, 4 patches, 2 tags, k = 2.
    f_cls = torch.tensor([[1.0, 0.0]])
    f_patch = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, -0.6]]])
    P = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z = dual_view_logits(f_cls, f_patch, P, P, alpha=0.4, topk=2, logit_scale=20.0)
    s_global = np.array([1.0, 0.0])
    s_local = np.array([(1.0 + 0.8) / 2, (1.0 + 0.8) / 2])  # tag 0: patches 1.0, 0.8; tag 1: 1.0, 0.8
    assert np.allclose(z.numpy()[0], 20.0 * (0.4 * s_global + 0.6 * s_local))

    # The same with per-photo centring over the two tags and a reference prompt r = (0.6, -0.8):
    # global scores (1, 0, 0.6) -> minus their mean; local: r·patches = 0.6, -0.8, -0.28, 0.96 -> top-2 0.78.
    ref = torch.tensor([[0.6, -0.8]])
    z = dual_view_logits(f_cls, f_patch, P, P, alpha=0.4, topk=2, logit_scale=20.0, score_norm="center", P_ref=ref)
    g = np.array([1.0, 0.0, 0.6])
    loc = np.array([0.9, 0.9, (0.96 + 0.6) / 2])
    expected = 20.0 * (0.4 * (g - g.mean())[:2] + 0.6 * (loc - loc.mean())[:2])
    assert np.allclose(z.numpy()[0], expected, atol=1e-6)
    z = dual_view_logits(f_cls, f_patch, P, P, alpha=0.4, topk=2, logit_scale=20.0, score_norm="l2", P_ref=ref)
    expected = 20.0 * (0.4 * (g / np.linalg.norm(g))[:2] + 0.6 * (loc / np.linalg.norm(loc))[:2])
    assert np.allclose(z.numpy()[0], expected, atol=1e-6)


def test_centring_removes_a_per_photo_offset_and_keeps_a_single_tag_meaningful():
    scores = torch.tensor([[0.30, 0.20, 0.25], [0.10, 0.00, 0.05]])  # photo 2 = photo 1 − 0.2 everywhere
    centred = normalize_scores(scores, "center")
    assert torch.allclose(centred[0], centred[1], atol=1e-6)
    assert torch.allclose(normalize_scores(scores, "none"), scores)
    with pytest.raises(ValueError, match="score_norm"):
        normalize_scores(scores, "softmax")
    # One tag + the reference prompt: the tag's score against "a photo.", not a constant.
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    P, ref = torch.tensor([[0.8, 0.6]]), torch.tensor([[0.6, 0.8]])
    z = dual_view_logits(f, f.unsqueeze(1), P, P, alpha=1.0, topk=1, logit_scale=1.0, score_norm="center", P_ref=ref)
    assert torch.allclose(z[:, 0], torch.tensor([0.1, -0.1]), atol=1e-6)


def test_topk_default_is_16_percent_of_patches(clip):
    assert HPDVAL(clip, TAGS, teacher=False).topk == 10  # 64 patches
    assert HPDVAL(clip, TAGS, config=HPDVALConfig(topk=3), teacher=False).topk == 3


@pytest.mark.parametrize("score_norm", ["center", "l2", "none"])
def test_score_images_is_the_model_with_both_biases(clip, score_norm):
    bias = torch.tensor([-0.2, 0.0, 0.1, -0.05])
    model = HPDVAL(clip, TAGS, class_bias=bias, config=HPDVALConfig(score_norm=score_norm, alpha=0.4),
                   teacher=False).eval()
    model.init_tag_bias([30, 3, 10, 1], 60)
    with torch.no_grad():
        model.prompts.ctx_local.add_(torch.randn(model.prompts.ctx_local.shape, generator=torch.Generator().manual_seed(4)))
    images = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    parts = model.export_parts()
    assert parts.P_G.shape == (4, 64) and parts.class_bias.shape == (4,) and parts.score_norm == score_norm
    # γ starts at CLIP's own temperature (1/0.07 for an untrained open_clip model).
    assert parts.logit_scale == pytest.approx(1 / 0.07, rel=1e-4) and parts.alpha == pytest.approx(0.4)
    assert parts.image_size == 64 and len(parts.mean) == 3
    with torch.no_grad():
        scores = score_images(parts, images)
        x = (images.float() / 255 - torch.tensor(parts.mean)) / torch.tensor(parts.std)
        f_cls, f_patch, _ = model.encode(x.permute(0, 3, 1, 2))
        z = model.logits(f_cls, f_patch, *model.text_features())
    assert scores.shape == (3, 4) and scores.dtype == torch.float32
    assert torch.allclose(scores, torch.sigmoid(z + bias), atol=1e-6)
    assert ((scores >= 0) & (scores <= 1)).all()


def test_tag_bias_starts_at_the_tag_prior(clip):
    bias = torch.tensor([-0.2, 0.0, 0.1, -0.05])
    model = HPDVAL(clip, TAGS, class_bias=bias, teacher=False)
    model.init_tag_bias([30, 3, 10, 1], 60)
    prior = torch.tensor([30, 3, 10, 1]) / 60
    assert torch.allclose(torch.sigmoid(model.tag_bias.detach() + bias), prior, atol=1e-6)


def test_stage_parameters(clip):
    model = HPDVAL(clip, TAGS, teacher=True)
    stage1 = {id(p) for p in model.set_stage(1)}
    names1 = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names1 == {n for n, p in model.named_parameters() if n.startswith("student.")} | {"logit_scale", "tag_bias"}
    assert all(not p.requires_grad for p in model.teacher.parameters())
    model.set_stage(2)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"prompts.ctx_global", "prompts.ctx_local",
                                                                            "tag_bias"}
    assert len(stage1) == len(names1)
    assert not any(k.startswith("teacher.") for k in model.inference_state_dict())
