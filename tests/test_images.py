"""Decoding and preprocessing: orientation, colour modes, draft decoding, the three resize modes."""
import struct
import subprocess
import sys
import textwrap
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from tagger.errors import ImageError
from tagger.images import Preprocess, load_image, open_oriented, resize_image, to_rgb
from tests.conftest import needs_heif, solid_photo

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


@needs_heif
def test_heic_sample(samples):
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


def png_header(path, width: int, height: int):
    """A PNG that declares width x height 1-bit pixels and holds almost none: a bomb's header,
    written without allocating the image."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b""))
    return path


def run_python(code: str) -> None:
    """Run code in a fresh interpreter: what importing a module does to the process, seen from outside."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_importing_changes_no_process_wide_setting():
    run_python("""
        import warnings
        import numpy  # its own filters, added when first imported
        from PIL import Image
        before = Image.MAX_IMAGE_PIXELS, list(warnings.filters), sorted(Image.ID)
        import tagger.images
        after = Image.MAX_IMAGE_PIXELS, list(warnings.filters), sorted(Image.ID)
        assert after == before, f"importing tagger.images changed {before} to {after}"
    """)


@needs_heif
def test_heif_opener_registered_on_first_use(samples):
    run_python(f"""
        from PIL import Image
        from tagger.images import Preprocess, is_image_name, load_image
        assert "HEIF" not in Image.ID
        assert load_image({str(samples / "heic" / "IMG_5195.HEIC")!r}, Preprocess()).std() > 10
        assert "HEIF" in Image.ID and is_image_name("IMG_0001.heif")
    """)
    run_python("""
        from PIL import Image
        from tagger.images import is_image_name
        assert is_image_name("IMG_0001.HEIC") and "HEIF" in Image.ID  # discovery asks first
    """)


def test_bomb_refused_by_its_header_with_our_message(tmp_path):
    bomb = png_header(tmp_path / "bomb.png", 20000, 20000)
    before = Image.MAX_IMAGE_PIXELS, list(warnings.filters)
    with pytest.raises(ImageError) as caught:
        open_oriented(bomb)
    assert str(caught.value) == f"{bomb}: image is 20000x20000 pixels, over the 300,000,000-pixel limit " \
                                "(decompression bomb?)"
    assert (Image.MAX_IMAGE_PIXELS, list(warnings.filters)) == before


def test_pillows_own_guard_neither_refuses_nor_warns_below_our_limit(tmp_path, monkeypatch):
    # The process keeps Pillow's guard at 1 MP: a 3 MP photo is over twice that, a 1.5 MP one over it.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    sizes = [(3000, 1000), (1500, 1000)]
    paths = [tmp_path / f"{w}x{h}.png" for w, h in sizes]
    for path, size in zip(paths, sizes):
        Image.new("RGB", size, (200, 40, 40)).save(path)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for path in paths:
            assert load_image(path, SPEC)[0, 0].tolist() == [200, 40, 40]
        with pytest.raises(ImageError, match="truncated or corrupt"):  # header read, over Pillow's limit
            open_oriented(png_header(tmp_path / "150mp.png", 15000, 10000))
    assert not [w for w in seen if issubclass(w.category, Image.DecompressionBombWarning)]
    assert Image.MAX_IMAGE_PIXELS == 1_000_000


def test_decoding_in_threads_leaves_pillow_and_warnings_as_they_were(tmp_path):
    # Decode workers share one process: unlocked, catch_warnings in one thread restores another's filters.
    paths = [solid_photo(tmp_path / f"{i}.png", (i, 0, 0)) for i in range(32)]
    before = Image.MAX_IMAGE_PIXELS, list(warnings.filters)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(open_oriented, paths * 20))
    assert (Image.MAX_IMAGE_PIXELS, list(warnings.filters)) == before
