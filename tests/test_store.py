"""The store on SQLite and, when configured, PostgreSQL."""

import datetime as dt

import pytest
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from digest import delivery, paperstore, subscribers
from digest.errors import UserError
from digest.models import Delivery, Paper, Subscriber
from tests.factories import NOW, make_paper


def test_upsert_inserts_then_merges_richer_fields_and_keeps_first_seen(engine):
    with Session(engine) as session:
        first = paperstore.upsert_papers(
            session=session,
            now=NOW,
            papers=[
                make_paper(id="2606.00001", abstract="", upvotes=3, source="hf"),
                make_paper(id="2606.00002"),
            ],
        )
        assert (first.new, first.updated) == (2, 0)
        later = NOW + dt.timedelta(days=1)
        second = paperstore.upsert_papers(
            session=session,
            now=later,
            papers=[
                make_paper(
                    id="2606.00001v2",
                    abstract="A real abstract.",
                    upvotes=40,
                    categories=["cs.LG"],
                    source="arxiv",
                )
            ],
        )
        assert (second.new, second.updated) == (0, 1)
    with Session(engine) as session:
        paper = session.get(Paper, "2606.00001")
        assert paper is not None
        assert paper.abstract == "A real abstract."
        assert paper.upvotes == 40
        assert paper.sources == ["hf", "arxiv"]
        assert paper.first_seen == NOW  # kept apart from later sightings
        assert paper.first_seen.tzinfo is not None


def test_the_same_id_twice_in_one_input_is_one_paper(engine):
    with Session(engine) as session:
        result = paperstore.upsert_papers(
            session=session,
            now=NOW,
            papers=[make_paper(id="2606.00009", upvotes=1), make_paper(id="2606.00009", upvotes=5)],
        )
        assert result.new == 1
        assert session.get(Paper, "2606.00009").upvotes == 5


def test_one_merge_rule_for_the_same_id_in_one_input_and_in_the_store(engine):
    """Twice in one input folds exactly as a later sighting folds into the stored paper."""

    def sightings(paper_id):
        first = make_paper(
            id=paper_id,
            abstract="A long abstract that says a lot.",
            url="https://example.org/first",
            categories=["cs.LG"],
            upvotes=1,
            source="hf",
        )
        later = make_paper(
            id=paper_id,
            abstract="Short.",
            url="https://example.org/later",
            categories=["cs.CL"],
            upvotes=7,
            source="arxiv",
        )
        return first, later

    with Session(engine) as session:
        paperstore.upsert_papers(session=session, now=NOW, papers=sightings("2606.00011"))
        first, later = sightings("2606.00012")
        paperstore.upsert_papers(session=session, now=NOW, papers=[first])
        paperstore.upsert_papers(session=session, now=NOW, papers=[later])
    with Session(engine) as session:
        for paper_id in ("2606.00011", "2606.00012"):
            paper = session.get(Paper, paper_id)
            assert paper.abstract == "A long abstract that says a lot."  # the longer one
            assert paper.url == "https://example.org/first"  # the first known
            assert paper.categories == ["cs.LG", "cs.CL"]  # united
            assert paper.upvotes == 7  # the latest count
            assert paper.sources == ["hf", "arxiv"]


def test_one_delivery_per_subscriber_per_date(engine):
    with Session(engine) as session:
        sub = subscribers.add_subscriber(
            session=session, email="a@example.com", topics=["x"], now=NOW
        )
        session.add(
            Delivery(
                subscriber_id=sub.id,
                digest_date=dt.date(2026, 6, 12),
                created_at=NOW,
                updated_at=NOW,
            )
        )
        session.commit()
        session.add(
            Delivery(
                subscriber_id=sub.id,
                digest_date=dt.date(2026, 6, 12),
                created_at=NOW,
                updated_at=NOW,
            )
        )
        with pytest.raises(IntegrityError):
            session.commit()


def test_emails_are_normalised_and_unique(engine):
    with Session(engine) as session:
        subscribers.add_subscriber(session=session, email="Ada@Example.COM", topics=["x"], now=NOW)
        subscribers.add_subscriber(session=session, email="ada@example.com", topics=["y"], now=NOW)
        rows = list(session.exec(select(Subscriber)))
        assert [(s.email, s.topics) for s in rows] == [("ada@example.com", ["y"])]


def test_bad_email_is_refused_and_nothing_is_stored(engine):
    with Session(engine) as session:
        for bad in ("not-an-address", "a@b", "x@example.com\r\nBcc: victim@example.com"):
            with pytest.raises(UserError):
                subscribers.add_subscriber(session=session, email=bad, topics=["x"], now=NOW)
        assert list(session.exec(select(Subscriber))) == []


def test_remove_subscriber_removes_their_history(engine, db_settings):
    with Session(engine) as session:
        paperstore.upsert_papers(
            session=session,
            now=NOW,
            papers=[
                make_paper(
                    title="Diffusion models at scale", abstract="Diffusion models trained at scale."
                )
            ],
        )
        subscribers.add_subscriber(
            session=session, email="a@example.com", topics=["diffusion models"], now=NOW
        )
        from digest.mailer import FileMailer

        summary = delivery.send_due_digests(
            session=session,
            mailer=FileMailer(db_settings.outbox_dir),
            settings=db_settings,
            now=NOW,
            digest_date=NOW.date(),
        )
        assert len(summary.sent) == 1
        assert subscribers.remove_subscriber(session=session, email="a@example.com")
        assert list(session.exec(select(Delivery))) == []
        assert not subscribers.remove_subscriber(session=session, email="a@example.com")
