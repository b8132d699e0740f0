"""`tagger bench` on a user's folder: real measurements, nothing written to the folder."""
import json

from click.testing import CliRunner

from tagger.cli import cli


def test_bench_on_a_folder_writes_nothing(photo_tree, colour_model):
    before = sorted(p.name for p in photo_tree.rglob("*"))
    result = CliRunner().invoke(cli, ["bench", str(photo_tree), "--model", str(colour_model), "--json",
                                      "--seconds", "0.5", "--batch-size", "1", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    cpu = report["devices"]["cpu"]
    assert report["photos"] == 5
    assert set(cpu["model"]) == {"1", "4"} and all(rate > 0 for rate in cpu["model"].values())
    assert cpu["decode"] > 0 and cpu["end_to_end"] > 0 and 0 < cpu["fraction_of_bound"]
    assert sorted(p.name for p in photo_tree.rglob("*")) == before
    assert "raw" not in report  # no RAW files, no RAW row


def test_bench_reports_raw_decoding_when_the_folder_has_raw_files(tmp_path, colour_model):
    import numpy as np
    import pytest

    pytest.importorskip("rawpy")
    from bench.dng import write_dng

    scene = np.full((300, 400, 3), (230, 20, 20), np.uint8)
    for i in range(3):
        write_dng(tmp_path / f"IMG_{i}.CR2", scene, preview=scene)
    write_dng(tmp_path / "bare.dng", scene)
    args = ["bench", str(tmp_path), "--model", str(colour_model), "--seconds", "0.5", "--batch-size", "2"]

    report = json.loads(CliRunner().invoke(cli, [*args, "--json"]).stdout.strip().splitlines()[-1])
    assert report["raw"]["files"] == 4
    assert report["raw"]["as_tagged"] > 0 and report["raw"]["demosaic"] > 0
    table = CliRunner().invoke(cli, args)
    assert table.exit_code == 0, table.output
    assert "RAW files (4), decode only:" in table.output and "half-size demosaic" in table.output
