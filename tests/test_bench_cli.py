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
