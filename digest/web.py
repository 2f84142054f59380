"""The web app: subscribe with double opt-in, confirm, unsubscribe (RFC 8058), preferences,
feedback links and the web copy of a digest. Server-rendered, usable without JavaScript."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any
from zoneinfo import available_timezones

from flask import Flask, abort, g, render_template, request, url_for
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_wtf.csrf import CSRFError, CSRFProtect
from limits.errors import StorageError
from redis.exceptions import RedisError
from sqlalchemy.engine import Engine
from sqlmodel import Session
from werkzeug.exceptions import TooManyRequests
from werkzeug.middleware.proxy_fix import ProxyFix

from digest import services
from digest.addresses import inbox_key
from digest.config import Settings
from digest.db import create_schema, make_engine
from digest.links import signed_link
from digest.mailer import DeliveryError, Mailer, mailer_for
from digest.models import Paper, Subscriber, SubscriberStatus
from digest.render import install_filters
from digest.schedule import local_date
from digest.tokens import InvalidToken, Purpose, read_token


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


WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
SUGGESTIONS_TTL = dt.timedelta(minutes=10)


@lru_cache(maxsize=1)
def _timezone_names() -> list[str]:
    return sorted(z for z in available_timezones() if "/" in z or z == "UTC")


def _form_int(value: str | None, default: int, what: str) -> int:
    if not value:
        return default
    # Digits only: no spaces, signs other than '-', or line breaks sneak through int().
    if not re.fullmatch(r"-?[0-9]{1,3}", value):
        raise services.UserError(f"The {what} must be chosen from the list.")
    return int(value)


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
    csrf = CSRFProtect(app)
    limiter = Limiter(
        get_remote_address,
        app=app,
        storage_uri=settings.rate_limit_storage_url,
        # Separate deployments on one Redis count separately, as they queue separately.
        key_prefix=f"digest-limits:{settings.task_queue}",
        strategy="fixed-window",
    )

    def target_address_key() -> str:
        """The rate-limit key of the address the form would mail: keyed, so no address is
        stored in the limiter's storage in clear."""
        raw = request.form.get("email", "")
        try:
            address = services.normalize_email(raw)
        except services.UserError:
            address = raw
        # Keyed by inbox: bomb+1@, bomb+2@ and b.o.m.b@gmail.com all reach one person.
        key = inbox_key(address)
        digest = hmac.new(settings.secret_key.encode(), key.encode(), hashlib.sha256)
        return "to:" + digest.hexdigest()[:32]

    if engine is None:
        engine = make_engine(settings.database_url)
        create_schema(engine)
    if mailer is None:
        mailer = mailer_for(settings)
    db_engine = engine
    outgoing = mailer

    def session() -> Session:
        if "session" not in g:
            g.session = Session(db_engine, expire_on_commit=False)
        return g.session  # type: ignore[no-any-return]

    @app.teardown_appcontext
    def _close(_exc: BaseException | None) -> None:
        s = g.pop("session", None)
        if s is not None:
            s.close()

    @app.context_processor
    def _globals() -> dict[str, Any]:
        return {"from_name": settings.from_name}

    def page(
        title: str,
        message: str,
        *,
        status: int = 200,
        kind: str = "ok",
        next_url: str | None = None,
        next_label: str | None = None,
    ) -> tuple[str, int]:
        return render_template(
            "web/message.html",
            title=title,
            message=message,
            kind=kind,
            next_url=next_url,
            next_label=next_label,
        ), status

    def bad_link(exc: InvalidToken) -> tuple[str, int]:
        return page("Link not valid", str(exc), status=400, kind="error")

    def subscriber_from(
        purpose: Purpose, token: str, max_age: int | None = None
    ) -> tuple[Subscriber, dict[str, Any]]:
        payload = read_token(settings.secret_key, purpose, token, max_age=max_age)
        sid = payload.get("s")
        subscriber = session().get(Subscriber, sid) if isinstance(sid, int) else None
        if subscriber is None:
            raise InvalidToken("This subscription no longer exists.")
        return subscriber, payload

    @app.errorhandler(CSRFError)
    def _csrf(exc: CSRFError) -> tuple[str, int]:
        return page(
            "Form expired",
            "The form was stale or not sent from this site: reload the page and try again.",
            status=400,
            kind="error",
        )

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.errorhandler(TooManyRequests)
    def _too_many(exc: TooManyRequests) -> tuple[str, int]:
        # The same page whichever limit was hit: it must not tell whether an address is known.
        return page(
            "Too many requests",
            "Too many subscription requests came from your network or for this address. "
            "Nothing was sent. Please try again later.",
            status=429,
            kind="error",
        )

    @app.errorhandler(RedisError)
    @app.errorhandler(StorageError)
    def _limits_unavailable(exc: Exception) -> tuple[str, int]:
        # Fail closed: without its counters the form could be used to bomb an inbox.
        app.logger.error("rate-limit storage unavailable: %s", exc)
        return page(
            "Try again later",
            "We cannot take subscriptions just now. Nothing was sent; please try again later.",
            status=503,
            kind="error",
        )

    suggestion_cache: dict[str, Any] = {}
    timezones = _timezone_names()

    def topic_suggestions() -> list[str]:
        now = clock()
        if suggestion_cache.get("until", now) <= now or "topics" not in suggestion_cache:
            suggestion_cache["topics"] = services.topic_suggestions(session=session())
            suggestion_cache["until"] = now + SUGGESTIONS_TTL
        return list(suggestion_cache["topics"])

    def subscribe_page(form: Any, error: str | None) -> str:
        return render_template(
            "web/subscribe.html",
            form=form,
            error=error,
            suggestions=topic_suggestions(),
            timezones=timezones,
            weekdays=WEEKDAYS,
            default_hour=settings.default_send_hour,
            default_timezone=settings.default_timezone,
        )

    @app.get("/")
    def index() -> str:
        return subscribe_page({}, None)

    @app.post("/subscribe")
    @limiter.limit(lambda: settings.subscribe_limit_per_client)
    @limiter.limit(lambda: settings.subscribe_limit_per_address, key_func=target_address_key)
    def subscribe() -> tuple[str, int] | str:
        form = request.form
        try:
            services.request_subscription(
                session=session(),
                mailer=outgoing,
                settings=settings,
                email=form.get("email", ""),
                topics=services.split_terms(form.get("topics", "")),
                exclude=services.split_terms(form.get("exclude", "")),
                frequency=form.get("frequency") or None,
                weekly_day=_form_int(form.get("weekly_day"), 0, "day of the week"),
                send_hour=_form_int(form.get("send_hour"), settings.default_send_hour, "send hour"),
                timezone=form.get("timezone") or None,
                now=clock(),
            )
        except services.UserError as exc:
            session().rollback()
            return subscribe_page(form, str(exc)), 400
        except DeliveryError:
            return page(
                "Try again later",
                "We could not send the confirmation email just now. "
                "Please try again in a few minutes.",
                status=503,
                kind="error",
            )
        return page(
            "Check your inbox",
            "We sent a confirmation link to that address. Nothing will be sent until it is opened.",
        )

    @app.route("/confirm/<token>", methods=["GET", "POST"])
    def confirm(token: str) -> tuple[str, int] | str:
        try:
            subscriber, payload = subscriber_from(
                Purpose.CONFIRM, token, max_age=settings.confirm_max_age
            )
        except InvalidToken as exc:
            return bad_link(exc)
        if request.method == "GET":
            return render_template("web/confirm.html", email=subscriber.email)
        services.confirm_subscription(session=session(), payload=payload, now=clock())
        return page("Subscribed", f"{subscriber.email} will receive the digest from now on.")

    @app.route("/unsubscribe/<token>", methods=["GET", "POST"])
    @csrf.exempt  # RFC 8058: the one-click POST carries no session and no CSRF token.
    def unsubscribe(token: str) -> tuple[str, int] | str:
        try:
            subscriber, _ = subscriber_from(Purpose.UNSUBSCRIBE, token)
        except InvalidToken as exc:
            return bad_link(exc)
        if request.method == "GET":
            # A GET never unsubscribes: link scanners and prefetchers follow links.
            return render_template(
                "web/unsubscribe.html",
                email=subscriber.email,
                preferences_url=signed_link(
                    settings, "preferences", Purpose.PREFERENCES, {"s": subscriber.id}
                ),
            )
        assert subscriber.id is not None
        services.unsubscribe(session=session(), subscriber_id=subscriber.id, now=clock())
        return page("Unsubscribed", f"{subscriber.email} will get no more digests.")

    @app.route("/preferences/<token>", methods=["GET", "POST"])
    def preferences(token: str) -> tuple[str, int] | str:
        try:
            subscriber, _ = subscriber_from(Purpose.PREFERENCES, token)
        except InvalidToken as exc:
            return bad_link(exc)
        unsubscribe_url = signed_link(
            settings, "unsubscribe", Purpose.UNSUBSCRIBE, {"s": subscriber.id}
        )
        if subscriber.status == SubscriberStatus.UNSUBSCRIBED:
            return page("Unsubscribed", f"{subscriber.email} is unsubscribed.")
        if request.method == "GET":
            return render_template(
                "web/preferences.html",
                s=subscriber,
                error=None,
                saved=False,
                unsubscribe_url=unsubscribe_url,
            )
        form = request.form
        try:
            assert subscriber.id is not None
            subscriber = services.update_preferences(
                session=session(),
                subscriber_id=subscriber.id,
                topics=services.split_terms(form.get("topics", "")),
                exclude=services.split_terms(form.get("exclude", "")),
                frequency=form.get("frequency", "daily"),
                weekly_day=int(form.get("weekly_day", "0")),
                send_hour=int(form.get("send_hour", "7")),
                timezone=form.get("timezone", "UTC").strip(),
                pause_days=int(form.get("pause_days", "0") or 0),
                today=local_date(subscriber.timezone, clock()),
            )
        except ValueError as exc:
            session().rollback()
            message = str(exc) if isinstance(exc, services.UserError) else "Please check the form."
            fresh = session().get(Subscriber, subscriber.id)
            return render_template(
                "web/preferences.html",
                s=fresh,
                error=message,
                saved=False,
                unsubscribe_url=unsubscribe_url,
            ), 400
        return render_template(
            "web/preferences.html",
            s=subscriber,
            error=None,
            saved=True,
            unsubscribe_url=unsubscribe_url,
        )

    @app.route("/feedback/<token>", methods=["GET", "POST"])
    @app.route("/feedback/<token>/<vote>", methods=["GET", "POST"])
    def feedback(token: str, vote: str | None = None) -> tuple[str, int] | str:
        try:
            subscriber, payload = subscriber_from(Purpose.FEEDBACK, token)
        except InvalidToken as exc:
            return bad_link(exc)
        # Links name the paper in the query (one token per digest); links sent before that
        # carry it, and sometimes the vote, in the token.
        paper_id = payload["p"] if "p" in payload else request.args.get("paper")
        if request.method == "POST":
            vote = request.form.get("vote", vote)
        value = {"up": 1, "down": -1}.get(vote or "", payload.get("v"))
        paper = session().get(Paper, paper_id) if isinstance(paper_id, str) else None
        if paper is None or value not in (1, -1):
            return page(
                "Link not valid", "This paper is no longer known.", status=404, kind="error"
            )
        if request.method == "GET":
            # A GET never votes: link scanners and prefetchers open every link of an email,
            # 👍 and 👎 alike, and would fill the profile with votes nobody cast.
            return render_template("web/feedback.html", title=paper.title, vote=value)
        assert subscriber.id is not None
        services.record_feedback(
            session=session(),
            subscriber_id=subscriber.id,
            paper_id=paper.id,
            value=int(value),
            now=clock(),
        )
        text = (
            "Thanks: you will see more papers like this one."
            if value == 1
            else "Thanks: you will see fewer papers like this one."
        )
        return page("Thank you", text)

    @app.get("/digest/<token>")
    def web_copy(token: str) -> tuple[str, int] | str:
        try:
            subscriber, payload = subscriber_from(Purpose.VIEW, token)
            day = dt.date.fromisoformat(str(payload.get("d")))
        except (InvalidToken, ValueError) as exc:
            return bad_link(exc if isinstance(exc, InvalidToken) else InvalidToken("Bad link."))
        assert subscriber.id is not None
        html = services.sent_digest_html(
            session=session(), settings=settings, subscriber_id=subscriber.id, digest_date=day
        )
        if html is None:
            abort(404)
        return html

    @app.get("/papers/<paper_id>")
    def paper_page(paper_id: str) -> str:
        paper = session().get(Paper, paper_id)
        if paper is None:
            abort(404)
        return render_template("web/paper.html", paper=paper)

    @app.get("/subscribe")
    def subscribe_get() -> Any:
        from flask import redirect

        return redirect(url_for("index"))

    return app


def wsgi_app() -> Flask:
    """Entry point for a WSGI server: `waitress-serve --call digest.web:wsgi_app`.

    Raises InsecureSecretKey (the server does not start) with the default secret key outside
    development."""
    from digest.config import get_settings

    return create_app(get_settings())
