"""`--write xmp`: sidecar naming, user keywords kept, darktable edits kept, provenance and re-runs."""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from tagger.errors import WriteError
from tagger.writers.xmp_sidecar import XmpWriter
from tagger.xmp import NS_DC, NS_LR, NS_TAGGER, parse_xmp
from tests.metadata_util import (MODEL_A, MODEL_B, as_list, changed_tags, copy_sample, exiftool_json, result_for)
from tests.test_xmp import BILLION_LAUGHS

needs_exiftool = pytest.mark.skipif(shutil.which("exiftool") is None or shutil.which("exiv2") is None,
                                    reason="needs exiftool and exiv2")

# What darktable 4.x writes beside a photo: edit history, masks, rating, its own auto tags.
DARKTABLE_SIDECAR = """<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:exif="http://ns.adobe.com/exif/1.0/"
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:lr="http://ns.adobe.com/lightroom/1.0/"
    xmlns:darktable="http://darktable.sf.net/"
   exif:DateTimeOriginal="2008:05:30 15:56:01"
   xmp:Rating="3"
   xmpMM:DerivedFrom="IMG_0001.jpg"
   darktable:import_timestamp="63848125530000000"
   darktable:change_timestamp="63848125612000000"
   darktable:export_timestamp="-1"
   darktable:print_timestamp="-1"
   darktable:xmp_version="5"
   darktable:raw_params="0"
   darktable:auto_presets_applied="1"
   darktable:history_end="2"
   darktable:iop_order_version="4">
   <dc:subject>
    <rdf:Bag>
     <rdf:li>holiday</rdf:li>
    </rdf:Bag>
   </dc:subject>
   <lr:hierarchicalSubject>
    <rdf:Bag>
     <rdf:li>places|beach</rdf:li>
     <rdf:li>darktable|format|jpg</rdf:li>
    </rdf:Bag>
   </lr:hierarchicalSubject>
   <darktable:masks_history>
    <rdf:Seq/>
   </darktable:masks_history>
   <!-- darktable keeps one rdf:li per history step -->
   <darktable:history>
    <rdf:Seq>
     <rdf:li
      darktable:num="0"
      darktable:operation="colorin"
      darktable:enabled="1"
      darktable:modversion="7"
      darktable:params="gz48eJzjZBgFowABWAbaAaNgwAEAEDgABg=="
      darktable:multi_name=""
      darktable:multi_priority="0"
      darktable:blendop_version="13"
      darktable:blendop_params="gz11eJxjYGBgkGAAgRNODGiAEV0AJ2iwh+CRyscOAAdeGQQ="/>
     <rdf:li
      darktable:num="1"
      darktable:operation="exposure"
      darktable:enabled="1"
      darktable:modversion="6"
      darktable:params="0000000000000000cdcc4c3e0000000000000000"
      darktable:multi_name="&amp;mine"
      darktable:multi_priority="0"
      darktable:blendop_version="13"
      darktable:blendop_params="gz11eJxjYGBgkGAAgRNODGiAEV0AJ2iwh+CRyscOAAdeGQQ="/>
    </rdf:Seq>
   </darktable:history>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""


@pytest.fixture
def photo(tmp_path, samples):
    return copy_sample(samples, "jpg/Canon_40D.jpg", tmp_path / "IMG_0001.jpg")


def _notices():
    seen: list[str] = []
    return seen, seen.append


def _subject(sidecar):
    packet = parse_xmp(sidecar.read_bytes())
    return packet.get_list(NS_DC, "subject"), packet.get_list(NS_LR, "hierarchicalSubject")


def test_new_sidecar_is_named_after_the_whole_file_name(photo):
    XmpWriter().write(result_for(photo, ["dog", "Animals|Cat"]))
    sidecar = photo.with_name("IMG_0001.jpg.xmp")
    assert sorted(p.name for p in photo.parent.iterdir()) == ["IMG_0001.jpg", "IMG_0001.jpg.xmp"]
    assert _subject(sidecar) == (["dog", "Animals", "Cat"], ["Animals|Cat"])


def test_basename_sidecar_on_request(photo):
    XmpWriter(xmp_name="basename").write(result_for(photo, ["dog"]))
    assert sorted(p.name for p in photo.parent.iterdir()) == ["IMG_0001.jpg", "IMG_0001.xmp"]


def test_every_existing_sidecar_is_updated_and_no_new_one_made(photo):
    lightroom = photo.with_name("IMG_0001.xmp")
    lightroom.write_text(DARKTABLE_SIDECAR)
    XmpWriter().write(result_for(photo, ["dog"]))  # default extension form, but IMG_0001.xmp exists
    assert sorted(p.name for p in photo.parent.iterdir()) == ["IMG_0001.jpg", "IMG_0001.xmp"]
    assert "dog" in _subject(lightroom)[0]

    both = photo.with_name("IMG_0001.jpg.xmp")
    both.write_text(DARKTABLE_SIDECAR)
    XmpWriter().write(result_for(photo, ["cat"]))
    for sidecar in (lightroom, both):
        assert "cat" in _subject(sidecar)[0] and "dog" not in _subject(sidecar)[0]


def test_a_stem_shared_with_a_raw_never_uses_the_shared_sidecar(tmp_path, samples):
    jpeg = copy_sample(samples, "jpg/Canon_40D.jpg", tmp_path / "IMG_0002.JPG")
    (tmp_path / "IMG_0002.CR2").write_bytes(b"raw data")
    raw_sidecar = tmp_path / "IMG_0002.xmp"  # Lightroom's, for the raw
    raw_sidecar.write_text(DARKTABLE_SIDECAR)
    original = raw_sidecar.read_bytes()
    seen, notify = _notices()

    XmpWriter(xmp_name="basename", notify=notify).write(result_for(jpeg, ["dog"]))

    assert raw_sidecar.read_bytes() == original
    assert _subject(tmp_path / "IMG_0002.JPG.xmp")[0] == ["dog"]
    assert len(seen) == 1 and "IMG_0002.xmp" in seen[0] and "IMG_0002.CR2" in seen[0]
    assert "IMG_0002.JPG.xmp" in seen[0]


def test_shared_stem_without_existing_sidecar_and_basename_asked(tmp_path, samples):
    jpeg = copy_sample(samples, "jpg/Canon_40D.jpg", tmp_path / "DSC_7.jpg")
    (tmp_path / "DSC_7.NEF").write_bytes(b"raw data")
    (tmp_path / "DSC_7.jpg_original").write_bytes(b"an exiftool backup is not a sibling")
    seen, notify = _notices()
    XmpWriter(xmp_name="basename", notify=notify).write(result_for(jpeg, ["dog"]))
    assert (tmp_path / "DSC_7.jpg.xmp").exists() and not (tmp_path / "DSC_7.xmp").exists()
    assert len(seen) == 1 and "DSC_7.NEF" in seen[0] and "original" not in seen[0]


@needs_exiftool
def test_darktable_sidecar_keeps_its_history_and_user_keywords(photo):
    sidecar = photo.with_name("IMG_0001.jpg.xmp")
    sidecar.write_text(DARKTABLE_SIDECAR)
    before, before_exiv2 = exiftool_json(sidecar)[0], _exiv2_not_keywords(sidecar)

    XmpWriter().write(result_for(photo, ["dog", "places|beach", "Animals|Cat"]))

    after = exiftool_json(sidecar)[0]
    assert changed_tags(before, after) == set()  # rating, timestamps, ...: all as they were
    # exiv2 (the library darktable itself reads sidecars with) sees the same history stack
    assert _exiv2_not_keywords(sidecar) == before_exiv2
    assert "Xmp.darktable.history[2]/darktable:multi_name XmpText     5  &mine" in before_exiv2
    assert as_list(after["XMP-dc:Subject"]) == ["holiday", "dog", "places", "beach", "Animals", "Cat"]
    # places|beach was the user's already: not duplicated, not recorded as the tagger's
    assert as_list(after["XMP-lr:HierarchicalSubject"]) == ["places|beach", "darktable|format|jpg", "Animals|Cat"]
    assert as_list(after["XMP-tagger:TaggerHierarchicalSubject"]) == ["Animals|Cat"]
    assert "<!-- darktable keeps one rdf:li per history step -->" in sidecar.read_text()


def _exiv2_not_keywords(sidecar) -> list[str]:
    out = subprocess.run(["exiv2", "-q", "-pa", str(sidecar)], capture_output=True, check=False)
    return [line for line in out.stdout.decode().splitlines()
            if not line.startswith(("Xmp.dc.subject", "Xmp.lr.hierarchicalSubject", "Xmp.tagger.", "Iptc."))]


def test_rerun_is_idempotent_and_recognised(photo):
    writer = XmpWriter()
    sidecar = photo.with_name("IMG_0001.jpg.xmp")
    assert not writer.is_current(photo, photo.stat(), MODEL_A)
    writer.write(result_for(photo, ["dog", "Animals|Cat"]))
    first = sidecar.read_bytes()
    assert writer.is_current(photo, photo.stat(), MODEL_A)
    writer.write(result_for(photo, ["dog", "Animals|Cat"]))
    assert sidecar.read_bytes() == first
    assert not writer.is_current(photo, photo.stat(), MODEL_B)
    assert not XmpWriter(keyword_prefix="auto").is_current(photo, photo.stat(), MODEL_A)
    os.utime(photo, ns=(0, photo.stat().st_mtime_ns + 1_000_000_000))
    assert not writer.is_current(photo, photo.stat(), MODEL_A)


def test_model_swap_replaces_only_the_taggers_keywords(photo):
    sidecar = photo.with_name("IMG_0001.jpg.xmp")
    sidecar.write_text(DARKTABLE_SIDECAR)
    writer = XmpWriter()
    writer.write(result_for(photo, ["dog", "holiday", "Animals|Cat"], MODEL_A))
    writer.write(result_for(photo, ["Animals|Bird"], MODEL_B))
    assert _subject(sidecar) == (["holiday", "Animals", "Bird"],
                                 ["places|beach", "darktable|format|jpg", "Animals|Bird"])
    packet = parse_xmp(sidecar.read_bytes())
    assert packet.get_text(NS_TAGGER, "TaggerModel") == "beta"


def test_case_insensitive_duplicates_are_not_added(photo):
    sidecar = photo.with_name("IMG_0001.jpg.xmp")
    sidecar.write_text(DARKTABLE_SIDECAR.replace("<rdf:li>holiday</rdf:li>", "<rdf:li>Dog</rdf:li>"))
    XmpWriter().write(result_for(photo, ["dog"]))
    assert _subject(sidecar)[0] == ["Dog"]
    block = "<lr:hierarchicalSubject>\n    <rdf:Bag>\n     <rdf:li>places|beach</rdf:li>"
    assert block in sidecar.read_text()  # fields the tagger did not change keep their exact text


def test_keyword_prefix_puts_the_taggers_keywords_under_a_parent(photo):
    XmpWriter(keyword_prefix="auto").write(result_for(photo, ["dog", "Animals|Cat"]))
    assert _subject(photo.with_name("IMG_0001.jpg.xmp")) == (["auto", "dog", "Animals", "Cat"],
                                                              ["auto|dog", "auto|Animals|Cat"])


def test_unsafe_or_broken_sidecars_are_left_alone(photo):
    sidecar = photo.with_name("IMG_0001.jpg.xmp")
    writer = XmpWriter()
    for content in (BILLION_LAUGHS, b"this is not XML"):
        sidecar.write_bytes(content)
        start = time.perf_counter()
        assert not writer.is_current(photo, photo.stat(), MODEL_A)
        with pytest.raises(WriteError, match="not overwritten") as caught:
            writer.write(result_for(photo, ["dog"]))
        assert time.perf_counter() - start < 1.0
        assert caught.value.path == str(sidecar)
        assert sidecar.read_bytes() == content


def test_read_only_sidecar_is_a_write_error(photo):
    sidecar = photo.with_name("IMG_0001.jpg.xmp")
    sidecar.write_text(DARKTABLE_SIDECAR)
    os.chmod(sidecar, 0o444)
    with pytest.raises(WriteError, match="read-only"):
        XmpWriter().write(result_for(photo, ["dog"]))
    assert sidecar.read_text() == DARKTABLE_SIDECAR


def test_unicode_and_spaces_in_paths_and_keywords(tmp_path, samples):
    photo = copy_sample(samples, "jpg/Canon_40D.jpg", tmp_path / "Fotos 2024" / "ünï cödé" / "Ζ phötö.jpg")
    writer = XmpWriter()
    writer.write(result_for(photo, ["Straße", "Tiere|Hund & <Katze>"]))
    sidecar = photo.with_name("Ζ phötö.jpg.xmp")
    assert _subject(sidecar) == (["Straße", "Tiere", "Hund & <Katze>"], ["Tiere|Hund & <Katze>"])
    assert writer.is_current(photo, photo.stat(), MODEL_A)


def test_bad_keyword_prefix_is_refused():
    from tagger.errors import TaggerError

    with pytest.raises(TaggerError, match="keyword-prefix"):
        XmpWriter(keyword_prefix="auto||x")
