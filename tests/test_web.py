"""The web app: double opt-in, unsubscribe (RFC 8058), preferences, feedback, bad tokens."""

import re

import pytest
from sqlmodel import Session, col, select

from digest import digests, paperstore
from digest import subscribers as subscriber_store
from digest.mailer import SMTPConfig, SMTPMailer
from digest.models import Feedback, Paper, Subscriber, SubscriberStatus
from digest.tokens import Purpose, make_token
from digest.web import create_app
from tests.factories import NOW, link_token, make_paper


@pytest.fixture
def web(engine, db_settings, smtp_server):
    mailer = SMTPMailer(SMTPConfig(host=smtp_server.host, port=smtp_server.port))
    app = create_app(db_settings, engine=engine, mailer=mailer, clock=lambda: NOW)
    app.config["TESTING"] = True
    return app


def csrf_from(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "form has no CSRF token"
    return match.group(1)


def subscribers(engine):
    with Session(engine) as session:
        return {s.email: s for s in session.exec(select(Subscriber))}


def link_in(message, path):
    text = message.get_body(("plain",)).get_content()
    match = re.search(rf"https://digest\.test(/{path}/\S+)", text)
    assert match, f"no /{path}/ link in:\n{text}"
    return match.group(1)


def test_subscribe_confirm_flow(web, engine, smtp_server):
    client = web.test_client()
    page = client.get("/").get_data(as_text=True)
    response = client.post(
        "/subscribe",
        data={
            "csrf_token": csrf_from(page),
            "email": "Ada@Example.com",
            "topics": "diffusion models, legged robots",
            "exclude": "survey",
        },
    )
    assert response.status_code == 200 and "Check your inbox" in response.get_data(as_text=True)
    assert subscribers(engine)["ada@example.com"].status == SubscriberStatus.PENDING
    (message,) = smtp_server.to("ada@example.com")
    confirm = link_in(message, "confirm")

    # A GET (a link scanner, a prefetch) shows a page and confirms nothing.
    assert "Confirm subscription" in client.get(confirm).get_data(as_text=True)
    assert subscribers(engine)["ada@example.com"].status == SubscriberStatus.PENDING
    page = client.get(confirm).get_data(as_text=True)
    done = client.post(confirm, data={"csrf_token": csrf_from(page)})
    assert done.status_code == 200 and "Subscribed" in done.get_data(as_text=True)
    sub = subscribers(engine)["ada@example.com"]
    assert sub.status == SubscriberStatus.ACTIVE
    assert sub.topics == ["diffusion models", "legged robots"] and sub.exclude == ["survey"]


def test_subscribing_a_known_address_looks_the_same_and_sends_a_fresh_confirmation(
    web, engine, smtp_server
):
    client = web.test_client()
    with Session(engine) as session:
        subscriber_store.add_subscriber(
            session=session, email="old@example.com", topics=["x"], now=NOW
        )
    bodies = []
    for email in ("old@example.com", "new@example.com"):
        page = client.get("/").get_data(as_text=True)
        r = client.post(
            "/subscribe", data={"csrf_token": csrf_from(page), "email": email, "topics": "robots"}
        )
        bodies.append((r.status_code, r.get_data(as_text=True).replace(email, "")))
    assert bodies[0] == bodies[1]
    assert len(smtp_server.to("old@example.com")) == 1
    # Still active, with its old topics until the new request is confirmed.
    assert subscribers(engine)["old@example.com"].topics == ["x"]


def test_bad_input_on_subscribe_is_refused_and_stores_nothing(web, engine, smtp_server):
    client = web.test_client()
    for data, expected in [
        ({"email": "not-an-address", "topics": "robots"}, "not valid"),
        ({"email": "a@example.com\r\nBcc: v@example.com", "topics": "robots"}, "line breaks"),
        ({"email": "a@example.com", "topics": ""}, "at least one topic"),
        ({"email": "a@example.com", "topics": "x" * 101}, "at most 100 characters"),
    ]:
        page = client.get("/").get_data(as_text=True)
        r = client.post("/subscribe", data={"csrf_token": csrf_from(page), **data})
        assert r.status_code == 400 and expected in r.get_data(as_text=True)
    assert subscribers(engine) == {} and smtp_server.messages == []


def test_subscribe_without_csrf_token_is_refused(web, engine):
    r = web.test_client().post("/subscribe", data={"email": "a@example.com", "topics": "x"})
    assert r.status_code == 400 and "Form expired" in r.get_data(as_text=True)
    assert subscribers(engine) == {}


@pytest.fixture
def active(engine):
    with Session(engine) as session:
        paperstore.upsert_papers(
            session=session,
            now=NOW,
            papers=[
                make_paper(id="2606.00001", title="Diffusion models", abstract="Diffusion models."),
                make_paper(id="2606.00002", title="Legged robots", abstract="Quadrupeds."),
            ],
        )
        return subscriber_store.add_subscriber(
            session=session, email="a@example.com", topics=["diffusion models"], now=NOW
        )


def test_unsubscribe_get_shows_a_button_and_one_click_post_unsubscribes(
    web, engine, active, db_settings
):
    token = link_token(db_settings.secret_key, Purpose.UNSUBSCRIBE, active)
    client = web.test_client()
    page = client.get(f"/unsubscribe/{token}")
    assert page.status_code == 200 and "<button" in page.get_data(as_text=True)
    assert subscribers(engine)["a@example.com"].status == SubscriberStatus.ACTIVE
    # RFC 8058: a bare POST from the mail provider, no cookie, no CSRF token.
    r = client.post(
        f"/unsubscribe/{token}",
        data="List-Unsubscribe=One-Click",
        content_type="application/x-www-form-urlencoded",
    )
    assert r.status_code == 200
    assert subscribers(engine)["a@example.com"].status == SubscriberStatus.UNSUBSCRIBED


@pytest.mark.parametrize("tamper", ["forged", "altered", "other-purpose", "unknown-subscriber"])
def test_forged_or_altered_unsubscribe_token_is_refused_with_a_clear_page(
    web, engine, active, db_settings, tamper
):
    good = link_token(db_settings.secret_key, Purpose.UNSUBSCRIBE, active)
    token = {
        "forged": link_token("another-secret-key-0123456789", Purpose.UNSUBSCRIBE, active),
        "altered": good[:-3] + ("aaa" if not good.endswith("aaa") else "bbb"),
        "other-purpose": link_token(db_settings.secret_key, Purpose.FEEDBACK, active),
        "unknown-subscriber": make_token(db_settings.secret_key, Purpose.UNSUBSCRIBE, {"s": 999}),
    }[tamper]
    r = web.test_client().post(
        f"/unsubscribe/{token}",
        data="List-Unsubscribe=One-Click",
        content_type="application/x-www-form-urlencoded",
    )
    assert r.status_code == 400
    assert "not valid" in r.get_data(as_text=True) or "no longer exists" in r.get_data(as_text=True)
    assert subscribers(engine)["a@example.com"].status == SubscriberStatus.ACTIVE


def cast_vote(client, url):
    """Open a feedback link and press the page's highlighted button, as a reader does."""
    page = client.get(url)
    assert page.status_code == 200, page.get_data(as_text=True)
    body = page.get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', body).group(1)
    first = re.search(r'name="vote" value="(up|down)"', body).group(1)
    return client.post(url, data={"csrf_token": csrf, "vote": first})


def test_feedback_link_records_a_vote_and_thanks(web, engine, active, db_settings):
    # One token per digest says who votes; each link names its paper.
    token = link_token(db_settings.secret_key, Purpose.FEEDBACK, active)
    client = web.test_client()
    assert client.get(f"/feedback/{token}/sideways?paper=2606.00001").status_code == 404
    assert client.get(f"/feedback/{token}/up").status_code == 404  # no paper named
    assert client.get(f"/feedback/{token}/up?paper=9999.99999").status_code == 404
    r = cast_vote(client, f"/feedback/{token}/down?paper=2606.00001")
    assert r.status_code == 200 and "fewer papers like this" in r.get_data(as_text=True)
    r = cast_vote(client, f"/feedback/{token}/up?paper=2606.00002")
    assert r.status_code == 200 and "more papers like this" in r.get_data(as_text=True)
    with Session(engine) as session:
        votes = session.exec(select(Feedback).order_by(col(Feedback.paper_id))).all()
    assert [(v.subscriber_id, v.paper_id, v.value) for v in votes] == [
        (active.id, "2606.00001", -1),
        (active.id, "2606.00002", 1),
    ]


def test_feedback_links_of_older_emails_still_work(web, engine, active, db_settings):
    # Emails sent before one token per digest carry the paper in the token; the query is
    # ignored then, so such a link cannot be turned to another paper.
    token = link_token(db_settings.secret_key, Purpose.FEEDBACK, active, p="2606.00001")
    r = cast_vote(web.test_client(), f"/feedback/{token}/down?paper=2606.00002")
    assert r.status_code == 200 and "fewer papers like this" in r.get_data(as_text=True)
    with Session(engine) as session:
        (vote,) = session.exec(select(Feedback)).all()
    assert (vote.subscriber_id, vote.paper_id, vote.value) == (active.id, "2606.00001", -1)


def test_preferences_change_and_bad_values_change_nothing(web, engine, active, db_settings):
    token = link_token(db_settings.secret_key, Purpose.PREFERENCES, active)
    client = web.test_client()
    page = client.get(f"/preferences/{token}").get_data(as_text=True)
    form = {
        "csrf_token": csrf_from(page),
        "topics": "legged robots\nrobot learning",
        "exclude": "survey",
        "frequency": "weekly",
        "weekly_day": "2",
        "send_hour": "6",
        "timezone": "Europe/Paris",
        "pause_days": "0",
    }
    assert client.post(f"/preferences/{token}", data=form).status_code == 200
    sub = subscribers(engine)["a@example.com"]
    assert (sub.topics, sub.frequency, sub.weekly_day, sub.send_hour, sub.timezone) == (
        ["legged robots", "robot learning"],
        "weekly",
        2,
        6,
        "Europe/Paris",
    )
    r = client.post(
        f"/preferences/{token}",
        data={**form, "timezone": "Mars/Olympus", "topics": "something else"},
    )
    assert r.status_code == 400 and "Unknown time zone" in r.get_data(as_text=True)
    assert subscribers(engine)["a@example.com"].topics == ["legged robots", "robot learning"]


def test_the_votes_links_of_a_rendered_digest_record_their_own_paper(
    web, engine, active, db_settings
):
    from digest.ranking import Pick

    with Session(engine) as session:
        papers = {p.id: p for p in session.exec(select(Paper)).all()}
    picks = [Pick(pid, 1.0, "matches", 1.0, "diffusion models") for pid in sorted(papers)]
    context = digests.digest_context(
        settings=db_settings,
        subscriber=active,
        digest_date=NOW.date(),
        picks=picks,
        papers=papers,
    )
    client = web.test_client()
    base = db_settings.base_url
    first, second = context.entries
    assert cast_vote(client, first.like_url.removeprefix(base)).status_code == 200
    assert cast_vote(client, second.dislike_url.removeprefix(base)).status_code == 200
    with Session(engine) as session:
        votes = session.exec(select(Feedback).order_by(col(Feedback.paper_id))).all()
    assert [(v.paper_id, v.value) for v in votes] == [("2606.00001", 1), ("2606.00002", -1)]


def test_opening_feedback_links_casts_no_vote(web, engine, active, db_settings):
    """Link scanners open every link of an email, 👍 and 👎 alike: opening one shows the
    paper and a button, and only the button votes."""
    token = link_token(db_settings.secret_key, Purpose.FEEDBACK, active)
    client = web.test_client()
    for direction in ("up", "down"):
        r = client.get(f"/feedback/{token}/{direction}?paper=2606.00001")
        assert r.status_code == 200 and "Rate a paper" in r.get_data(as_text=True)
    with Session(engine) as session:
        assert session.exec(select(Feedback)).all() == []
    # The other button of the page counts too: 👍 in the email, 👎 pressed.
    page = client.get(f"/feedback/{token}/up?paper=2606.00001").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    r = client.post(
        f"/feedback/{token}/up?paper=2606.00001", data={"csrf_token": csrf, "vote": "down"}
    )
    assert "fewer papers like this" in r.get_data(as_text=True)
    # Without the form's CSRF token a POST votes nothing.
    fresh = web.test_client()
    r = fresh.post(f"/feedback/{token}/up?paper=2606.00002", data={"vote": "up"})
    assert r.status_code == 400
    with Session(engine) as session:
        votes = session.exec(select(Feedback)).all()
    assert [(v.paper_id, v.value) for v in votes] == [("2606.00001", -1)]
