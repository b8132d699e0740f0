"""Train-time augmentation: what a crop may take out of a multi-label photo."""
from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")

from train.augment import AugmentConfig, augment  # noqa: E402


def _visible_fraction(config: AugmentConfig, draws: int = 400, size: int = 64) -> torch.Tensor:
    """Per draw, the fraction of the source photo's area the augmented image shows: the source pixels
    carry their own coordinates, so the output's span of them is the crop window."""
    ramp = torch.arange(size, dtype=torch.float32) * (255 / (size - 1))
    image = torch.zeros(size, size, 3)
    image[..., 0] = ramp.view(1, size)  # x
    image[..., 1] = ramp.view(size, 1)  # y
    batch = image.round().to(torch.uint8).expand(draws, size, size, 3).contiguous()
    out = augment(batch, torch.Generator().manual_seed(0), replace(config, flip=0.0, jitter=0.0))
    x, y = out[:, 0], out[:, 1]
    span_x = x.amax(dim=(1, 2)) - x.amin(dim=(1, 2))
    span_y = y.amax(dim=(1, 2)) - y.amin(dim=(1, 2))
    return span_x * span_y


def test_every_default_crop_keeps_three_quarters_of_the_photo():
    # A tag stays on the photo whatever the crop leaves; a small tagged object at the edge must stay in
    # view. Catches the crop scale widened back to ImageNet-style crops (0.5 and below).
    visible = _visible_fraction(AugmentConfig())
    assert visible.min() >= 0.74
    assert visible.max() < 0.999  # it still crops: the augmentation is on


def test_a_wider_crop_scale_does_cut_more_out():
    # The measurement itself can see a crop that takes half the photo away.
    assert _visible_fraction(AugmentConfig(scale=(0.5, 1.0))).min() < 0.6
