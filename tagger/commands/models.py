"""`tagger models`: the models installed in the store."""
from __future__ import annotations

import click

from tagger.errors import ModelError
from tagger.modelfile import precision_of, read_model_info
from tagger.store import installed_models, models_dir


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per model.")
def models(as_json: bool) -> None:
    """List installed models with their tag count, backbone and creation date."""
    import json

    paths = installed_models()
    if not paths:
        click.echo(f"No models installed in {models_dir()}. Make one with `tagger export`.", err=True)
        return
    for path in paths:
        try:
            info = read_model_info(path)
        except ModelError as exc:
            click.echo(f"{path.stem}\t(unusable: {exc.reason})")
            continue
        summary = info.model
        if as_json:
            click.echo(json.dumps({"name": path.stem, "path": str(path), "labels": len(info.labels),
                                   "precision": precision_of(info),
                                   "backbone": summary.get("backbone"), "created": summary.get("created"),
                                   "model": summary}, ensure_ascii=False))
        else:
            click.echo(f"{path.stem}\t{len(info.labels)} tags\t{summary.get('backbone', '?')}\t"
                       f"{summary.get('created', '?')}\t{precision_of(info)}")
