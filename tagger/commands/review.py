"""`tagger review PATH...`: accept or reject the tagger's suggestions on a local page.

Decisions go to each photo's sidecar JSON ("labels", "not_labels"; tagger.decisions) and feed the
next `tagger train`; a rejected tag is never written for that photo again by `tagger tag`.
"""
from __future__ import annotations

import logging
import secrets
import sys
import webbrowser
from collections import Counter

import click

from tagger.errors import ModelError

HOST = "127.0.0.1"  # never another interface: the page can change the user's labels


def _model_info(spec: str | None, names: Counter):
    """The model's thresholds and training counts: --model, else the model named in the sidecars
    when the store has it; None (thresholds read off the sidecars) otherwise."""
    from tagger.modelfile import read_model_info
    from tagger.store import resolve_model

    candidates = [spec] if spec else [name for name, _ in names.most_common(1) if name]
    for candidate in candidates:
        try:
            return read_model_info(resolve_model(candidate))
        except ModelError as exc:
            if spec:
                raise click.ClickException(str(exc)) from None
    return None


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=str))
@click.option("--model", "model_spec", envvar="TAGGER_MODEL", metavar="NAME|FILE",
              help="The model whose thresholds and training counts order the page [env TAGGER_MODEL; default: "
                   "the model the sidecars name, when it is in the store; else thresholds read off the sidecars].")
@click.option("--port", type=click.IntRange(0, 65535), default=0,
              help="Port on 127.0.0.1 [default: a free one].")
@click.option("--no-browser", is_flag=True, help="Print the URL only; do not open a browser.")
def review(paths: tuple[str, ...], model_spec: str | None, port: int, no_browser: bool) -> None:
    """Review the tags under PATH... in your browser, one tag at a time.

    Serves a page on 127.0.0.1 (the URL, with its access token, is the first line printed) showing
    photos that `tagger tag` tagged, rarest tags first and the photos nearest each tag's threshold
    first. Keys: y accept, n reject, u undo, t add a missing tag, arrows move, [ ] change tag.
    Needs the review extra: pip install "tagger[review]". Ctrl-C stops it.
    """
    try:
        from werkzeug.serving import make_server

        from tagger.review.app import create_app
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in ("flask", "werkzeug", "jinja2", "itsdangerous", "markupsafe",
                                                   "blinker"):
            raise click.ClickException(f'`tagger review` needs Flask (missing: {exc.name}): '
                                       'pip install "tagger[review]"') from None
        raise
    from tagger.review.queue import load_review_set

    review_set = load_review_set(list(paths))
    info = _model_info(model_spec, review_set.model_names())
    if info is not None:
        review_set.use_model(info)
    token = secrets.token_urlsafe(24)
    # The Host check needs the port, known only once bound: the app reads the set it is given.
    allowed_hosts: set[str] = set()
    try:
        server = make_server(HOST, port, create_app(review_set, token, allowed_hosts), threaded=True)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {HOST}:{port}: {exc.strerror or exc}") from None
    bound = server.server_port
    allowed_hosts.update({f"{HOST}:{bound}", f"localhost:{bound}"})
    url = f"http://{HOST}:{bound}/?token={token}"
    click.echo(url)
    sys.stdout.flush()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no request log over the user's terminal
    n_tags = len(review_set.queue())
    click.echo(f"{len(review_set.photos)} tagged photos, {n_tags} tags to review"
               + (f" (thresholds from model {info.name})" if info else " (thresholds read off the sidecars)")
               + "; Ctrl-C to stop", err=True)
    for line in review_set.skipped[:10]:
        click.echo(f"skipped: {line}", err=True)
    if not no_browser:
        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("stopped; decisions are saved in the sidecars", err=True)
    finally:
        server.server_close()
