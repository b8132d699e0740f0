"""Issue 12, data loss: each case a photographer would remember, reproduced with real exiftool and real
files. The user's keywords are never deleted, changed or cut, and no photo is ever lost."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner

from tagger.cli import cli
from tagger.writers.embed import EmbedWriter
from tagger.writers.xmp_sidecar import XmpWriter
from tests.conftest import solid_photo
from tests.metadata_util import (MODEL_B, as_list, changed_tags, copy_sample, exiftool_json, keywords_in, pixels,
                                 result_for)

pytestmark = pytest.mark.skipif(shutil.which("exiftool") is None, reason="needs exiftool (libimage-exiftool-perl)")


@pytest.fixture
def embed():
    writer = EmbedWriter()
    yield writer
    writer.close()


def exiftool(*args) -> None:
    subprocess.run(["exiftool", "-q", "-m", "-overwrite_original", *map(str, args)], check=True, capture_output=True)


def xml_list(photo, tag: str) -> list[str]:
    """A list tag's items exactly as stored (exiftool's XML output, every item, -m: no 1,000 cut)."""
    from tagger.xmp import parse_xmp

    out = subprocess.run(["exiftool", "-X", "-m", f"-{tag}", str(photo)], capture_output=True, check=True).stdout
    (_about, values), = parse_xmp(out).descriptions()
    value = values.get(tag, [])
    return value if isinstance(value, list) else [value]


def inject_subject(photo, items: list[str]) -> None:
    """Give a photo a dc:subject list exiftool's assignments cannot make (empty items, spaces)."""
    lis = "".join(f"<rdf:li>{item}</rdf:li>" for item in items)
    packet = photo.with_name("inject.xmp")
    packet.write_text(
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/">'
        f'<dc:subject><rdf:Bag>{lis}</rdf:Bag></dc:subject></rdf:Description></rdf:RDF></x:xmpmeta>')
    exiftool(f"-xmp<={packet}", photo)
    packet.unlink()


