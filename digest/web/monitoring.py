"""/metrics for Prometheus: the store's numbers (digest.metrics), for a scraper that shows the
bearer token of DIGEST_METRICS_TOKEN or, when none is set, only for one on this host."""

from __future__ import annotations

import hmac
import logging
from urllib.parse import urlsplit

from flask import Blueprint, Flask, abort, current_app, request
from flask.wrappers import Response
from prometheus_client import CollectorRegistry

from digest.config import Settings, is_loopback
from digest.logs import event
from digest.metrics import exposition, store_registry

log = logging.getLogger(__name__)
bp = Blueprint("monitoring", __name__)
# Headers a reverse proxy adds: a request carrying one came from elsewhere, whatever its peer.
FORWARDING_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP", "X-Forwarded-Host")
# The text format generate_latest writes, as every Prometheus version reads it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def install_metrics(app: Flask, settings: Settings) -> None:
    app.extensions["digest.metrics"] = store_registry(app.extensions["digest"].engine)
    app.register_blueprint(bp)


def may_read_metrics(settings: Settings) -> bool | None:
    """True to answer, False to refuse with 401 (a token is set and was not shown), None to
    answer 404 (no token set and not a local request: the page is not there for them)."""
    if settings.metrics_token:
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), settings.metrics_token.encode()
        )
    # The peer as the server saw it (before ProxyFix rewrote it from X-Forwarded-For), and the
    # host the client asked for: a proxy passing the public name on (Host: digest.example.org)
    # or adding a forwarding header makes a request from this host one from elsewhere.
    peer = request.environ.get("werkzeug.proxy_fix.orig", {}).get(
        "REMOTE_ADDR", request.remote_addr
    )
    asked = urlsplit(f"//{request.host}").hostname or ""
    local = bool(peer) and is_loopback(str(peer)) and is_loopback(asked)
    if local and not any(name in request.headers for name in FORWARDING_HEADERS):
        return True
    return None


@bp.get("/metrics")
def metrics() -> Response:
    settings: Settings = current_app.extensions["digest"].settings
    allowed = may_read_metrics(settings)
    if allowed is None:
        abort(404)
    if not allowed:
        event(log, "metrics.refused", level=logging.WARNING, peer=request.remote_addr)
        return Response(
            "a bearer token is required\n",
            status=401,
            mimetype="text/plain",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    registry: CollectorRegistry = current_app.extensions["digest.metrics"]
    return Response(exposition(registry), content_type=CONTENT_TYPE)
