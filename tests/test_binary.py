"""The packaged binary (tagger.spec), built by scripts/build_binary.sh and run as a user runs it.

The binary runs with a bare environment (no venv on PATH, no PYTHONPATH) from a scratch folder, so
it can only work if everything it needs is inside dist/tagger/.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.onnx_models import COLOUR_LABELS

pytestmark = [pytest.mark.binary, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = ROOT / "scripts" / "build_binary.sh"
BUNDLE = ROOT / "dist" / "tagger"
BINARY = BUNDLE / "tagger"
BUILD_VENV_PYTHON = ROOT / "build" / "binary-venv" / "bin" / "python"
EXIT_NO_PYINSTALLER = 77  # scripts/build_binary.sh
SIZE_BUDGET_MB = 150  # issue 6
TRAINING_MODULES = ("torch", "torchvision", "open_clip", "timm", "triton", "onnx", "onnxscript", "train", "export")
EXIT_SOME_FAILED = 3
TRAIN_EXTRAS = 'pip install "tagger[train]"'


@pytest.fixture(scope="session")
def binary() -> Path:
    """Builds dist/tagger/ (seconds when nothing changed: the script keeps its venv and bundle)."""
    proc = subprocess.run(["bash", str(BUILD_SCRIPT)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=900)
    log = "\n".join(line for line in (proc.stdout + proc.stderr).splitlines() if "is ignored" not in line)
    if proc.returncode == EXIT_NO_PYINSTALLER:
        pytest.skip(f"PyInstaller cannot be installed here: {log[-500:]}")
    assert proc.returncode == 0, f"scripts/build_binary.sh failed ({proc.returncode}):\n{log[-4000:]}"
    assert os.access(BINARY, os.X_OK)
    return BINARY


def run_binary(binary: Path, *args: str, home: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "TAGGER_HOME": str(home / "tagger"),
           "LANG": "C.UTF-8"}
    return subprocess.run([str(binary), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def image_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in {".jpg", ".jpeg", ".heic"})


def test_tags_camera_photos_like_the_python_package(binary, samples, colour_model, tmp_path):
    photos = tmp_path / "photos"
    shutil.copytree(samples / "jpg", photos)
    (photos / "empty.jpg").write_bytes(b"")
    (photos / "notes.jpg").write_text("not a photo\n")
    broken = {"empty.jpg", "notes.jpg"}
    reference = tmp_path / "reference"
    shutil.copytree(photos, reference)

    result = run_binary(binary, "tag", str(photos), "--model", str(colour_model), "-q", home=tmp_path, cwd=tmp_path)

    assert result.returncode == EXIT_SOME_FAILED, result.stderr
    assert "Traceback" not in result.stderr
    failed_lines = [line for line in result.stderr.splitlines() if "failed:" in line]
    assert sorted(Path(line.split("failed:", 1)[1].split(":", 1)[0].strip()).name for line in failed_lines) \
        == sorted(broken), result.stderr
    good = [p for p in image_files(photos) if p.name not in broken]
    assert len(good) > 40
    assert not [p for p in image_files(photos) if p.name in broken and p.with_name(p.name + ".json").exists()]

    # The same photos through the Python package: the binary must decode and score exactly alike.
    python = subprocess.run([sys.executable, "-m", "tagger", "tag", str(reference), "--model", str(colour_model),
                             "-q"], capture_output=True, text=True, timeout=300)
    assert python.returncode == EXIT_SOME_FAILED, python.stderr
    for photo in good:
        sidecar = json.loads(photo.with_name(photo.name + ".json").read_text())
        expected = json.loads((reference / photo.relative_to(photos)).with_name(photo.name + ".json").read_text())
        assert sidecar["file"] == photo.name
        assert sidecar["model"] == expected["model"] and sidecar["model"]["name"] == "colours"
        assert list(sidecar["scores"]) == COLOUR_LABELS
        assert sidecar["scores"] == expected["scores"], photo.name
        assert sidecar["tags"] == expected["tags"], photo.name

    rerun = run_binary(binary, "tag", str(photos), "--model", str(colour_model), "-q", home=tmp_path, cwd=tmp_path)
    assert rerun.returncode == EXIT_SOME_FAILED
    assert f"0 tagged, {len(good)} skipped" in rerun.stderr, rerun.stderr


def exiftool_keywords(path: Path) -> dict:
    out = subprocess.run(["exiftool", "-j", "-XMP-dc:Subject", "-XMP-lr:HierarchicalSubject", str(path)],
                         capture_output=True, text=True, check=True)
    entry = json.loads(out.stdout)[0]
    return {key: value if isinstance(value, list) else [value] for key, value in entry.items()
            if key in ("Subject", "HierarchicalSubject")}


def test_writes_xmp_sidecars_and_embedded_keywords_with_exiftool_from_path(binary, samples, colour_model,
                                                                            tmp_path):
    if shutil.which("exiftool") is None:
        pytest.fail("exiftool is not installed: run scripts/install-system-deps.sh")
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (96, 64), (250, 5, 5)).save(photos / "red.jpg")
    Image.new("RGB", (96, 64), (250, 250, 250)).save(photos / "white.jpg")
    shutil.copyfile(samples / "jpg" / "Canon_40D.jpg", photos / "Canon_40D.jpg")  # writable, unlike the samples

    result = run_binary(binary, "tag", str(photos), "--model", str(colour_model), "--write", "json,xmp,embed", "-q",
                        home=tmp_path, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert exiftool_keywords(photos / "red.jpg")["Subject"] == ["red"]
    assert exiftool_keywords(photos / "red.jpg.xmp")["Subject"] == ["red"]
    assert "Light|bright" in exiftool_keywords(photos / "white.jpg")["HierarchicalSubject"]
    assert "Light|bright" in exiftool_keywords(photos / "white.jpg.xmp")["HierarchicalSubject"]
    canon_tags = {t["tag"] for t in json.loads((photos / "Canon_40D.jpg.json").read_text())["tags"]}
    assert set(exiftool_keywords(photos / "Canon_40D.jpg").get("HierarchicalSubject", [])) \
        | set(exiftool_keywords(photos / "Canon_40D.jpg").get("Subject", [])) >= canon_tags

    untag = run_binary(binary, "untag", str(photos), home=tmp_path, cwd=tmp_path)

    assert untag.returncode == 0, untag.stderr
    for photo in ("red.jpg", "white.jpg", "Canon_40D.jpg"):
        assert exiftool_keywords(photos / photo) == {}, photo


def test_heic_photos_are_decoded(binary, colour_model, tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif", reason="the test venv makes the HEIC with pillow-heif")
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    pillow_heif.register_heif_opener()
    Image.new("RGB", (96, 64), (5, 5, 250)).save(photos / "IMG_0001.HEIC", format="HEIF")

    result = run_binary(binary, "tag", str(photos), "--model", str(colour_model), "-q", home=tmp_path, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    sidecar = json.loads((photos / "IMG_0001.HEIC.json").read_text())
    assert [t["tag"] for t in sidecar["tags"]] == ["blue"]


def test_raw_photos_are_decoded_and_proprietary_ones_never_written_into(binary, colour_model, tmp_path):
    import numpy as np

    from bench.dng import write_dng

    photos = tmp_path / "photos"
    photos.mkdir()
    blue = np.full((120, 160, 3), (20, 20, 230), np.uint8)
    write_dng(photos / "IMG_0001.dng", blue, preview=blue, orientation=6)
    write_dng(photos / "IMG_0002.CR2", blue)  # no preview: demosaiced by the bundled LibRaw
    original = (photos / "IMG_0002.CR2").read_bytes()

    result = run_binary(binary, "tag", str(photos), "--model", str(colour_model), "--write", "json,embed", "-q",
                        home=tmp_path, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    for name in ("IMG_0001.dng", "IMG_0002.CR2"):
        assert [t["tag"] for t in json.loads((photos / f"{name}.json").read_text())["tags"]] == ["blue"], name
    assert (photos / "IMG_0002.CR2").read_bytes() == original
    assert "skipped:" in result.stderr and "IMG_0002.CR2" in result.stderr
    if shutil.which("exiftool"):
        assert exiftool_keywords(photos / "IMG_0001.dng")["Subject"] == ["blue"]


def test_version_is_the_package_version(binary, tmp_path):
    result = run_binary(binary, "--version", home=tmp_path, cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"tagger, version {importlib.metadata.version('tagger')}"


def test_models_lists_the_store(binary, colour_model, tmp_path):
    empty = run_binary(binary, "models", home=tmp_path, cwd=tmp_path)
    assert empty.returncode == 0 and "No models installed" in empty.stderr

    store = tmp_path / "tagger" / "models"
    store.mkdir(parents=True)
    shutil.copy(colour_model, store / "colours.onnx")
    (store / "junk.onnx").write_bytes(b"not a model")
    result = run_binary(binary, "models", home=tmp_path, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split("\t")[:3] == ["colours", f"{len(COLOUR_LABELS)} tags", "mean-colour"]
    assert lines[1].startswith("junk\t(unusable:")


def test_review_page_is_served_from_the_binary(binary, colour_model, tmp_path):
    import urllib.request

    photos = tmp_path / "photos"
    photos.mkdir()
    from PIL import Image

    Image.new("RGB", (40, 30), (5, 5, 250)).save(photos / "blue.jpg")
    assert run_binary(binary, "tag", str(photos), "--model", str(colour_model), "-q", home=tmp_path,
                      cwd=tmp_path).returncode == 0
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path), "TAGGER_HOME": str(tmp_path / "tagger"),
           "LANG": "C.UTF-8"}
    proc = subprocess.Popen([str(binary), "review", str(photos), "--model", str(colour_model), "--no-browser"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), proc.stderr.read() if proc.poll() is not None else url
        with urllib.request.urlopen(url, timeout=30) as page:
            assert b"tagger review" in page.read()
        base, token = url.split("/?token=")
        with urllib.request.urlopen(f"{base}/thumb/0/blue.jpg?token={token}", timeout=30) as thumb:
            assert thumb.read()[:2] == b"\xff\xd8"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize("command", ["train", "export"])
def test_training_commands_say_how_to_get_them(binary, command, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("red\nblue\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "run").mkdir()
    args = {"train": ["--labels", str(labels), "--data", str(tmp_path / "data")], "export": [str(tmp_path / "run")]}

    result = run_binary(binary, command, *args[command], home=tmp_path, cwd=tmp_path)

    assert result.returncode == 1, result.stdout + result.stderr
    assert TRAIN_EXTRAS in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_bundle_holds_no_training_code_and_fits_the_budget(binary):
    files = [p for p in BUNDLE.rglob("*")]
    torch_like = [p for p in files if p.name.startswith(("libtorch", "libc10", "libtriton"))
                  or (p.is_dir() and p.name in TRAINING_MODULES)]
    assert not torch_like, torch_like

    # Python modules sit in the PYZ archive inside the executable: list it with PyInstaller's reader.
    listing = subprocess.run(
        [str(BUILD_VENV_PYTHON), "-c",
         "import sys; from PyInstaller.archive.readers import CArchiveReader as R; "
         "print('\\n'.join(R(sys.argv[1]).open_embedded_archive('PYZ.pyz').toc))", str(binary)],
        capture_output=True, text=True, check=True)
    modules = set(listing.stdout.split())
    assert {"tagger.cli", "tagger.commands.tag", "tagger.commands.models", "tagger.commands.untag",
            "tagger.writers.json_sidecar", "tagger.writers.xmp_sidecar", "tagger.writers.embed",
            "tagger.exiftool_process", "tagger.locking", "onnxruntime", "PIL.Image", "pi_heif",
            "defusedxml.minidom", "tagger.raw", "rawpy"} <= modules
    assert not sorted(m for m in modules if m.split(".")[0] in TRAINING_MODULES)

    size_mb = sum(p.stat().st_size for p in files if p.is_file() and not p.is_symlink()) / 2**20
    assert size_mb <= SIZE_BUDGET_MB, f"dist/tagger is {size_mb:.0f} MB"
