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
    "review": "tagger.commands.review:review",
    # These live with the training code; the binary and a runtime-only install lack it.
    "train": "train.command:train",
    "export": "export.command:export",
    "report": "train.command:report",
    "bench": "tagger.commands.bench:bench",
}


# What `pip install "tagger[train]"` brings, plus the train/ and export/ packages the binary leaves out.
TRAINING_MODULES = frozenset({"torch", "torchvision", "open_clip", "timm", "onnx", "onnxscript", "onnx_ir",
                              "train", "export"})


def _training_extras_missing(exc: ModuleNotFoundError, command: str | None) -> click.ClickException | None:
    """The one-line answer for a command whose training dependencies are not here (binary, runtime install)."""
    if (exc.name or "").split(".")[0] not in TRAINING_MODULES:
        return None
    if getattr(sys, "frozen", False):
        return click.ClickException(f"`tagger {command}` is not in the tagger binary, which tags photos only: "
                                    'training and export need Python and pip install "tagger[train]"')
    return click.ClickException(f"`tagger {command}` needs the training extras (missing: {exc.name}): "
                                'pip install "tagger[train]"')


class LazyGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as exc:  # a command importing train/export/torch inside itself
            answer = _training_extras_missing(exc, ctx.invoked_subcommand)
            if answer is None:
                raise
            raise answer from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except ModuleNotFoundError as exc:
            answer = _training_extras_missing(exc, name)
            if answer is None:
                raise
            return _unavailable(name, answer)


def _unavailable(name: str, answer: click.ClickException) -> click.Command:
    """A stand-in for a command whose code is not installed: any arguments, one line saying what to do."""
    def fail() -> None:
        raise answer

    return click.Command(name, callback=fail, help=f"Not installed here: {answer.message}",
                         context_settings={"ignore_unknown_options": True, "allow_extra_args": True})


@click.group(cls=LazyGroup, help=__doc__, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="tagger")
def cli() -> None:
    pass


def main() -> None:
    cli(prog_name="tagger")


if __name__ == "__main__":
    sys.exit(main())
