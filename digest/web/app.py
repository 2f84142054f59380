"""The Flask app: create_app wires settings, the store, the mailer, CSRF and the rate limits
to the views of digest.web.views; wsgi_app is the entry point for a WSGI server."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Callable

from flask import Flask, request
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
from digest.errors import UserError
from digest.mailer import Mailer, mailer_for
from digest.render import install_filters
from digest.subscribers import normalize_email
from digest.web import views


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


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
    app = Flask(__name__, template_folder=str(settings.templates_dir))
    install_filters(app.jinja_env)
    if settings.trusted_proxy_hops:
        # Behind a reverse proxy the client address is in X-Forwarded-For: rate limits key on it.
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=settings.trusted_proxy_hops, x_proto=settings.trusted_proxy_hops
        )
    app.config.update(
        SECRET_KEY=settings.secret_key,
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
    return create_app(get_settings())
