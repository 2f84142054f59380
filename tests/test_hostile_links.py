"""Signed links act only on the subscription they were made for (issue 17, items 2 and 6): a
confirmation link works once, a replayed one never re-activates an address that unsubscribed
nor reverts its topics, and the links of an ended or removed subscription never act on a later
one, while the links already mailed to a live subscription keep working."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import pytest
from sqlmodel import Session, select

from digest import digests, paperstore, subscribers
from digest.models import Feedback, Paper, Subscriber, SubscriberStatus
from digest.ranking import Pick
from digest.render import Mail
from digest.web import create_app
from tests.factories import NOW, make_paper
from tests.test_web import csrf_from


class CollectingMailer:
    """The Mailer interface, keeping what it is given."""

    def __init__(self) -> None:
        self.sent: list[Mail] = []

    @contextmanager
    def connect(self) -> Iterator[CollectingMailer]:
        yield self

    def send(self, message: Mail) -> None:
        self.sent.append(message)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> dt.datetime:
        return self.now

    def tick(self) -> None:
        self.now += dt.timedelta(minutes=5)


@pytest.fixture
def site(engine, db_settings):
    """The app on the parametrised store, a mailer that keeps the confirmations, a clock."""
    settings = db_settings.model_copy(
        update={
            "subscribe_limit_per_client": "1000/hour",
            "subscribe_limit_per_address": "1000/hour",
        }
    )
    mailer, clock = CollectingMailer(), Clock()
    app = create_app(settings, engine=engine, mailer=mailer, clock=clock)
    app.config["TESTING"] = True
    with Session(engine) as session:
        paperstore.upsert_papers(session=session, now=NOW, papers=[make_paper(id="2606.00042")])
    return app.test_client(), settings, engine, mailer, clock


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def request_subscription(site, email: str, topics: str) -> str:
    """Subscribe through the form; the path of the confirmation link that was mailed."""
    client, _, _, mailer, _ = site
    csrf = csrf_from(client.get("/").get_data(as_text=True))
    r = client.post("/subscribe", data={"csrf_token": csrf, "email": email, "topics": topics})
    assert r.status_code == 200, r.get_data(as_text=True)
    text = mailer.sent[-1].message().get_body(("plain",)).get_content()
    match = re.search(r"https://digest\.test(/confirm/\S+)", text)
    assert match, text
    return match.group(1)


def post_form(client, path: str, **fields: str):
    """Open a signed page and press its button, as a reader does; a page with no button is
    posted to with the session's CSRF token (a replay made on purpose)."""
    page = client.get(path).get_data(as_text=True)
    if 'name="csrf_token"' not in page:
        page = client.get("/").get_data(as_text=True)
    return client.post(path, data={"csrf_token": csrf_from(page), **fields})


def one_click(client, path: str):
    """RFC 8058's POST from a mail provider: no session, no CSRF token."""
    return client.post(
        path, data="List-Unsubscribe=One-Click", content_type="application/x-www-form-urlencoded"
    )


def stored(engine, email: str) -> Subscriber:
    with Session(engine) as session:
        subscriber = session.exec(select(Subscriber).where(Subscriber.email == email)).one()
        session.expunge(subscriber)
        return subscriber


def digest_links(site, email: str) -> dict[str, str]:
    """The paths of the signed links of a digest mailed to `email` now."""
    _, settings, engine, _, _ = site
    with Session(engine) as session:
        subscriber = session.exec(select(Subscriber).where(Subscriber.email == email)).one()
        paper = session.get(Paper, "2606.00042")
        context = digests.digest_context(
            settings=settings,
            subscriber=subscriber,
            digest_date=NOW.date(),
            picks=[Pick(paper_id="2606.00042", score=1.0, why="", relevance=1.0, matched="")],
            papers={"2606.00042": paper},
        )
    return {
        "unsubscribe": path_of(context.unsubscribe_url),
        "preferences": path_of(context.preferences_url),
        "like": path_of(context.entries[0].like_url),
        "view": path_of(context.web_url),
    }


