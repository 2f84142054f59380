"""Subscriber ids are never given again (issue 17, item 2): a removed subscriber's signed links
must not act on whoever subscribes next."""

from sqlmodel import Session

from digest import subscribers
from tests.factories import NOW


def test_a_removed_subscribers_id_is_never_given_to_the_next_one(engine):
    with Session(engine) as session:
        subscribers.add_subscriber(session=session, email="a@example.com", topics=["x"], now=NOW)
        old = subscribers.add_subscriber(
            session=session, email="old@example.com", topics=["x"], now=NOW
        ).id
        assert subscribers.remove_subscriber(session=session, email="old@example.com")
        new = subscribers.add_subscriber(
            session=session, email="new@example.com", topics=["y"], now=NOW
        ).id
        assert new != old and new > old
        # Again, once the table is empty.
        for email in ("a@example.com", "new@example.com"):
            subscribers.remove_subscriber(session=session, email=email)
        last = subscribers.add_subscriber(
            session=session, email="last@example.com", topics=["z"], now=NOW
        ).id
        assert last > new
