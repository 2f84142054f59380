"""Paper embeddings in the store (SQLite and PostgreSQL): round trip, one model never mixed with
another, the backfill resumable and idempotent, on-demand encoding for the ranker."""

import datetime as dt

import numpy as np
import pytest
from sqlmodel import Session, func, select

from digest.embedding_store import (
    EmbeddingCache,
    embed_missing_papers,
    load_embeddings,
    missing_embeddings,
    paper_embeddings,
    store_embeddings,
)
from digest.encoder import DIMENSION, load_encoder, paper_text
from digest.models import Paper, PaperEmbedding

pytestmark = pytest.mark.integration

NOW = dt.datetime(2026, 6, 12, 8, tzinfo=dt.UTC)


class CountingEncoder:
    """The real encoder, counting what it encodes and able to fail after some batches."""

    def __init__(self, fail_after_calls: int | None = None) -> None:
        real = load_encoder(kind="minilm")
        assert real is not None
        self.real = real
        self.model_key = real.model_key
        self.dimension = real.dimension
        self.texts: list[str] = []
        self.calls = 0
        self.fail_after_calls = fail_after_calls

    def encode(self, texts):
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise KeyboardInterrupt("stopped mid-run")
        self.calls += 1
        self.texts.extend(texts)
        return self.real.encode(texts)


def add_papers(session: Session, n: int, *, start: int = 0, days_ago: int = 0) -> list[Paper]:
    papers = [
        Paper(
            id=f"2606.{start + i:05d}",
            title=f"Paper {start + i} on robot grasping",
            abstract=f"We study grasp number {start + i} with a learned policy.",
            first_seen=NOW - dt.timedelta(days=days_ago, minutes=i),
            updated_at=NOW,
        )
        for i in range(n)
    ]
    session.add_all(papers)
    session.commit()
    return papers


def stored_rows(session: Session) -> int:
    return session.exec(select(func.count()).select_from(PaperEmbedding)).one()


