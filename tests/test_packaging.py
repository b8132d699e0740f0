"""What `pip install .` ships and needs: declared dependencies and package data."""
from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# Loaded lazily by `tagger train` / `tagger export` only, from the same checkout (DESIGN.md §1).
FIRST_PARTY = {"tagger", "train", "export"}
# Imported under `except ImportError` (heif, raw) or only inside what needs them (review, cluster).
OPTIONAL = {"pillow_heif", "pi_heif", "rawpy", "flask", "werkzeug", "ray", "pyarrow"}


def _distribution(requirement: str) -> str:
    name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0)
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_modules(package: Path) -> set[str]:
    modules = set()
    for source in package.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - FIRST_PARTY


def test_every_runtime_import_is_a_declared_dependency():
    required = {_distribution(r) for r in PROJECT["dependencies"]}
    extras = {_distribution(r) for group in PROJECT["optional-dependencies"].values() for r in group}
    providers = importlib.metadata.packages_distributions()
    undeclared = {}
    for module in sorted(_imported_modules(ROOT / "tagger")):
        names = {_distribution(d) for d in providers.get(module, [module])}
        if not names & (extras if module in OPTIONAL else required):
            undeclared[module] = sorted(names)
    assert not undeclared, f"tagger/ imports these without declaring them in pyproject.toml: {undeclared}"



def test_wheel_ships_the_model_configs(tmp_path):
    """`pip install .` must carry train/model_configs/*.json: `--backbone tagger-tiny` reads them."""
    source = tmp_path / "source"  # a copy: the build leaves no build/ or egg-info in the checkout
    for package in ("tagger", "train", "export"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    # The venv's setuptools when it has one: no download, about a second.
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-q", *isolation,
                    "-w", str(tmp_path / "wheel")], check=True, capture_output=True)
    (wheel,) = (tmp_path / "wheel").glob("tagger-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    configs = {path.relative_to(ROOT).as_posix() for path in (ROOT / "train" / "model_configs").glob("*.json")}
    assert "train/model_configs/tagger-tiny.json" in configs
    assert configs <= shipped, sorted(configs - shipped)
