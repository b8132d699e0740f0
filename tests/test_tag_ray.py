"""`tagger tag --ray` on a local Ray (2 CPUs, no network): the one-machine run's outputs, summary and exit."""
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tagger.cli import cli

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason='the Ray path needs pip install ".[cluster]"')


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()


def _library(root: Path, samples: Path, n_generated: int) -> Path:
    """The camera samples (JPEG, HEIC, their EXIF orientations) and generated photos of many colours."""
    shutil.copytree(samples, root / "camera", ignore=shutil.ignore_patterns("README*", "*.md"))
    rng = np.random.default_rng(0)
    for i in range(n_generated):
        folder = root / "generated" / f"{i // 50:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 128, 3, dtype=np.uint8)  # a colour cast, so tags differ between photos
        Image.fromarray(rng.integers(0, 128, (24, 32, 3), dtype=np.uint8) + base).save(folder / f"p{i:03d}.png")
    return root


def _sidecars(root: Path) -> dict[str, dict]:
    return {str(p.relative_to(root)): json.loads(p.read_text(encoding="utf-8")) for p in sorted(root.rglob("*.json"))}


def _tag(root: Path, model: Path, *extra):
    return CliRunner().invoke(cli, ["tag", str(root), "--model", str(model), "-q", *extra])


def test_without_ray_installed_the_command_says_which_extra(tmp_path, colour_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what an install without the `cluster` extra sees
    result = _tag(tmp_path, colour_model, "--ray")
    assert result.exit_code == 1
    assert 'pip install "tagger[cluster]"' in result.output


@needs_ray
@pytest.mark.slow
def test_ray_run_writes_what_one_machine_writes_skips_on_rerun_and_names_bad_files(
        local_ray, tmp_path, samples, colour_model):
    one = _library(tmp_path / "one", samples, 200)
    on_ray = _library(tmp_path / "ray", samples, 200)
    n_photos = sum(1 for p in one.rglob("*") if p.is_file())

    expected = _tag(one, colour_model)
    assert expected.exit_code == 0, expected.output
    result = _tag(on_ray, colour_model, "--ray")
    assert result.exit_code == 0, result.output
    assert "Ray cluster of 2 CPUs" in result.output
    assert f"{n_photos} tagged, 0 skipped (up to date), 0 failed" in result.output

    # Identical sidecars: same tags in the same order, scores within 1e-6, the same photo stamps.
    want, got = _sidecars(one), _sidecars(on_ray)
    assert len(got) == n_photos and got.keys() == want.keys()
    for name, doc in want.items():
        other = got[name]
        assert [t["tag"] for t in other["tags"]] == [t["tag"] for t in doc["tags"]], name
        assert other["scores"].keys() == doc["scores"].keys()
        for tag, score in doc["scores"].items():
            assert abs(other["scores"][tag] - score) <= 1e-6, (name, tag)
        photo = on_ray / Path(name).with_suffix("")
        assert other["mtime"] == photo.stat().st_mtime  # each copy's own stamp (copies differ)
        assert {k: v for k, v in other.items() if k not in ("tags", "scores", "mtime")} == \
            {k: v for k, v in doc.items() if k not in ("tags", "scores", "mtime")}, name

    # A second run finds every output up to date and decodes nothing.
    again = _tag(on_ray, colour_model, "--ray")
    assert again.exit_code == 0, again.output
    assert f"0 tagged, {n_photos} skipped (up to date), 0 failed" in again.output

    # A photo that cannot be decoded is named with its reason; the run goes on; exit status 3.
    bad = on_ray / "generated" / "00" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    (on_ray / "generated" / "01" / "p050.png").touch()  # changed: tagged again beside the bad one
    broken = _tag(on_ray, colour_model, "--ray")
    assert broken.exit_code == 3, broken.output
    assert f"1 tagged, {n_photos - 1} skipped (up to date), 1 failed" in broken.output
    assert f"failed: {bad}: " in broken.output
    assert not (bad.parent / "broken.jpg.json").exists()

