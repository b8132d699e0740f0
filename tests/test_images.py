"""Decoding and preprocessing: orientation, colour modes, draft decoding, the three resize modes."""
import numpy as np
import pytest
from PIL import Image

from tagger.errors import ImageError
from tagger.images import Preprocess, load_image, open_oriented, resize_image, to_rgb

SPEC = Preprocess(size=224, resize="shortest", interpolation="bicubic")


@pytest.mark.parametrize("shape", ["landscape", "portrait"])
def test_eight_exif_orientations_give_the_same_pixels(samples, shape):
    folder = samples / "jpg" / "orientation"
    reference = load_image(folder / f"{shape}_1.jpg", SPEC).astype(int)
    for n in range(2, 9):
        oriented = load_image(folder / f"{shape}_{n}.jpg", SPEC).astype(int)
        # Each file also carries a large digit naming its orientation; outside it, pixels agree within
        # JPEG re-encoding noise.
        close = np.abs(oriented - reference).max(axis=2) <= 40
        assert close.mean() > 0.9, f"{shape}_{n}.jpg: only {close.mean():.0%} of pixels match"
        raw = np.asarray(Image.open(folder / f"{shape}_{n}.jpg").convert("RGB").resize((224, 224))).astype(int)
        if n in (3, 6, 8):  # rotations: without EXIF handling the picture would be clearly wrong
            assert (np.abs(raw - reference).max(axis=2) <= 40).mean() < 0.6


def test_camera_samples_decode(samples):
    photos = sorted((samples / "jpg").glob("*.jpg")) + sorted((samples / "jpg" / "exif-org").glob("*.jpg"))
    for photo in photos:
        pixels = load_image(photo, SPEC)
        assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8, photo.name


def test_heic_sample(samples):
    pytest.importorskip("pillow_heif")
    pixels = load_image(samples / "heic" / "IMG_5195.HEIC", SPEC)
    assert pixels.shape == (224, 224, 3) and pixels.std() > 10


def test_draft_decoding_matches_full_decoding(samples):
    """DCT-scaled decoding of a 12 MP phone photo must give nearly the same model input."""
    photo = samples / "jpg" / "mobile" / "HMD_Nokia_8.3_5G.jpg"
    with Image.open(photo) as img:
        assert img.size[0] * img.size[1] > 8_000_000
        full = resize_image(to_rgb(img.convert("RGB")), SPEC).astype(int)
    fast = load_image(photo, SPEC).astype(int)
    assert np.abs(fast - full).mean() < 3


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK", "LA", "RGBA", "I;16", "I", "F", "YCbCr"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    base = Image.new("RGB", (40, 30), (200, 40, 40))
    if mode in ("I;16", "I"):
        img = Image.fromarray(np.full((30, 40), 50000, dtype=np.uint16 if mode == "I;16" else np.int32))
        assert img.mode == mode
        expected_grey = round(50000 * 255 / 65535)
    elif mode == "F":
        img = Image.fromarray(np.full((30, 40), 0.5, dtype=np.float32), "F")
        expected_grey = 128
    else:
        img = base.convert(mode)
        expected_grey = None
    rgb = to_rgb(img)
    assert rgb.mode == "RGB" and rgb.size == (40, 30)
    if expected_grey is not None:  # 16-bit and float data are scaled, never clipped to white
        assert abs(int(np.asarray(rgb)[0, 0, 0]) - expected_grey) <= 1


def test_transparency_is_composited_on_white(tmp_path):
    clear = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    assert np.asarray(to_rgb(clear))[0, 0].tolist() == [255, 255, 255]
    pal = Image.new("P", (10, 10), 0)
    pal.putpalette([0, 0, 0] * 256)
    pal.info["transparency"] = 0
    path = tmp_path / "t.png"
    pal.save(path, transparency=0)
    assert open_oriented(path).getpixel((0, 0)) == (255, 255, 255)


def test_resize_modes():
    wide = Image.new("RGB", (400, 100), (0, 0, 0))
    wide.paste((255, 255, 255), (150, 0, 250, 100))  # a white band in the centre
    shortest = resize_image(wide, Preprocess(50, "shortest", "bilinear"))
    assert shortest.shape == (50, 50, 3) and shortest.mean() > 240  # centre crop is the white band
    squash = resize_image(wide, Preprocess(50, "squash", "bilinear"))
    assert 50 < squash.mean() < 90  # a quarter of the width is white
    longest = resize_image(wide, Preprocess(40, "longest", "bilinear"))
    assert longest.shape == (40, 40, 3)
    assert longest[:14].max() == 0 and longest[-14:].max() == 0  # letterbox bars


def test_bad_spec_rejected():
    with pytest.raises(ValueError, match="resize"):
        Preprocess(224, "stretch")
    with pytest.raises(ValueError, match="size"):
        Preprocess(3)


def test_pixel_limit(tmp_path):
    path = tmp_path / "big.png"
    Image.new("1", (5000, 5000)).save(path)
    with pytest.raises(ImageError, match="over the 1,000,000-pixel limit"):
        open_oriented(path, max_pixels=1_000_000)
