"""The review page's web app (Flask), served by Werkzeug on 127.0.0.1 only.

Imported only by `tagger review` when it runs: Flask is the `review` extra, never a dependency of
`tagger tag`.

Security, because any local user and any web page open in the same browser can reach 127.0.0.1:
- a random per-run token: in the page's URL, required on every request (thumbnails in the query
  string, since an <img> cannot send headers; API calls in the X-Tagger-Token header, which a
  cross-site page cannot send without a CORS preflight this app never answers);
- the Host header must name this server, so a DNS-rebinding site cannot reach it by another name;
- writes are JSON POSTs only (no form posts from other sites), and name a photo by its id from the
  queue (tagger.review.queue), never by a path: nothing outside the roots has an id.
"""
from __future__ import annotations

import hmac
from importlib import resources

from flask import Flask, Response, abort, jsonify, request

from tagger.decisions import VERDICTS
from tagger.errors import TaggerError
from tagger.review.queue import ReviewSet
from tagger.thumbnails import ThumbnailCache

TOKEN_HEADER = "X-Tagger-Token"


def create_app(review: ReviewSet, token: str, allowed_hosts: set[str], thumbnails: ThumbnailCache | None = None
               ) -> Flask:
    app = Flask("tagger.review")
    thumbs = thumbnails or ThumbnailCache()
    page = resources.files("tagger.review").joinpath("page.html").read_text(encoding="utf-8")

    def token_ok(given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), token.encode())

    @app.before_request
    def guard():
        if request.host not in allowed_hosts:
            abort(403, description="unknown Host")
        given = request.headers.get(TOKEN_HEADER) if request.method == "POST" else (
            request.headers.get(TOKEN_HEADER) or request.args.get("token"))
        if not token_ok(given):
            abort(403, description="missing or wrong token: open the URL `tagger review` printed")

    @app.after_request
    def headers(response: Response) -> Response:
        # No framing (clickjacking), no referrer carrying the token to anything the page links to,
        # and nothing loaded from elsewhere.
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
            "connect-src 'self'; frame-ancestors 'none'")
        response.headers["Cache-Control"] = "no-store" if response.mimetype != "image/jpeg" else "private, max-age=3600"
        return response

    @app.get("/")
    def index() -> Response:
        return Response(page, mimetype="text/html")

    @app.get("/api/queue")
    def queue() -> Response:
        return jsonify({"tags": review.queue(), "vocabulary": review.vocabulary,
                        "roots": [str(r) for r in review.roots]})

    @app.get("/thumb/<path:photo_id>")
    def thumbnail(photo_id: str) -> Response:
        photo = review.photo(photo_id)
        if photo is None:
            abort(403, description="not a photo under the review folders")
        try:
            data = thumbs.get(photo.path)
        except (TaggerError, OSError) as exc:
            abort(422, description=str(exc))
        return Response(data, mimetype="image/jpeg")

    @app.post("/api/decide")
    def decide() -> Response:
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not all(isinstance(body.get(k), str) for k in ("photo", "tag", "verdict")):
            abort(400, description="expected JSON {photo, tag, verdict}")
        if body["verdict"] not in VERDICTS:
            abort(400, description=f"verdict must be one of {', '.join(VERDICTS)}")
        photo = review.photo(body["photo"])
        if photo is None:
            abort(403, description="not a photo under the review folders")
        tag = body["tag"].strip()
        if tag not in review.vocabulary:
            abort(400, description=f"{tag!r} is not in the model's vocabulary")
        try:
            decided = review.decide(photo, tag, body["verdict"])
        except TaggerError as exc:
            abort(409, description=str(exc))
        return jsonify({"photo": photo.id, "labels": list(decided.labels), "not_labels": list(decided.not_labels)})

    @app.errorhandler(400)
    @app.errorhandler(403)
    @app.errorhandler(404)
    @app.errorhandler(405)
    @app.errorhandler(409)
    @app.errorhandler(422)
    def error(exc) -> tuple[Response, int]:
        return jsonify({"error": exc.description}), exc.code

    return app
