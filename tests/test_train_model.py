"""HP-DVAL model pieces on a real tiny open_clip ViT: prompts, features, pooling, the inference graph."""
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

import torch.nn.functional as F  # noqa: E402

from train.backbone import load_clip  # noqa: E402
from train.model import HPDVAL, HPDVALConfig, dual_view_logits, encode_image, score_images  # noqa: E402
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
    visual = clip.model.visual
    visual.output_tokens = True
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


def test_topk_default_is_16_percent_of_patches(clip):
    assert HPDVAL(clip, TAGS, teacher=False).topk == 10  # 64 patches
    assert HPDVAL(clip, TAGS, config=HPDVALConfig(topk=3), teacher=False).topk == 3


def test_score_images_is_the_model_with_bias(clip):
    bias = torch.tensor([-0.2, 0.0, 0.1, -0.05])
    model = HPDVAL(clip, TAGS, class_bias=bias, teacher=False).eval()
    images = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    parts = model.export_parts()
    assert parts.P_G.shape == (4, 64) and parts.class_bias.shape == (4,)
    assert parts.logit_scale == pytest.approx(20.0) and parts.alpha == pytest.approx(0.4)
    assert parts.image_size == 64 and len(parts.mean) == 3
    with torch.no_grad():
        scores = score_images(parts, images)
        x = (images.float() / 255 - torch.tensor(parts.mean)) / torch.tensor(parts.std)
        z = model(x.permute(0, 3, 1, 2))
    assert scores.shape == (3, 4) and scores.dtype == torch.float32
    assert torch.allclose(scores, torch.sigmoid(z + bias), atol=1e-6)
    assert ((scores >= 0) & (scores <= 1)).all()


def test_stage_parameters(clip):
    model = HPDVAL(clip, TAGS, teacher=True)
    stage1 = {id(p) for p in model.set_stage(1)}
    names1 = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names1 == {n for n, p in model.named_parameters() if n.startswith("student.")} | {"logit_scale"}
    assert all(not p.requires_grad for p in model.teacher.parameters())
    model.set_stage(2)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"prompts.ctx_global", "prompts.ctx_local"}
    assert len(stage1) == len(names1)
    assert not any(k.startswith("teacher.") for k in model.inference_state_dict())
