"""The web pages, as one Blueprint: subscribe with double opt-in, confirm, unsubscribe
(RFC 8058), preferences, feedback links, the web copy of a digest and the paper pages."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from flask import Blueprint, abort, current_app, g, redirect, render_template, request, url_for
from sqlalchemy.engine import Engine
from sqlmodel import Session
from werkzeug.wrappers import Response

from digest import digests, paperstore, subscribers
from digest.config import Settings
from digest.errors import UserError
from digest.links import LinkTarget, read_link, subscriber_link
from digest.logs import event
from digest.mailer import DeliveryError, Mailer
from digest.models import Paper, Subscriber, SubscriberStatus
from digest.schedule import local_date
from digest.tokens import InvalidToken, Purpose
from digest.web.forms import (
    WEEKDAYS,
    preference_fields,
    subscription_fields,
    timezone_names,
)

SUGGESTIONS_TTL = dt.timedelta(minutes=10)

bp = Blueprint("web", __name__)
log = logging.getLogger(__name__)
Page = tuple[str, int] | str


@dataclass
class WebContext:
    """What the views of one app share: set up by create_app, read through web()."""

    settings: Settings
    engine: Engine
    mailer: Mailer
    clock: Callable[[], dt.datetime]
    suggestions: list[str] = field(default_factory=list)
    suggestions_until: dt.datetime | None = None


def web() -> WebContext:
    return cast(WebContext, current_app.extensions["digest"])


def session() -> Session:
    if "session" not in g:
        g.session = Session(web().engine, expire_on_commit=False)
    return cast(Session, g.session)


def close_session(_exc: BaseException | None) -> None:
    s = g.pop("session", None)
    if s is not None:
        s.close()


@bp.app_context_processor
def _globals() -> dict[str, Any]:
    return {"from_name": web().settings.from_name}


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
    # Many of these at once after a deployment: the secret key changed (every link is dead).
    event(log, "link.refused", page=request.endpoint, expired=exc.expired)
    return page("Link not valid", str(exc), status=400, kind="error")


def link_target(purpose: Purpose, token: str, max_age: int | None = None) -> LinkTarget:
    """The subscriber a signed link is for, and whether it was made for their subscription as
    it is now (InvalidToken when it is not genuine or names nobody)."""
    return read_link(
        session=session(),
        secret_key=web().settings.secret_key,
        purpose=purpose,
        token=token,
        max_age=max_age,
    )


def ended_link() -> tuple[str, int]:
    """A genuine link of a subscription that has ended: it acts on no later one."""
    return page(
        "Link no longer valid",
        "This link was made for a subscription that has ended, so it no longer works. The "
        "links in digests sent since then do.",
        status=410,
        kind="error",
    )


def topic_suggestions() -> list[str]:
    context = web()
    now = context.clock()
    if context.suggestions_until is None or context.suggestions_until <= now:
        context.suggestions = paperstore.topic_suggestions(session=session())
        context.suggestions_until = now + SUGGESTIONS_TTL
    return list(context.suggestions)


def subscribe_page(form: Any, error: str | None) -> str:
    settings = web().settings
    return render_template(
        "web/subscribe.html",
        form=form,
        error=error,
        suggestions=topic_suggestions(),
        timezones=timezone_names(),
        weekdays=WEEKDAYS,
        default_hour=settings.default_send_hour,
        default_timezone=settings.default_timezone,
    )


def form_expired(_exc: Exception) -> tuple[str, int]:
    event(log, "form.refused", page=request.endpoint, reason="csrf")
    return page(
        "Form expired",
        "The form was stale or not sent from this site: reload the page and try again.",
        status=400,
        kind="error",
    )


def too_many_requests(_exc: Exception) -> tuple[str, int]:
    event(log, "subscribe.rate_limited", level=logging.WARNING, client=request.remote_addr)
    # The same page whichever limit was hit: it must not tell whether an address is known.
    return page(
        "Too many requests",
        "Too many subscription requests came from your network or for this address. "
        "Nothing was sent. Please try again later.",
        status=429,
        kind="error",
    )


def limits_unavailable(exc: Exception) -> tuple[str, int]:
    # Fail closed: without its counters the form could be used to bomb an inbox.
    event(log, "subscribe.limits_unavailable", level=logging.ERROR, error=str(exc))
    return page(
        "Try again later",
        "We cannot take subscriptions just now. Nothing was sent; please try again later.",
        status=503,
        kind="error",
    )


@bp.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@bp.get("/")
def index() -> str:
    return subscribe_page({}, None)


@bp.get("/subscribe")
def subscribe_get() -> Response:
    return redirect(url_for("web.index"))


@bp.post("/subscribe")
def subscribe() -> Page:
    """Rate-limited by create_app (per client and per target address)."""
    context = web()
    form = request.form
    try:
        subscribers.request_subscription(
            session=session(),
            mailer=context.mailer,
            settings=context.settings,
            now=context.clock(),
            **subscription_fields(form, context.settings),
        )
    except UserError as exc:
        session().rollback()
        return subscribe_page(form, str(exc)), 400
    except DeliveryError as exc:
        event(log, "subscription.mail_failed", level=logging.WARNING, error=str(exc))
        return page(
            "Try again later",
            "We could not send the confirmation email just now. Please try again in a few minutes.",
            status=503,
            kind="error",
        )
    return page(
        "Check your inbox",
        "We sent a confirmation link to that address. Nothing will be sent until it is opened.",
    )


@bp.route("/confirm/<token>", methods=["GET", "POST"])
def confirm(token: str) -> Page:
    context = web()
    try:
        target = link_target(Purpose.CONFIRM, token, max_age=context.settings.confirm_max_age)
    except InvalidToken as exc:
        return bad_link(exc)
    subscriber = target.subscriber
    usable = target.current and subscribers.confirmable(subscriber, target.payload)
    if usable and request.method == "GET":
        return render_template("web/confirm.html", email=subscriber.email)
    if usable and subscribers.confirm_subscription(
        session=session(), subscriber=subscriber, payload=target.payload, now=context.clock()
    ):
        return page("Subscribed", f"{subscriber.email} will receive the digest from now on.")
    # Used already, replaced by a newer request's link, or of a subscription that has ended:
    # a confirmation link works once, and never brings back what was unsubscribed.
    if subscriber.status == SubscriberStatus.ACTIVE:
        return page("Already subscribed", f"{subscriber.email} receives the digest.")
    return page(
        "Link no longer valid",
        "This confirmation link was used already, or a newer one was sent. To subscribe, "
        "fill in the form again.",
        status=410,
        kind="error",
        next_url=url_for("web.index"),
        next_label="Subscribe",
    )


@bp.route("/unsubscribe/<token>", methods=["GET", "POST"])
def unsubscribe(token: str) -> Page:
    """Exempt from CSRF by create_app: RFC 8058's one-click POST carries no session."""
    context = web()
    try:
        target = link_target(Purpose.UNSUBSCRIBE, token)
    except InvalidToken as exc:
        return bad_link(exc)
    subscriber, sid = target.subscriber, target.sid
    if not target.current:
        # Unsubscribing ended the subscription this link was made for: clicked again (or the
        # one-click POST retried) it says so; it never ends a subscription started since.
        if subscriber.status != SubscriberStatus.UNSUBSCRIBED:
            return ended_link()
        return page("Unsubscribed", f"{subscriber.email} is unsubscribed: no digests are sent.")
    if request.method == "GET":
        # A GET never unsubscribes: link scanners and prefetchers follow links.
        return render_template(
            "web/unsubscribe.html",
            email=subscriber.email,
            preferences_url=subscriber_link(
                context.settings, "preferences", Purpose.PREFERENCES, subscriber
            ),
        )
    subscribers.unsubscribe(session=session(), subscriber_id=sid, now=context.clock())
    return page("Unsubscribed", f"{subscriber.email} will get no more digests.")


