"""Options that several commands take, each defined once: one decorator per bundle."""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

Command = TypeVar("Command", bound=Callable)


def photo_paths(command: Command) -> Command:
    """PATH... and --exclude: what discovery (tagger.discover.iter_photos) walks and what it leaves out."""
    command = click.option("--exclude", multiple=True, metavar="GLOB",
                           help="Skip files and folders whose name or relative path matches (repeatable).")(command)
    return click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))(command)


model_option = click.option(
    "--model", "model_spec", envvar="TAGGER_MODEL", metavar="NAME|FILE",
    help="Model name in the store or path to a .onnx file [env TAGGER_MODEL; default: the only installed model].")
