"""Whole-process behaviour: Ctrl-C mid-run, resume, and keeping torch out of the runtime."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def test_cli_import_leaves_torch_out():
    code = ("import sys, tagger.cli, tagger.commands.tag, tagger.commands.models, tagger.tagging, tagger.cluster; "
            "from tagger.cli import cli; [cli.get_command(None, n) for n in ('tag','train','export','untag')]; "
            # Loading the train/export commands (as --help does) brings their command modules only.
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'open_clip', 'torchvision', "
            "'train', 'export', 'onnx', 'ray', 'pyarrow') and m not in ('train', 'train.command', 'export', 'export.command')); "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_help_and_version():
    proc = subprocess.run([sys.executable, "-m", "tagger", "--help"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0
    for command in ("tag", "models"):
        assert command in proc.stdout
    version = subprocess.run([sys.executable, "-m", "tagger", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("tagger, version ")


def test_sigint_leaves_no_partial_sidecar_and_next_run_resumes(tmp_path, colour_model):
    rng = np.random.default_rng(0)
    photos = tmp_path / "many"
    photos.mkdir()
    for i in range(300):  # noisy photos decode slowly enough to interrupt mid-folder
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(photos / f"p{i:03}.jpg", quality=95)
    cmd = [sys.executable, "-m", "tagger", "tag", str(photos), "--model", str(colour_model),
           "--batch-size", "1", "--workers", "1", "--quiet"]
    env = dict(os.environ, TAGGER_HOME=str(tmp_path / "home"))
    # A test run started in the background (`pytest &`) ignores SIGINT, and a child would inherit that.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while len(list(photos.glob("*.json"))) < 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Interrupted:" in err
    done = sorted(photos.glob("*.json"))
    assert 5 <= len(done) < 300, "the run was not interrupted mid-folder"
    assert not [p for p in photos.iterdir() if p.name.startswith(".")], "temporary file left behind"
    for sidecar in done:
        json.loads(sidecar.read_text())  # every sidecar present is whole

    again = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr
    assert f"{300 - len(done)} tagged, {len(done)} skipped" in again.stderr
    assert len(list(photos.glob("*.json"))) == 300
