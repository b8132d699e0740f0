"""tagger: tag your photos with your own tag vocabulary.

Train once on photos you already tagged (`tagger train`), export one ONNX model (`tagger export`),
then tag everything else fast on a laptop CPU (`tagger tag ~/Photos`).
"""
from __future__ import annotations

import importlib
import sys

import click

from tagger import __version__

# name -> "module:attribute". Command modules load only when used (or listed by --help), so
# `tagger tag` never pays for training code, and the binary can leave torch out entirely.
COMMANDS = {
    "tag": "tagger.commands.tag:tag",
    "untag": "tagger.commands.untag:untag",
    "models": "tagger.commands.models:models",
    "train": "tagger.commands.train:train",
    "export": "tagger.commands.export:export",
    "bench": "tagger.commands.bench:bench",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if self._load(name) is not None]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return self._load(name)

    @staticmethod
    def _load(name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # command not built yet in this version
                return None
            raise
        return getattr(module, attr)


@click.group(cls=LazyGroup, help=__doc__, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="tagger")
def cli() -> None:
    pass


def main() -> None:
    cli(prog_name="tagger")


if __name__ == "__main__":
    sys.exit(main())
