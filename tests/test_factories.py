"""The test factories store what the product stores: confirmed subscribers with new addresses,
planned deliveries with their items, and the seeded store's papers."""

import datetime as dt

from sqlmodel import select

from digest.models import DeliveryItem, DeliveryState, Paper, SubscriberStatus
from tests.factories import NOW, make_delivery, make_subscriber


def test_subscribers_are_confirmed_stored_and_each_has_its_own_address(seeded_store):
    session = seeded_store
    first, second = make_subscriber(session), make_subscriber(session)
    assert first.id is not None and second.id is not None and first.id != second.id
    assert first.email != second.email
    assert (first.status, first.confirmed_at, first.topics) == (
        SubscriberStatus.ACTIVE,
        NOW,
        ["diffusion models"],
    )
    pending = make_subscriber(session, status=SubscriberStatus.PENDING, send_hour=22)
    assert (pending.status, pending.confirmed_at, pending.send_hour) == ("pending", None, 22)


def test_deliveries_are_planned_then_given_their_state_and_items(seeded_store):
    session = seeded_store
    paper_ids = sorted(session.exec(select(Paper.id)))[:2]
    subscriber = make_subscriber(session)
    planned = make_delivery(session, subscriber)
    assert (planned.state, planned.digest_date, planned.attempts) == ("planned", NOW.date(), 0)
    assert planned.message_id and planned.message_id.endswith("@digest.test>")
    sent = make_delivery(
        session,
        subscriber,
        digest_date=NOW.date() - dt.timedelta(days=1),
        state=DeliveryState.SENT,
        sent_at=NOW,
        paper_ids=paper_ids,
    )
    assert (sent.state, sent.sent_at) == ("sent", NOW)
    items = session.exec(
        select(DeliveryItem).where(DeliveryItem.delivery_id == sent.id).order_by(DeliveryItem.rank)
    ).all()
    assert [(i.paper_id, i.rank) for i in items] == [(paper_ids[0], 1), (paper_ids[1], 2)]


def test_the_seeded_store_holds_twelve_diffusion_papers_and_one_on_robots(seeded_store):
    titles = sorted(seeded_store.exec(select(Paper.title)))
    assert len(titles) == 13 and titles[-1] == "Legged robots walk"
    assert all(t.startswith("Diffusion models trick ") for t in titles[:-1])
