"""DESIGN.md §8: every bad input is one clear line naming the file; good photos in the same run are tagged."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from tagger.cli import cli
from tests.conftest import solid_photo


def failures(output: str) -> dict[str, str]:
    """{file name: reason} from the summary's `failed:` lines."""
    found = {}
    for line in output.splitlines():
        if line.strip().startswith("failed: "):
            path, _, reason = line.strip()[len("failed: "):].partition(": ")
            found[os.path.basename(path)] = reason
    return found


@pytest.fixture
def bad_tree(tmp_path, samples):
    root = tmp_path / "bad"
    solid_photo(root / "good.jpg", (250, 5, 5))
    shutil.copy(samples / "jpg" / "Nikon_D70.jpg", root / "Nikon_D70.jpg")
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.jpg").write_text("this is a text file with a photo's name\n")
    whole = (samples / "jpg" / "gps" / "DSCN0010.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(whole[: len(whole) // 3])
    # A tiny PNG (1-bit, compresses to a few KB) that decodes to 400 megapixels: a decompression bomb.
    bomb = Image.new("1", (20000, 20000))
    bomb.save(root / "bomb.png", optimize=True)
    os.symlink(root / "gone.jpg", root / "dangling.jpg")
    return root


def test_each_bad_file_named_with_reason_and_good_ones_tagged(bad_tree, colour_model):
    result = CliRunner().invoke(cli, ["tag", str(bad_tree), "--model", str(colour_model)])
    assert result.exit_code == 3, result.output
    failed = failures(result.output)
    assert failed["empty.jpg"] == "empty file (0 bytes)"
    assert failed["notes.jpg"].startswith("not an image Pillow can read")
    assert failed["truncated.jpg"].startswith("cannot decode image: truncated or corrupt image data")
    assert "decompression bomb" in failed["bomb.png"]
    assert failed["dangling.jpg"] == "broken symbolic link"
    assert len(failed) == 5
    assert "2 tagged" in result.output
    assert json.loads((bad_tree / "good.jpg.json").read_text())["tags"][0]["tag"] == "red"
    assert (bad_tree / "Nikon_D70.jpg.json").exists()
    for name in failed:
        assert not (bad_tree / f"{name}.json").exists()
    # every failure is one line
    assert all("Traceback" not in line for line in result.output.splitlines())


def test_corrupted_camera_jpeg_does_not_hang(tmp_path, samples, colour_model):
    shutil.copy(samples / "jpg" / "corrupted.jpg", tmp_path / "corrupted.jpg")
    result = CliRunner().invoke(cli, ["tag", str(tmp_path), "--model", str(colour_model)])
    # Pillow decodes this truncated file best-effort; either way it is a clean per-file outcome.
    assert result.exit_code in (0, 3), result.output
    assert "Traceback" not in result.output


@pytest.fixture
def shared_tmp(colour_model):
    """A folder outside pytest's private tmp, so an unprivileged user can reach it."""
    folder = Path(tempfile.mkdtemp(prefix="tagger-perm-"))
    folder.chmod(0o777)
    shutil.copy(colour_model, folder / "model.onnx")
    (folder / "model.onnx").chmod(0o644)
    yield folder
    for path in folder.rglob("*"):
        if path.is_dir():
            path.chmod(0o755)
    shutil.rmtree(folder)


def tag_unprivileged(folder: Path) -> tuple[int, str]:
    """Permissions mean nothing to root (CI runs as root), so run the CLI as `nobody` there."""
    cmd = ["tag", str(folder / "photos"), "--model", str(folder / "model.onnx")]
    if os.geteuid() != 0:
        result = CliRunner().invoke(cli, cmd)
        return result.exit_code, result.output
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv to drop root privileges")
    env = dict(os.environ, TAGGER_HOME=str(folder / "home"), PYTHONPATH=str(Path(__file__).parents[1]))
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable]
    if subprocess.run([*nobody, "-c", "import tagger.cli"], env=env, cwd=folder, capture_output=True).returncode:
        pytest.skip("the checkout's Python is not reachable by an unprivileged user here")
    proc = subprocess.run([*nobody, "-m", "tagger", *cmd], capture_output=True, text=True, env=env, cwd=folder)
    return proc.returncode, proc.stdout + proc.stderr


def test_unreadable_file_and_folder(shared_tmp):
    photos = shared_tmp / "photos"
    solid_photo(photos / "ok.jpg", (250, 5, 5))
    solid_photo(photos / "locked.jpg", (250, 5, 5)).chmod(0)
    solid_photo(photos / "private" / "x.jpg", (1, 1, 1))
    (photos / "private").chmod(0)
    photos.chmod(0o777)
    code, output = tag_unprivileged(shared_tmp)
    failed = failures(output)
    assert code == 3, output
    assert failed["locked.jpg"] == "permission denied"
    assert failed["private"].startswith("folder not readable")
    assert (photos / "ok.jpg.json").exists()


def test_read_only_output_folder(shared_tmp):
    """Writing beside a photo in a read-only folder fails for that photo only, with the reason."""
    photos = shared_tmp / "photos"
    solid_photo(photos / "ro" / "a.jpg", (250, 5, 5))
    solid_photo(photos / "b.jpg", (5, 5, 250))
    (photos / "ro").chmod(0o555)
    photos.chmod(0o777)
    code, output = tag_unprivileged(shared_tmp)
    assert code == 3, output
    failed = failures(output)
    assert list(failed) == ["a.jpg.json"]
    assert "cannot write" in failed["a.jpg.json"]
    assert (photos / "b.jpg.json").exists()
    assert not list((photos / "ro").iterdir())[1:]  # no temporary left behind: only a.jpg
