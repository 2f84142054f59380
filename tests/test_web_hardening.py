"""The browser-side defences on every response (CSP, framing, sniffing, referrer, HSTS, cookie
flags) and logs that never hold a signed link, a token or the secret key (issue 17, items 8, 10)."""

import logging
import re

import pytest
from sqlmodel import Session

from digest import subscribers
from digest.db import create_schema, make_engine
from digest.models import SubscriberStatus
from digest.tokens import Purpose, make_token
from digest.web import create_app
from tests.conftest import make_settings
from tests.factories import NOW, link_token
from tests.test_web import csrf_from

STRICT_CSP = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "object-src": "'none'",
    "base-uri": "'none'",
    "frame-ancestors": "'none'",
}


def make_web(tmp_path, **overrides):
    settings = make_settings(tmp_path, **overrides)
    engine = make_engine(settings.database_url)
    create_schema(engine)
    app = create_app(settings, engine=engine, clock=lambda: NOW)
    app.config["TESTING"] = True
    # A view that fails answers with a 500 page, logged, as in production.
    app.config["PROPAGATE_EXCEPTIONS"] = False
    with Session(engine, expire_on_commit=False) as session:
        active = subscribers.add_subscriber(
            session=session, email="active@example.com", topics=["robots"], now=NOW
        )
        pending = subscribers.add_subscriber(
            session=session,
            email="pending@example.com",
            topics=["robots"],
            now=NOW,
            status=SubscriberStatus.PENDING,
        )
    return app, settings, active, pending


@pytest.fixture
def web(tmp_path):
    return make_web(tmp_path)


def policy(response):
    header = response.headers.get("Content-Security-Policy", "")
    return dict(
        (part.split(None, 1) + [""])[:2] for part in filter(None, map(str.strip, header.split(";")))
    )


def assert_defended(response, https=True):
    csp = policy(response)
    for directive, value in STRICT_CSP.items():
        assert csp.get(directive) == value, (directive, response.headers)
    assert "'unsafe-inline'" not in csp.get("script-src", "")
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    if https:
        assert response.headers["Strict-Transport-Security"].startswith("max-age=")
    else:
        assert "Strict-Transport-Security" not in response.headers


def responses(app, settings, active):
    """A normal page, a bad-link page, a refused form post, a 404 and a failing view (500)."""
    client = app.test_client()
    index = client.get("/")
    token = link_token(settings.secret_key, Purpose.PREFERENCES, active)
    refused = client.post(
        "/subscribe",
        data={"csrf_token": csrf_from(index.get_data(as_text=True)), "email": "nope"},
    )
    return {
        "index": index,
        "preferences": client.get(f"/preferences/{token}"),
        "bad link": client.get("/preferences/not-a-token"),
        "refused post": refused,
        "no csrf": client.post("/subscribe", data={"email": "a@example.com"}),
        "not found": client.get("/papers/2606.99999"),
        "script": client.get("/static/subscribe.js"),
    }


def test_every_response_carries_a_strict_policy_and_the_other_headers(web):
    app, settings, active, _ = web
    got = responses(app, settings, active)
    assert got["index"].status_code == 200 and got["bad link"].status_code == 400
    assert got["refused post"].status_code == 400 and got["no csrf"].status_code == 400
    assert got["not found"].status_code == 404 and got["script"].status_code == 200
    for name, response in got.items():
        assert_defended(response), name
        response.close()


def test_a_failing_view_answers_500_with_the_headers(web, monkeypatch):
    app, settings, active, _ = web
    response = fail_preferences(app, settings, active, monkeypatch)
    assert response.status_code == 500
    assert_defended(response)


def test_pages_hold_no_inline_script_or_style_so_the_policy_costs_nothing(web):
    app, settings, active, _ = web
    got = responses(app, settings, active)
    for name in ("index", "preferences", "bad link", "refused post"):
        html = got[name].get_data(as_text=True)
        assert re.findall(r"<script(?![^>]*\ssrc=)[^>]*>", html) == [], name
        assert "<style" not in html and " style=" not in html, name
        assert re.findall(r"\son[a-z]+\s*=", html) == [], name
    index = got["index"].get_data(as_text=True)
    assert '<script src="/static/subscribe.js"></script>' in index
    assert '<link rel="stylesheet" href="/static/web.css">' in index
    assert "Intl.DateTimeFormat" in got["script"].get_data(as_text=True)
    assert got["script"].mimetype == "text/javascript"
    css = app.test_client().get("/static/web.css")
    assert css.status_code == 200 and css.mimetype == "text/css" and ".chip" in css.text
    css.close()
    for response in got.values():
        response.close()


def test_the_session_cookie_is_lax_and_secure_behind_https(web):
    app, _, _, _ = web
    cookie = app.test_client().get("/").headers["Set-Cookie"]
    assert "SameSite=Lax" in cookie and "Secure" in cookie


def test_plain_http_gets_no_hsts_and_a_cookie_it_can_send(tmp_path):
    app, settings, active, _ = make_web(tmp_path, base_url="http://127.0.0.1:8000")
    index = app.test_client().get("/")
    assert_defended(index, https=False)
    cookie = index.headers["Set-Cookie"]
    assert "SameSite=Lax" in cookie and "Secure" not in cookie