def test_round_trip_in_the_order_asked_with_missing_ones_marked(engine):
    rows = np.random.default_rng(1).normal(size=(3, DIMENSION)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    with Session(engine) as session:
        add_papers(session, 3)
        store_embeddings(
            session=session,
            model="m@1",
            paper_ids=["2606.00000", "2606.00001", "2606.00002"],
            matrix=rows,
        )
        session.commit()
        got = load_embeddings(
            session=session,
            model="m@1",
            paper_ids=["2606.00002", "nope", "2606.00000"],
            dim=DIMENSION,
        )
        assert got.found.tolist() == [True, False, True]
        assert np.all(np.sum(got.matrix[[0, 2]] * rows[[2, 0]], axis=1) > 0.9999)
        assert not got.matrix[1].any()
        # Another model's vectors are never read for this one.
        other = load_embeddings(
            session=session, model="m@2", paper_ids=["2606.00000"], dim=DIMENSION
        )
        assert other.found.tolist() == [False]
        assert missing_embeddings(session=session, model="m@2") == [
            "2606.00000",
            "2606.00001",
            "2606.00002",
        ]
        assert missing_embeddings(session=session, model="m@1") == []
        # Storing again replaces, never duplicates.
        store_embeddings(session=session, model="m@1", paper_ids=["2606.00001"], matrix=rows[:1])
        session.commit()
        assert stored_rows(session) == 3
        row = session.get(PaperEmbedding, ("m@1", "2606.00001"))
        assert row is not None and len(row.vector) == DIMENSION and row.dim == DIMENSION


def test_missing_since_is_newest_first(engine):
    with Session(engine) as session:
        add_papers(session, 2, start=0, days_ago=10)
        add_papers(session, 2, start=10, days_ago=0)
        since = NOW - dt.timedelta(days=1)
        assert missing_embeddings(session=session, model="m", since=since) == [
            "2606.00010",
            "2606.00011",
        ]
        assert len(missing_embeddings(session=session, model="m")) == 4


def test_backfill_is_resumable_and_idempotent(engine):
    with Session(engine) as session:
        add_papers(session, 7)
        interrupted = CountingEncoder(fail_after_calls=2)
        with pytest.raises(KeyboardInterrupt):
            embed_missing_papers(session=session, encoder=interrupted, batch_size=3)
    with Session(engine) as session:
        # The two batches done before the stop were committed.
        assert stored_rows(session) == 6
        resumed = CountingEncoder()
        assert embed_missing_papers(session=session, encoder=resumed, batch_size=3) == 1
        assert len(resumed.texts) == 1
        again = CountingEncoder()
        assert embed_missing_papers(session=session, encoder=again, batch_size=3) == 0
        assert again.texts == [] and stored_rows(session) == 7
        # What was stored is the paper's title-then-abstract vector.
        paper = session.get(Paper, "2606.00004")
        direct = again.real.encode([paper_text(paper.title, paper.abstract)])
        got = load_embeddings(
            session=session, model=again.model_key, paper_ids=[paper.id], dim=DIMENSION
        )
        assert float(got.matrix[0] @ direct[0]) > 0.9999


def test_ranker_gets_every_row_and_missing_ones_are_encoded_once(engine):
    with Session(engine) as session:
        papers = add_papers(session, 4)
        first = CountingEncoder()
        embed_missing_papers(session=session, encoder=first, batch_size=10)
        extra = add_papers(session, 2, start=100)
        asked = [extra[0], papers[1], extra[1], papers[0], papers[1], extra[0]]
        encoder = CountingEncoder()
        matrix = paper_embeddings(encoder=encoder, papers=asked, session=session)
        assert matrix.shape == (6, DIMENSION)
        assert len(encoder.texts) == 3  # only the ones without a stored vector (one twice)
        assert np.array_equal(matrix[1], matrix[4]) and np.array_equal(matrix[0], matrix[5])
        session.commit()
        again = CountingEncoder()
        assert np.array_equal(
            paper_embeddings(encoder=again, papers=asked, session=session), matrix
        )
        assert again.texts == []


def test_a_liked_paper_is_encoded_once_ever_not_once_a_day(engine, tmp_path, monkeypatch):
    """Liked papers among the candidates are read from the candidates' stored rows; older
    ones from the store (encoded and stored the first time): ranking encodes only topics."""
    from digest import digests
    from digest.ranking import Profile, RankPaper, prepare_corpus, rank_prepared
    from tests.conftest import make_settings

    settings = make_settings(tmp_path)
    with Session(engine) as session:
        old = add_papers(session, 1, start=500, days_ago=30)[0]
        candidates = add_papers(session, 6)
        counting = CountingEncoder()
        monkeypatch.setattr(digests, "load_encoder", lambda **_: counting)
        profile = Profile(
            id="p",
            topics=("robot grasping",),
            liked=(RankPaper.of(candidates[2]), RankPaper.of(old)),
        )

        def day() -> list[list[str]]:
            corpus = prepare_corpus(
                [RankPaper.of(p) for p in candidates],
                now=NOW,
                embeddings=paper_embeddings(encoder=counting, papers=candidates, session=session),
                encoder=counting.encode,
            )
            digests.load_feedback_embeddings(
                settings=settings, corpus=corpus, profiles=[profile], session=session
            )
            session.commit()
            return [[p.paper_id for p in picks] for picks in rank_prepared(corpus, [profile])]

        first = day()
        paper_texts = {paper_text(p.title, p.abstract) for p in [old, *candidates]}
        assert sorted(t for t in counting.texts if t in paper_texts) == sorted(paper_texts)
        assert [t for t in counting.texts if t not in paper_texts] == ["robot grasping"]
        counting.texts.clear()
        assert day() == first
        assert counting.texts == ["robot grasping"]  # the next day: topics only
        stored = session.exec(select(PaperEmbedding.paper_id)).all()
        assert old.id in stored


def test_file_cache_keyed_by_model_and_text(tmp_path):
    cache = EmbeddingCache(tmp_path / "cache" / "embeddings.sqlite")
    from digest.ranking import RankPaper

    papers = [
        RankPaper(id="a", title="Robot grasping", abstract="A policy."),
        RankPaper(id="b", title="Lattice crypto"),
    ]
    encoder = CountingEncoder()
    first = paper_embeddings(encoder=encoder, papers=papers, cache=cache)
    assert (cache.hits, cache.misses) == (0, 2)
    # Another id with the same text is the same vector; a changed abstract is a new one.
    later = [
        RankPaper(id="c", title="Robot grasping", abstract="A policy."),
        RankPaper(id="b", title="Lattice crypto", abstract="New."),
    ]
    again = CountingEncoder()
    second = paper_embeddings(encoder=again, papers=later, cache=EmbeddingCache(cache.path))
    assert np.array_equal(second[0], first[0])
    assert len(again.texts) == 1


def test_two_workers_storing_the_same_new_paper_at_once_both_succeed(engine):
    """Two workers meet a liked paper neither has seen and store its vector at the same
    moment. The later one waits for the first to commit, then replaces it; on PostgreSQL the
    delete-then-insert of before failed it on the primary key (its batch retried)."""
    import threading
    import time

    rng = np.random.default_rng(3)
    first_rows, second_rows = rng.normal(size=(2, 2, DIMENSION))
    errors: list[BaseException] = []

    def second() -> None:
        try:
            with Session(engine) as session:
                store_embeddings(
                    session=session, model="m@1", paper_ids=["p2", "p3"], matrix=second_rows
                )
                session.commit()
        except BaseException as exc:  # noqa: BLE001 (reported by the assertion below)
            errors.append(exc)

    with Session(engine) as session:
        store_embeddings(session=session, model="m@1", paper_ids=["p1", "p2"], matrix=first_rows)
        other = threading.Thread(target=second)
        other.start()
        time.sleep(0.5)  # the second worker is now waiting on the first one's rows
        session.commit()
    other.join(60)
    assert not other.is_alive() and errors == []
    with Session(engine) as session:
        stored = load_embeddings(
            session=session, model="m@1", paper_ids=["p1", "p2", "p3"], dim=DIMENSION
        )
        assert stored.found.all() and stored_rows(session) == 3
    expected = np.vstack([first_rows[0], second_rows])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.allclose((stored.matrix * expected).sum(axis=1), 1.0, atol=1e-3)


def test_a_paper_given_twice_is_stored_once_with_its_last_vector(engine):
    rows = np.eye(3, DIMENSION)
    with Session(engine) as session:
        assert (
            store_embeddings(session=session, model="m@1", paper_ids=["a", "b", "a"], matrix=rows)
            == 2
        )
        session.commit()
        stored = load_embeddings(session=session, model="m@1", paper_ids=["a", "b"], dim=DIMENSION)
    assert stored.matrix[0] @ rows[2] > 0.999 and stored.matrix[1] @ rows[1] > 0.999