def tagger(*args, cwd=None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tagger", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=cwd, **kwargs)


# -- 1. two runs at once ---------------------------------------------------------------------------
def _camera_folder(samples, root, n: int):
    names = ["jpg/Canon_40D.jpg", "jpg/xmp/BlueSquare.jpg", "jpg/gps/DSCN0010.jpg", "jpg/xmp/no_exif.jpg"]
    return [copy_sample(samples, names[i % len(names)], root / f"IMG_{i:03d}.jpg") for i in range(n)]


def test_two_runs_at_once_lose_no_photo(tmp_path, samples, colour_model):
    photos = _camera_folder(samples, tmp_path / "photos", 16)
    before = {p: (exiftool_json(p)[0], pixels(p)) for p in photos}
    runs = [tagger("tag", tmp_path / "photos", "--model", colour_model, "--write", "embed,xmp", "-q", "--force")
            for _ in range(2)]
    for run in runs:
        _out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err.decode()
    for photo, (meta, image) in before.items():
        assert photo.exists(), f"{photo.name} lost"
        assert np.array_equal(pixels(photo), image), photo.name
        assert changed_tags(meta, exiftool_json(photo)[0]) == set(), photo.name
    assert sorted(p.name for p in (tmp_path / "photos").iterdir() if p.suffix == ".jpg") == [p.name for p in photos]
    assert not [p for p in (tmp_path / "photos").iterdir() if p.name.endswith(("_exiftool_tmp", ".tmp"))]


def test_a_second_run_waits_for_the_photo_another_run_is_writing(tmp_path, samples, colour_model):
    from tagger.locking import photo_lock

    photo = copy_sample(samples, "jpg/Canon_40D.jpg", tmp_path / "photos" / "IMG_1.jpg")
    with photo_lock(photo):
        run = tagger("tag", photo.parent, "--model", colour_model, "--write", "embed", "-q")
        time.sleep(3)
        assert run.poll() is None, "the second run did not wait for the photo's lock"
        assert "XMP-tagger:TaggerModel" not in exiftool_json(photo)[0]
    _out, err = run.communicate(timeout=60)
    assert run.returncode == 0, err.decode()
    assert "XMP-tagger:TaggerModel" in exiftool_json(photo)[0]


# -- 2. empty and space-only keywords --------------------------------------------------------------
def test_empty_and_spaced_user_keywords_survive_embed_and_untag(tmp_path, samples, embed):
    photo = copy_sample(samples, "jpg/Canon_40D.jpg", tmp_path / "IMG_1.jpg")
    mine = ["holiday", "", " spaced ", "tab\there", "last"]
    inject_subject(photo, mine)
    embed.write(result_for(photo, ["dog"]))
    assert xml_list(photo, "XMP-dc:Subject") == mine + ["dog"]
    embed.write(result_for(photo, ["cat"], MODEL_B))
    assert sorted(xml_list(photo, "XMP-dc:Subject")) == sorted(mine + ["cat"])
    result = CliRunner().invoke(cli, ["untag", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert xml_list(photo, "XMP-dc:Subject") == mine


@pytest.mark.parametrize("bad_label", ["Animals|", " ", "dog ", "a\x1bb"])
def test_a_model_label_the_writers_cannot_store_is_refused_before_any_photo(tmp_path, samples, bad_label):
    from tests.onnx_models import COLOUR_LABELS, build_colour_model
    from tagger.images import Preprocess
    from tagger.modelfile import FORMAT_VERSION

    import json
    labels = [bad_label] + COLOUR_LABELS[1:]
    meta = {"tagger.format": FORMAT_VERSION, "tagger.labels": json.dumps(labels),
            "tagger.thresholds": json.dumps([0.0] * 4),  # every tag, the bad one included, goes to every photo
            "tagger.preprocess": json.dumps(Preprocess(32, "shortest", "bilinear").to_dict()),
            "tagger.model": json.dumps({"name": "bad", "backbone": "x", "created": "2026-12-03"})}
    model = build_colour_model(tmp_path / "bad.onnx", metadata=meta)
    photo = copy_sample(samples, "jpg/xmp/BlueSquare.jpg", tmp_path / "photos" / "blue.jpg")
    before = keywords_in(photo)
    result = CliRunner().invoke(cli, ["tag", str(photo.parent), "--model", str(model), "--write", "embed"])
    assert result.exit_code == 1, result.output
    assert "label" in result.output
    assert keywords_in(photo) == before


# -- 3. over 1,000 keywords ------------------------------------------------------------------------
def test_more_than_a_thousand_user_keywords_are_all_kept(tmp_path, samples, embed):
    photo = copy_sample(samples, "jpg/Canon_40D.jpg", tmp_path / "IMG_1.jpg")
    mine = [f"kw{i:04d}" for i in range(1500)]
    args = tmp_path / "args"
    args.write_text("".join(f"-XMP-dc:Subject={k}\n" for k in mine))
    exiftool("-@", args, photo)
    embed.write(result_for(photo, ["dog"]))
    assert xml_list(photo, "XMP-dc:Subject") == mine + ["dog"]


# -- 4. untag matches photos exactly ---------------------------------------------------------------
def test_untag_never_mixes_up_photos_whose_names_print_alike(tmp_path, samples, embed):
    folder = tmp_path / "odd"
    folder.mkdir()
    names = [b"a\xff.jpg", b"a\xfe.jpg", b"b\x01.jpg", b"b\x02.jpg"]
    photos = []
    for i, raw in enumerate(names):
        path = folder / os.fsdecode(raw)
        shutil.copy(samples / "jpg/Canon_40D.jpg", path)
        os.chmod(path, 0o644)
        exiftool(f"-XMP-dc:Subject=mine{i}", path)
        embed.write(result_for(path, [f"ours{i}"]))
        photos.append(path)
    result = CliRunner().invoke(cli, ["untag", str(folder)])
    assert result.exit_code == 0, result.output
    for i, path in enumerate(photos):
        assert xml_list(path, "XMP-dc:Subject") == [f"mine{i}"], os.fsencode(path.name)


# -- 5. long IPTC keywords -------------------------------------------------------------------------
def test_user_iptc_keywords_longer_than_64_bytes_are_not_cut(tmp_path, samples, embed):
    photo = copy_sample(samples, "jpg/xmp/BlueSquare.jpg", tmp_path / "IMG_1.jpg")
    long_one = "L" * 80
    exiftool(f"-IPTC:Keywords+={long_one}", photo)  # -m: written whole, as other programs do
    embed.write(result_for(photo, ["dog"]))
    assert long_one in as_list(exiftool_json(photo)[0].get("IPTC:Keywords"))
    result = CliRunner().invoke(cli, ["untag", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert long_one in as_list(exiftool_json(photo)[0].get("IPTC:Keywords"))


# -- 6. untag keeps a sidecar that holds more than the tagger's record -----------------------------
def test_untag_keeps_a_sidecar_with_the_users_comments_or_elements(tmp_path):
    photos = [solid_photo(tmp_path / f"p{i}.jpg", (200, 10, 10)) for i in range(3)]
    for photo in photos:
        XmpWriter().write(result_for(photo, ["dog"]))
    commented, extra, plain = (p.with_name(p.name + ".xmp") for p in photos)
    commented.write_text(commented.read_text().replace("<x:xmpmeta", "<!-- keep: my notes -->\n<x:xmpmeta", 1))
    extra.write_text(extra.read_text().replace(" </rdf:RDF>", " </rdf:RDF>\n <my:note xmlns:my='urn:my'>hi</my:note>"))
    result = CliRunner().invoke(cli, ["untag", "--no-embedded", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "my notes" in commented.read_text()
    assert "<my:note" in extra.read_text()
    assert "dog" not in commented.read_text() + extra.read_text()
    assert not plain.exists()  # the one the tagger made, holding nothing else, goes


# -- 7. IPTC-only keywords stay visible to MWG readers ---------------------------------------------
def test_iptc_only_keywords_are_copied_into_the_new_xmp_list(tmp_path, samples, embed):
    photo = copy_sample(samples, "jpg/Canon_40D.jpg", tmp_path / "IMG_1.jpg")
    exiftool("-IPTC:Keywords=Holiday", "-IPTC:Keywords=RED", photo)
    embed.write(result_for(photo, ["red", "dog"]))
    words = keywords_in(photo)
    assert words["XMP-dc:Subject"] == ["Holiday", "RED", "dog"]  # `red` would duplicate the user's `RED`
    assert words["IPTC:Keywords"] == ["Holiday", "RED", "dog"]


def test_iptc_digest_kept_current_and_no_iptc_dataset_added(tmp_path, samples, embed):
    blue = copy_sample(samples, "jpg/xmp/BlueSquare.jpg", tmp_path / "blue.jpg")       # Photoshop IPTCDigest
    utf8 = copy_sample(samples, "jpg/xmp/no_exif.jpg", tmp_path / "utf8.jpg")          # record 1 without a version
    before = {p: {k for k in exiftool_json(p)[0] if k.startswith("IPTC:")} for p in (blue, utf8)}
    for photo in (blue, utf8):
        embed.write(result_for(photo, ["dog"]))
        entry = exiftool_json(photo)[0]
        assert {k for k in entry if k.startswith("IPTC:")} == before[photo], photo.name
        assert "dog" in as_list(entry["IPTC:Keywords"])
    entry = exiftool_json(blue)[0]
    assert entry["Photoshop:IPTCDigest"] == entry["File:CurrentIPTCDigest"]
    result = CliRunner().invoke(cli, ["untag", str(tmp_path)])
    assert result.exit_code == 0, result.output
    entry = exiftool_json(blue)[0]
    assert entry["Photoshop:IPTCDigest"] == entry["File:CurrentIPTCDigest"]
    assert {k for k in exiftool_json(utf8)[0] if k.startswith("IPTC:")} == before[utf8]


# -- 8. leftovers of a killed write ----------------------------------------------------------------
def test_a_leftover_temporary_file_does_not_block_the_next_run(tmp_path, samples, colour_model):
    photo = copy_sample(samples, "jpg/Canon_40D.jpg", tmp_path / "photos" / "IMG_1.jpg")
    (photo.parent / "IMG_1.jpg_exiftool_tmp").write_bytes(photo.read_bytes()[:5000])  # exiftool's, from a kill
    result = CliRunner().invoke(cli, ["tag", str(photo.parent), "--model", str(colour_model), "--write", "embed"])
    assert result.exit_code == 0, result.output
    assert "XMP-tagger:TaggerModel" in exiftool_json(photo)[0]


def test_a_run_killed_mid_write_leaves_the_photo_whole_and_the_next_run_finishes(tmp_path, samples, colour_model):
    photo = copy_sample(samples, "jpg/Canon_40D.jpg", tmp_path / "photos" / "IMG_1.jpg")
    image, meta = pixels(photo), exiftool_json(photo)[0]
    # A big photo makes the write long enough to kill the run in the middle of it.
    big = tmp_path / "big.args"
    big.write_text("-XMP-dc:Description=" + "x" * 4_000_000 + "\n")
    exiftool("-@", big, photo)
    meta = exiftool_json(photo)[0]
    run = tagger("tag", photo.parent, "--model", colour_model, "--write", "embed", "-q")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(photo.parent.iterdir())) == 1:  # until exiftool's copy appears
        time.sleep(0.005)
    run.kill()
    run.wait()
    assert np.array_equal(pixels(photo), image)
    assert changed_tags(meta, exiftool_json(photo)[0]) == set()
    result = CliRunner().invoke(cli, ["tag", str(photo.parent), "--model", str(colour_model), "--write", "embed"])
    assert result.exit_code == 0, result.output
    assert "XMP-tagger:TaggerModel" in exiftool_json(photo)[0]
    assert sorted(p.name for p in photo.parent.iterdir()) == ["IMG_1.jpg"]