def fail_preferences(app, settings, active, monkeypatch):
    """POST a valid preferences form whose store call fails: a 500."""

    def broken(**_kwargs):
        raise RuntimeError("store unavailable")

    monkeypatch.setattr(subscribers, "update_preferences", broken)
    token = link_token(settings.secret_key, Purpose.PREFERENCES, active)
    client = app.test_client()
    page = client.get(f"/preferences/{token}").get_data(as_text=True)
    return client.post(
        f"/preferences/{token}",
        data={"csrf_token": csrf_from(page), "topics": "robots", "timezone": "UTC"},
    )


def test_logs_hold_no_token_signed_link_or_secret(web, monkeypatch, caplog):
    """The bad-input requests and a 500 on a signed link, with every logger recording."""
    app, settings, active, pending = web
    secret = settings.secret_key
    tokens = [
        link_token(secret, Purpose.PREFERENCES, active),
        link_token(secret, Purpose.UNSUBSCRIBE, active),
        link_token(secret, Purpose.CONFIRM, pending),
        link_token(secret, Purpose.VIEW, active, d=NOW.date().isoformat()),
        link_token(secret, Purpose.FEEDBACK, active, p="2606.00042", v=1),
        link_token("another-secret-key-0123456789abcdef", Purpose.PREFERENCES, active),
        make_token(secret, Purpose.PREFERENCES, {"s": 99999}),
    ]
    caplog.set_level(logging.DEBUG)
    client = app.test_client()
    page = client.get(f"/preferences/{tokens[0]}").get_data(as_text=True)
    for zone in ("America", "Etc", "x" * 5000):
        r = client.post(
            f"/preferences/{tokens[0]}",
            data={"csrf_token": csrf_from(page), "topics": "robots", "timezone": zone},
        )
        assert r.status_code == 400
    assert fail_preferences(app, settings, active, monkeypatch).status_code == 500
    for token in tokens:
        for path in ("confirm", "unsubscribe", "preferences", "feedback", "digest"):
            app.test_client().get(f"/{path}/{token}").close()
            app.test_client().post(f"/{path}/{token}", data={"topics": "x"}).close()

    assert "store unavailable" in caplog.text  # the 500 was logged, with its traceback
    assert "/preferences/<token>" in caplog.text  # the route, not the path
    for token in tokens:
        assert token not in caplog.text and token.split(".")[0] not in caplog.text
    assert secret not in caplog.text


def test_the_web_copy_keeps_its_inline_styles_but_runs_no_script(web):
    app, _, _, _ = web
    response = app.test_client().get("/digest/not-a-token")
    csp = policy(response)
    assert csp["style-src"] == "'self' 'unsafe-inline'"
    assert csp["script-src"] == "'self'" and csp["frame-ancestors"] == "'none'"
    assert response.headers["Referrer-Policy"] == "no-referrer"


HOSTILE_VALUES = ["", "\x00", "x" * 5000, "é" * 300, "America", "Etc", "Etc/", "../", "-0", "1e3"]
FORM_FIELDS = ["email", "topics", "exclude", "frequency", "weekly_day", "send_hour", "timezone"]


def test_no_value_of_any_form_field_answers_a_500(tmp_path):
    """Every field of the subscribe and preferences forms, each hostile value: a page, never a
    server error (issue 17, item 7)."""
    limits = {"subscribe_limit_per_client": "1000/hour", "subscribe_limit_per_address": "1000/hour"}
    app, settings, active, _ = make_web(tmp_path, **limits)
    token = link_token(settings.secret_key, Purpose.PREFERENCES, active)
    client = app.test_client()
    csrf = csrf_from(client.get("/").get_data(as_text=True))
    base = {"csrf_token": csrf, "email": "new@example.com", "topics": "robots", "timezone": "UTC"}
    failures = []
    for path, fields in (
        ("/subscribe", FORM_FIELDS),
        (f"/preferences/{token}", [*FORM_FIELDS[1:], "pause_days"]),
    ):
        for field in fields:
            for value in HOSTILE_VALUES:
                status = client.post(path, data={**base, field: value}).status_code
                if status not in (200, 400):
                    failures.append((path.split("/")[1], field, value[:20], status))
    assert failures == []


def test_the_servers_log_line_of_a_signed_path_loses_its_token(web, caplog):
    """waitress logs the path when a client disconnects mid-request: the app's filter blanks
    the token before any handler sees it."""
    _, settings, active, _ = web
    token = link_token(settings.secret_key, Purpose.PREFERENCES, active)
    caplog.set_level(logging.INFO)
    logging.getLogger("waitress").info(
        "Client disconnected while serving %s", f"/preferences/{token}"
    )
    logging.getLogger("waitress").info("Client disconnected while serving /feedback/%s/up", token)
    assert token not in caplog.text and token.split(".")[0] not in caplog.text
    assert caplog.text.count("serving /preferences/<token>") == 1
    assert "serving /feedback/<token>" in caplog.text