def votes(engine) -> list[tuple[int, str, int]]:
    with Session(engine) as session:
        return [(f.subscriber_id, f.paper_id, f.value) for f in session.exec(select(Feedback))]


def test_a_confirm_link_works_once(site):
    client, _, engine, _, clock = site
    confirm = request_subscription(site, "ada@example.com", "diffusion models")
    r = post_form(client, confirm)
    assert r.status_code == 200 and "from now on" in r.get_data(as_text=True)
    confirmed = stored(engine, "ada@example.com")
    assert confirmed.status == SubscriberStatus.ACTIVE and confirmed.confirmed_at == NOW

    clock.tick()
    for again in (client.get(confirm), post_form(client, confirm)):
        body = again.get_data(as_text=True)
        assert again.status_code == 200 and "Already subscribed" in body, body
        assert "<button" not in body  # nothing left to confirm
    assert stored(engine, "ada@example.com").model_dump() == confirmed.model_dump()  # not moved


def test_only_the_latest_confirmation_link_confirms(site):
    client, _, engine, _, _ = site
    first = request_subscription(site, "ada@example.com", "diffusion models")
    latest = request_subscription(site, "ada@example.com", "legged robots")
    r = post_form(client, first)
    assert r.status_code == 410 and "newer one was sent" in r.get_data(as_text=True)
    assert stored(engine, "ada@example.com").status == SubscriberStatus.PENDING
    assert post_form(client, latest).status_code == 200
    assert stored(engine, "ada@example.com").topics == ["legged robots"]


def test_a_replayed_confirm_link_neither_reactivates_nor_reverts_topics(site):
    """Issue 17, item 6: posted again within its 3 days, after a preferences change and after
    unsubscribing, the confirmation link changes nothing."""
    client, _, engine, _, clock = site
    confirm = request_subscription(site, "ada@example.com", "diffusion models")
    assert post_form(client, confirm).status_code == 200
    links = digest_links(site, "ada@example.com")
    clock.tick()
    changed = post_form(client, links["preferences"], topics="legged robots", timezone="UTC")
    assert changed.status_code == 200
    assert stored(engine, "ada@example.com").topics == ["legged robots"]

    # Posted again while subscribed: the topics chosen since stay.
    assert post_form(client, confirm).status_code == 200
    assert stored(engine, "ada@example.com").topics == ["legged robots"]

    assert one_click(client, links["unsubscribe"]).status_code == 200
    unsubscribed = stored(engine, "ada@example.com")
    assert unsubscribed.status == SubscriberStatus.UNSUBSCRIBED
    clock.tick()
    for replay in (client.get(confirm), post_form(client, confirm)):
        body = replay.get_data(as_text=True)
        assert replay.status_code == 410 and "Link no longer valid" in body, body
    assert stored(engine, "ada@example.com").model_dump() == unsubscribed.model_dump()


def test_the_links_of_an_ended_subscription_never_act_on_the_next_one(site):
    client, _, engine, _, _ = site
    confirm = request_subscription(site, "ada@example.com", "diffusion models")
    assert post_form(client, confirm).status_code == 200
    old = digest_links(site, "ada@example.com")
    assert one_click(client, old["unsubscribe"]).status_code == 200

    # Clicked again, or the one-click POST retried: a friendly page, not an error.
    for again in (client.get(old["unsubscribe"]), one_click(client, old["unsubscribe"])):
        assert again.status_code == 200 and "is unsubscribed" in again.get_data(as_text=True)
    assert post_form(client, old["like"], vote="up").status_code == 410
    assert votes(engine) == []

    # Ada subscribes again: a new subscription, which none of the old links acts on.
    confirm = request_subscription(site, "ada@example.com", "legged robots")
    assert post_form(client, confirm).status_code == 200
    again = stored(engine, "ada@example.com")
    assert again.status == SubscriberStatus.ACTIVE
    refused = {
        "unsubscribe": one_click(client, old["unsubscribe"]),
        "preferences": post_form(client, old["preferences"], topics="hijacked", timezone="UTC"),
        "like": post_form(client, old["like"], vote="up"),
        "view": client.get(old["view"]),
    }
    for name, response in refused.items():
        body = response.get_data(as_text=True)
        assert response.status_code == 410 and "subscription that has ended" in body, name
    assert stored(engine, "ada@example.com").model_dump() == again.model_dump()
    assert votes(engine) == []

    # The new digest's links do act.
    new = digest_links(site, "ada@example.com")
    assert post_form(client, new["like"], vote="up").status_code == 200
    assert votes(engine) == [(again.id, "2606.00042", 1)]
    assert one_click(client, new["unsubscribe"]).status_code == 200
    assert stored(engine, "ada@example.com").status == SubscriberStatus.UNSUBSCRIBED


