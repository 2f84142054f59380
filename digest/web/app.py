"""The Flask app: create_app wires settings, the store, the mailer, CSRF and the rate limits
to the views of digest.web.views; wsgi_app is the entry point for a WSGI server."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
from collections.abc import Callable
from typing import Any

from flask import Flask, request
from flask.wrappers import Response
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_wtf.csrf import CSRFError, CSRFProtect
from limits.errors import StorageError
from redis.exceptions import RedisError
from sqlalchemy.engine import Engine
from werkzeug.exceptions import TooManyRequests
from werkzeug.middleware.proxy_fix import ProxyFix

from digest.addresses import inbox_key
from digest.config import Settings, get_settings
from digest.db import make_engine, require_current_schema
from digest.errorreport import init_error_reporting
from digest.errors import UserError
from digest.logs import RedactFilter, configure_logging
from digest.mailer import Mailer, mailer_for
from digest.render import install_filters
from digest.subscribers import normalize_email
from digest.web import monitoring, views


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class WebApp(Flask):
    """Flask, logging a failed request by its route (`/preferences/<token>`), never its path:
    the path of most pages is a signed link that never expires."""

    def log_exception(self, exc_info: Any) -> None:
        rule = request.url_rule.rule if request.url_rule is not None else "(no route)"
        self.logger.error("Exception on %s [%s]", rule, request.method, exc_info=exc_info)


def _redact_server_logs() -> None:
    """Waitress logs the path of a request whose client went away ("Client disconnected while
    serving /preferences/…"): blank the token even where configure_logging's handler (which
    redacts every record) is not installed, as under another process's logging setup."""
    server = logging.getLogger("waitress")
    if not any(isinstance(f, RedactFilter) for f in server.filters):
        server.addFilter(RedactFilter())


class InsecureSecretKey(RuntimeError):
    """The web app would sign links with the public development key outside development."""


def check_secret_key(settings: Settings) -> None:
    """Refuse the default secret key anywhere but development: anyone could forge links."""
    if settings.uses_default_secret and settings.env != "development":
        raise InsecureSecretKey(
            f"refusing to start with the default DIGEST_SECRET_KEY (DIGEST_ENV={settings.env}): "
            "set DIGEST_SECRET_KEY to a long random value, e.g. "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )


def target_address_key(secret_key: str) -> Callable[[], str]:
    """The rate-limit key of the address the subscribe form would mail: keyed with the secret,
    so no address is stored in the limiter's storage in clear."""

    def key() -> str:
        raw = request.form.get("email", "")
        try:
            address = normalize_email(raw)
        except UserError:
            address = raw
        # Keyed by inbox: bomb+1@, bomb+2@ and b.o.m.b@gmail.com all reach one person.
        key = inbox_key(address)
        digest = hmac.new(secret_key.encode(), key.encode(), hashlib.sha256)
        return "to:" + digest.hexdigest()[:32]

    return key


# Scripts and styles come from this site's files only (static/), so an injected link or tag cannot
# run; no page may be framed (clickjacking of the one-click forms), and no page sends a Referer:
# most carry a signed link in their address.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# The web copy of a digest is the email's HTML, styled inline as emails must be; still no script.
WEB_COPY_POLICY = CONTENT_SECURITY_POLICY.replace(
    "style-src 'self'", "style-src 'self' 'unsafe-inline'"
)
HSTS = "max-age=31536000"


def _security_headers(https: bool) -> Callable[[Response], Response]:
    def add(response: Response) -> Response:
        headers = response.headers
        inline_styles = request.endpoint == "web.web_copy"
        headers["Content-Security-Policy"] = (
            WEB_COPY_POLICY if inline_styles else CONTENT_SECURITY_POLICY
        )
        headers["X-Frame-Options"] = "DENY"
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Referrer-Policy"] = "no-referrer"
        if https:
            headers["Strict-Transport-Security"] = HSTS
        return response

    return add


def _limit_subscriptions(app: Flask, settings: Settings) -> Limiter:
    limiter = Limiter(
        get_remote_address,
        app=app,
        storage_uri=settings.rate_limit_storage_url,
        # Separate deployments on one Redis count separately, as they queue separately.
        key_prefix=f"digest-limits:{settings.task_queue}",
        strategy="fixed-window",
    )
    view = views.subscribe
    view = limiter.limit(
        lambda: settings.subscribe_limit_per_address,
        key_func=target_address_key(settings.secret_key),
    )(view)
    view = limiter.limit(lambda: settings.subscribe_limit_per_client)(view)
    app.view_functions["web.subscribe"] = view
    return limiter


def create_app(
    settings: Settings,
    *,
    engine: Engine | None = None,
    mailer: Mailer | None = None,
    clock: Callable[[], dt.datetime] = _utcnow,
) -> Flask:
    check_secret_key(settings)
    app = WebApp(__name__, template_folder=str(settings.templates_dir))
    install_filters(app.jinja_env)
    if settings.trusted_proxy_hops:
        # Behind a reverse proxy the client address is in X-Forwarded-For: rate limits key on it.
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=settings.trusted_proxy_hops, x_proto=settings.trusted_proxy_hops
        )
    https = settings.base_url.lower().startswith("https://")
    app.config.update(
        SECRET_KEY=settings.secret_key,
        # The session holds the CSRF secret: not sent on cross-site posts, nor over plain http
        # when the site is served over https.
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=https,
        WTF_CSRF_TIME_LIMIT=None,
        MAX_CONTENT_LENGTH=64 * 1024,
    )
    if engine is None:
        engine = make_engine(settings.database_url)
        require_current_schema(engine)
    app.extensions["digest"] = views.WebContext(
        settings=settings,
        engine=engine,
        mailer=mailer if mailer is not None else mailer_for(settings),
        clock=clock,
    )
    app.register_blueprint(views.bp)
    monitoring.install_metrics(app, settings)
    app.after_request(_security_headers(https))
    _redact_server_logs()
    app.teardown_appcontext(views.close_session)
    csrf = CSRFProtect(app)
    csrf.exempt(views.unsubscribe)
    _limit_subscriptions(app, settings)
    app.register_error_handler(CSRFError, views.form_expired)
    app.register_error_handler(TooManyRequests, views.too_many_requests)
    app.register_error_handler(RedisError, views.limits_unavailable)
    app.register_error_handler(StorageError, views.limits_unavailable)
    return app


def wsgi_app() -> Flask:
    """Entry point for a WSGI server: `waitress-serve --call digest.web:wsgi_app`.

    Raises InsecureSecretKey (the server does not start) with the default secret key outside
    development."""
    settings = get_settings()
    configure_logging(settings)
    init_error_reporting(settings, process="web")
    return create_app(settings)