@bp.route("/preferences/<token>", methods=["GET", "POST"])
def preferences(token: str) -> Page:
    context = web()
    try:
        target = link_target(Purpose.PREFERENCES, token)
    except InvalidToken as exc:
        return bad_link(exc)
    subscriber, sid = target.subscriber, target.sid
    if subscriber.status == SubscriberStatus.UNSUBSCRIBED:
        return page("Unsubscribed", f"{subscriber.email} is unsubscribed.")
    if not target.current:
        return ended_link()
    unsubscribe_url = subscriber_link(
        context.settings, "unsubscribe", Purpose.UNSUBSCRIBE, subscriber
    )

    def form_page(s: Subscriber | None, error: str | None, saved: bool) -> str:
        return render_template(
            "web/preferences.html", s=s, error=error, saved=saved, unsubscribe_url=unsubscribe_url
        )

    if request.method == "GET":
        return form_page(subscriber, None, False)
    today = local_date(subscriber.timezone, context.clock())
    try:
        subscriber = subscribers.update_preferences(
            session=session(), subscriber_id=sid, **preference_fields(request.form, today=today)
        )
    except UserError as exc:
        session().rollback()
        return form_page(session().get(Subscriber, sid), str(exc), False), 400
    return form_page(subscriber, None, True)


@bp.route("/feedback/<token>", methods=["GET", "POST"])
@bp.route("/feedback/<token>/<vote>", methods=["GET", "POST"])
def feedback(token: str, vote: str | None = None) -> Page:
    try:
        target = link_target(Purpose.FEEDBACK, token)
    except InvalidToken as exc:
        return bad_link(exc)
    if not target.current:
        return ended_link()  # a vote from an earlier subscription's digest
    sid, payload = target.sid, target.payload
    # Links name the paper in the query (one token per digest); links sent before that
    # carry it, and sometimes the vote, in the token.
    paper_id = payload["p"] if "p" in payload else request.args.get("paper")
    if request.method == "POST":
        vote = request.form.get("vote", vote)
    value = {"up": 1, "down": -1}.get(vote or "", payload.get("v"))
    paper = session().get(Paper, paper_id) if isinstance(paper_id, str) else None
    if paper is None or value not in (1, -1):
        return page("Link not valid", "This paper is no longer known.", status=404, kind="error")
    if request.method == "GET":
        # A GET never votes: link scanners and prefetchers open every link of an email,
        # 👍 and 👎 alike, and would fill the profile with votes nobody cast.
        return render_template("web/feedback.html", title=paper.title, vote=value)
    subscribers.record_feedback(
        session=session(),
        subscriber_id=sid,
        paper_id=paper.id,
        value=int(value),
        now=web().clock(),
    )
    text = (
        "Thanks: you will see more papers like this one."
        if value == 1
        else "Thanks: you will see fewer papers like this one."
    )
    return page("Thank you", text)


@bp.get("/digest/<token>")
def web_copy(token: str) -> Page:
    try:
        target = link_target(Purpose.VIEW, token)
    except InvalidToken as exc:
        return bad_link(exc)
    if not target.current:
        return ended_link()
    sid, payload = target.sid, target.payload
    try:
        day = dt.date.fromisoformat(str(payload.get("d")))
    except ValueError:
        return bad_link(InvalidToken("Bad link."))
    html = digests.sent_digest_html(
        session=session(), settings=web().settings, subscriber_id=sid, digest_date=day
    )
    if html is None:
        abort(404)
    return html


@bp.get("/papers/<paper_id>")
def paper_page(paper_id: str) -> str:
    paper = session().get(Paper, paper_id)
    if paper is None:
        abort(404)
    return render_template("web/paper.html", paper=paper)
