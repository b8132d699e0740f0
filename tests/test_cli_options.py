"""Options several commands share, exit statuses and device names: each defined in one place."""
from __future__ import annotations

import ast
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from tagger.cli import cli
from tagger.modelfile import DEVICE_PROVIDERS

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {path: ast.parse(path.read_text()) for path in sorted((ROOT / "tagger").rglob("*.py"))}


def _param(command: str, name: str) -> dict:
    (param,) = [p for p in cli.get_command(None, command).params if p.name == name]
    return param.to_info_dict()


@pytest.mark.parametrize("name, commands", [
    ("model_spec", ["tag", "bench"]),
    ("paths", ["tag", "untag"]),
    ("exclude", ["tag", "untag"]),
])
def test_an_option_shared_by_commands_reads_the_same_in_each(name, commands):
    first, *others = (_param(command, name) for command in commands)
    assert all(other == first for other in others)


def test_device_choices_are_the_devices_the_runtime_maps():
    assert set(_param("tag", "device")["type"]["choices"]) == {"auto", *DEVICE_PROVIDERS}


def test_each_exit_status_is_defined_in_one_module():
    defined = defaultdict(list)
    for path, tree in SOURCES.items():
        for node in tree.body:
            targets = [t for a in ([node] if isinstance(node, ast.Assign) else []) for t in a.targets]
            for target in targets:
                for name in target.elts if isinstance(target, ast.Tuple) else [target]:
                    if isinstance(name, ast.Name) and name.id.startswith("EXIT_"):
                        defined[name.id].append(path.relative_to(ROOT).as_posix())
    assert defined and {name: paths for name, paths in defined.items() if len(paths) > 1} == {}


def test_each_accelerator_provider_is_named_in_one_place():
    named = Counter(node.value for tree in SOURCES.values() for node in ast.walk(tree)
                    if isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and node.value.endswith("ExecutionProvider") and node.value != "CPUExecutionProvider")
    assert named and {provider: n for provider, n in named.items() if n > 1} == {}
