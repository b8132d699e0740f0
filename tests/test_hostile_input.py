"""Issue 12, hangs and crashes: a dead exiftool, FIFOs and endless files named like sidecars, names
and documents built to crash the run. Each costs one line in the summary, never the run."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tagger.cli import cli
from tagger.errors import WriteError
from tagger.exiftool import ExifTool, ExifToolMissing
from tests.conftest import solid_photo
from tests.metadata_util import copy_sample, exiftool_json, pixels
from tests.test_bad_input import failures, shared_tmp  # noqa: F401 (a fixture)

needs_exiftool = pytest.mark.skipif(shutil.which("exiftool") is None, reason="needs exiftool (libimage-exiftool-perl)")


def tag(*args) -> subprocess.CompletedProcess:
    """The real command in its own process, so a hang is a timeout, not a stuck test run."""
    return subprocess.run([sys.executable, "-m", "tagger", "tag", *map(str, args)], capture_output=True,
                          timeout=120)


def untag(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tagger", "untag", *map(str, args)], capture_output=True,
                          timeout=120)


def summary_failures(result: subprocess.CompletedProcess) -> dict[str, str]:
    return failures(result.stderr.decode("utf-8", "replace"))


# -- 9. exiftool dies -------------------------------------------------------------------------------
@needs_exiftool
def test_a_killed_exiftool_costs_one_photo_and_is_restarted(tmp_path, samples):
    photo = copy_sample(samples, "jpg/Canon_40D.jpg", tmp_path / "IMG_1.jpg")
    with ExifTool() as tool:
        # Stopped, then killed half a second into the command: it dies in the middle of it.
        os.kill(tool.pid, signal.SIGSTOP)
        threading.Timer(0.5, os.kill, (tool.pid, signal.SIGKILL)).start()
        started = time.monotonic()
        with pytest.raises(WriteError, match="exiftool ended unexpectedly"):
            tool.read_one(photo, ["File:FileType"])
        assert time.monotonic() - started < 10
        assert tool.read_one(photo, ["File:FileType"])["File:FileType"] == "JPEG"


@needs_exiftool
def test_an_exiftool_that_cannot_be_restarted_stops_the_run(tmp_path, samples, colour_model):
    wrapper = tmp_path / "exiftool"
    wrapper.write_text(f"#!/bin/sh\nexec {shutil.which('exiftool')} \"$@\"\n")
    wrapper.chmod(0o755)
    photo = copy_sample(samples, "jpg/Canon_40D.jpg", tmp_path / "photos" / "IMG_1.jpg")
    with ExifTool(str(wrapper)) as tool:
        wrapper.write_text("#!/bin/sh\nexit 1\n")  # e.g. uninstalled mid-run
        os.kill(tool.pid, signal.SIGKILL)
        with pytest.raises((WriteError, ExifToolMissing)):  # the photo it died on
            tool.read_one(photo, ["File:FileType"])
        with pytest.raises(ExifToolMissing, match="did not start"):  # fatal: no photo can be written now
            tool.read_one(photo, ["File:FileType"])


@needs_exiftool
@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="POSIX signals")
def test_an_exiftool_that_stops_answering_is_stopped_after_the_timeout():
    from tagger.exiftool_process import ExifToolDied, StayOpenProcess

    process = StayOpenProcess(shutil.which("exiftool"), None, [])
    os.kill(process.pid, signal.SIGSTOP)  # alive but silent: no end of file will ever come
    started = time.monotonic()
    with pytest.raises(ExifToolDied, match="no answer within 1 s"):
        process.execute(["-ver"], timeout=1)
    assert time.monotonic() - started < 5 and not process.running


def _exiftool_children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"exiftool" in cmdline:
            found.append(int(entry.name))
    return found


@needs_exiftool
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds exiftool through /proc")
def test_exiftool_killed_mid_run_the_run_goes_on_and_ends(tmp_path, samples, colour_model):
    folder = tmp_path / "photos"
    photos = [copy_sample(samples, "jpg/Canon_40D.jpg", folder / f"IMG_{i:02d}.jpg") for i in range(30)]
    image = pixels(photos[0])
    run = subprocess.Popen([sys.executable, "-m", "tagger", "tag", str(folder), "--model", str(colour_model),
                            "--write", "embed", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killed = 0
    deadline = time.monotonic() + 60
    while killed < 2 and run.poll() is None and time.monotonic() < deadline:
        for pid in _exiftool_children(run.pid):
            time.sleep(0.3)  # let it get into the photos
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    assert killed, "exiftool was never seen running"
    try:
        _out, err = run.communicate(timeout=60)  # within seconds, never a spin
    finally:
        run.kill()
    assert run.returncode in (0, 3), err.decode()
    for line in err.decode().splitlines():
        if "failed:" in line:
            assert "exiftool ended unexpectedly" in line
    for photo in photos:
        assert np.array_equal(pixels(photo), image), photo.name
    again = tag(folder, "--model", colour_model, "--write", "embed", "-q")
    assert again.returncode == 0, again.stderr.decode()
    assert all("XMP-tagger:TaggerModel" in entry for entry in exiftool_json(*photos))


# -- 10. FIFOs, devices and huge files named like sidecars ------------------------------------------
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
@pytest.mark.parametrize("writer,sidecar", [("json", "IMG.jpg.json"), ("xmp", "IMG.jpg.xmp")])
def test_a_fifo_named_like_a_sidecar_is_refused_not_waited_on(tmp_path, colour_model, writer, sidecar):
    solid_photo(tmp_path / "IMG.jpg", (250, 5, 5))
    solid_photo(tmp_path / "zz.jpg", (250, 5, 5))
    os.mkfifo(tmp_path / sidecar)
    result = tag(tmp_path, "--model", colour_model, "--write", writer)
    assert result.returncode == 3, result.stderr.decode()
    assert "not a regular file" in summary_failures(result)[sidecar]
    assert "1 tagged" in result.stderr.decode()
    if writer == "xmp":
        result = untag(tmp_path, "--no-embedded")
        assert result.returncode == 3 and "not a regular file" in summary_failures(result)[sidecar]


@pytest.mark.parametrize("make", ["dev_zero", "sparse"])
def test_endless_or_huge_sidecars_are_refused_before_reading(tmp_path, colour_model, make):
    solid_photo(tmp_path / "IMG.jpg", (250, 5, 5))
    for name in ("IMG.jpg.json", "IMG.jpg.xmp"):
        if make == "dev_zero":
            os.symlink("/dev/zero", tmp_path / name)
        else:
            with open(tmp_path / name, "wb") as fh:
                fh.truncate(3 * 1024 ** 3)  # 3 GB, sparse: costs no disk, would cost 3 GB of memory
    started = time.monotonic()
    result = tag(tmp_path, "--model", colour_model, "--write", "json,xmp")
    assert time.monotonic() - started < 60
    assert result.returncode == 3, result.stderr.decode()
    failed = summary_failures(result)
    assert set(failed) == {"IMG.jpg.json", "IMG.jpg.xmp"}
    assert all(("not a regular file" if make == "dev_zero" else "larger than 32 MB") in r for r in failed.values())


# -- 11. names and documents that crashed the run ---------------------------------------------------
@needs_exiftool
def test_odd_names_and_deep_documents_are_one_line_each(tmp_path, samples, colour_model):
    folder = tmp_path / "photos"
    folder.mkdir()
    bad_name = folder / os.fsdecode(b"a_latin1_\xe9t\xe9.jpg")
    long_name = folder / ("b_" + "x" * 244 + ".jpg")  # 250 bytes: the sidecar's name would be too long
    solid_photo(bad_name, (250, 5, 5))
    solid_photo(long_name, (250, 5, 5))
    deep_xmp = solid_photo(folder / "c_deep_xmp.jpg", (250, 5, 5))
    deep_json = solid_photo(folder / "d_deep_json.jpg", (250, 5, 5))
    good = solid_photo(folder / "z_good.jpg", (250, 5, 5))
    depth = 200_000
    (folder / "c_deep_xmp.jpg.xmp").write_text(
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="">' + "<a>" * depth + "</a>" * depth +
        '</rdf:Description></rdf:RDF></x:xmpmeta>')
    (folder / "d_deep_json.jpg.json").write_text("[" * 100_000 + "]" * 100_000)

    for writers in ("json", "xmp", "json,xmp"):
        result = tag(folder, "--model", colour_model, "--write", writers, "--force")
        err = result.stderr.decode("utf-8", "replace")
        assert result.returncode == 3, err
        assert "Traceback" not in err
        failed = summary_failures(result)
        if "xmp" in writers:
            assert "c_deep_xmp.jpg.xmp" in failed and "nested" in failed["c_deep_xmp.jpg.xmp"]
            assert any(name.startswith("b_xxx") and "too long" in reason for name, reason in failed.items())
        if "json" in writers:
            assert "d_deep_json.jpg.json" in failed
        assert all(line.count("failed:") <= 1 for line in err.splitlines())
    assert json.loads((folder / "z_good.jpg.json").read_text())["tags"][0]["tag"] == "red"
    assert (folder / "z_good.jpg.xmp").exists()
    sidecar = bad_name.with_name(bad_name.name + ".json")
    assert json.loads(sidecar.read_bytes())["file"] == "a_latin1_\\xe9t\\xe9.jpg"
    assert good.exists() and deep_xmp.exists() and deep_json.exists()


def test_untag_still_cleans_the_sidecar_of_a_photo_it_may_not_read(shared_tmp):
    """The per-photo lock cannot open such a photo: it locks the folder instead, and the sidecar is cleaned."""
    from tagger.writers.xmp_sidecar import XmpWriter
    from tests.metadata_util import result_for

    folder = shared_tmp / "photos"
    photo = solid_photo(folder / "IMG.jpg", (250, 5, 5))
    XmpWriter().write(result_for(photo, ["dog"]))
    folder.chmod(0o777)
    photo.chmod(0)
    if os.geteuid() != 0:
        result = CliRunner().invoke(cli, ["untag", "--no-embedded", str(folder)])
        code, output = result.exit_code, result.output
    else:  # permissions mean nothing to root: run it as `nobody`
        if shutil.which("setpriv") is None:
            pytest.skip("needs setpriv to drop root privileges")
        env = dict(os.environ, TAGGER_HOME=str(shared_tmp / "home"), PYTHONPATH=str(Path(__file__).parents[1]))
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                               "-m", "tagger", "untag", "--no-embedded", str(folder)],
                              capture_output=True, text=True, env=env, cwd=shared_tmp)
        code, output = proc.returncode, proc.stdout + proc.stderr
    assert code == 0, output
    assert not photo.with_name("IMG.jpg.xmp").exists()