def test_confirming_new_topics_keeps_the_links_mailed_to_a_live_subscription(site):
    """Re-confirming while subscribed is the same subscription: the unsubscribe link of every
    digest already mailed keeps working."""
    client, _, engine, _, _ = site
    assert post_form(client, request_subscription(site, "ada@example.com", "robots")).status_code
    mailed = digest_links(site, "ada@example.com")
    confirm = request_subscription(site, "ada@example.com", "diffusion models")
    assert post_form(client, confirm).status_code == 200
    assert stored(engine, "ada@example.com").topics == ["diffusion models"]
    assert post_form(client, mailed["like"], vote="up").status_code == 200
    assert one_click(client, mailed["unsubscribe"]).status_code == 200
    assert stored(engine, "ada@example.com").status == SubscriberStatus.UNSUBSCRIBED


def test_links_of_a_removed_subscriber_never_act_on_one_given_the_same_id(site):
    """SQLite gave a removed subscriber's id again before AUTOINCREMENT (and a restore or a
    hand-made row can): the key tells the two apart, pending confirmations included."""
    client, _, engine, _, _ = site
    confirm_old = request_subscription(site, "old@example.com", "old topic")
    old_pending = stored(engine, "old@example.com")
    assert post_form(client, request_subscription(site, "gone@example.com", "x")).status_code
    gone = digest_links(site, "gone@example.com")
    gone_id = stored(engine, "gone@example.com").id
    with Session(engine) as session:
        for email in ("old@example.com", "gone@example.com"):
            assert subscribers.remove_subscriber(session=session, email=email)
        for sid, email in ((old_pending.id, "new@example.com"), (gone_id, "next@example.com")):
            status = "pending" if email == "new@example.com" else "active"
            session.add(
                Subscriber(id=sid, email=email, topics=["mine"], status=status, created_at=NOW)
            )
        session.commit()

    r = post_form(client, confirm_old)
    assert r.status_code == 410
    newcomer = stored(engine, "new@example.com")
    assert newcomer.status == SubscriberStatus.PENDING and newcomer.topics == ["mine"]
    assert one_click(client, gone["unsubscribe"]).status_code == 410
    assert post_form(client, gone["like"], vote="up").status_code == 410
    assert stored(engine, "next@example.com").status == SubscriberStatus.ACTIVE
    assert votes(engine) == []


def test_two_posts_of_one_confirm_link_at_once_confirm_once(site):
    """Both read the subscriber before either wrote: the second one's write claims nothing."""
    client, settings, engine, _, _ = site
    confirm = request_subscription(site, "ada@example.com", "diffusion models")
    from digest.links import read_link
    from digest.tokens import Purpose

    token = confirm.rsplit("/", 1)[-1]
    with Session(engine) as first, Session(engine) as second:
        targets = [
            read_link(
                session=s, secret_key=settings.secret_key, purpose=Purpose.CONFIRM, token=token
            )
            for s in (first, second)
        ]
        assert all(subscribers.confirmable(t.subscriber, t.payload) for t in targets)
        results = [
            subscribers.confirm_subscription(
                session=s, subscriber=t.subscriber, payload=t.payload, now=NOW
            )
            for s, t in zip((first, second), targets, strict=True)
        ]
    assert results == [True, False]
    assert stored(engine, "ada@example.com").status == SubscriberStatus.ACTIVE
