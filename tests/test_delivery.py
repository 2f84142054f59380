"""Delivery pieces on their own: the rate limiter, leases and the sweeper, `digest why`."""

import datetime as dt

import pytest
from sqlmodel import Session, select

from digest import delivery, digests, subscribers
from digest.delivery import corpus_cache
from digest.delivery.outcomes import Claim
from digest.delivery.store import delivery_store
from digest.mailer import FileMailer, RateLimiter
from digest.models import Delivery, DeliveryState, SubscriberStatus
from digest.ranking import rank_prepared
from tests.factories import NOW, make_paper, make_subscriber, store_papers


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_rate_limiter_allows_a_burst_then_paces_to_the_rate():
    clock = FakeClock()
    limiter = RateLimiter(rate=10, burst=3, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        limiter.acquire()
    assert clock.slept == []  # the burst goes through at once
    for _ in range(5):
        limiter.acquire()
    assert len(clock.slept) == 5 and abs(sum(clock.slept) - 0.5) < 1e-9
    assert abs(clock.now - 0.5) < 1e-9  # 8 messages: 3 at once, then 10 a second


def test_rate_zero_means_no_limit():
    clock = FakeClock()
    limiter = RateLimiter(rate=0, burst=1, clock=clock, sleep=clock.sleep)
    for _ in range(100):
        limiter.acquire()
    assert clock.slept == []


def test_backoff_doubles_up_to_a_cap():
    assert [delivery.backoff(n, 1.0, cap=10) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 8, 10]


def test_sweeper_finds_lost_planned_rows_and_expired_leases_not_live_ones(
    seeded_store, db_settings
):
    settings = db_settings.model_copy(update={"planned_grace_seconds": 600, "lease_seconds": 60})
    session = seeded_store
    for i in range(4):
        make_subscriber(session, email=f"s{i}@example.com")
    plan = delivery.plan_deliveries(
        session=session, settings=settings, now=NOW, digest_date=NOW.date()
    )
    ids = plan.delivery_ids
    # Two are claimed by a worker (leased), two stay planned (their task is queued).
    store = delivery_store(session)
    claimed = store.claim(session, ids[:2], now=NOW, settings=settings)
    assert claimed.ids == ids[:2]
    soon = NOW + dt.timedelta(seconds=30)
    assert delivery.stuck_deliveries(session=session, settings=settings, now=soon) == []
    # A duplicate task claiming them while the lease runs gets nothing: no double send.
    assert store.claim(session, ids[:2], now=soon, settings=settings).ids == []
    later = NOW + dt.timedelta(minutes=11)
    assert delivery.stuck_deliveries(session=session, settings=settings, now=later) == ids
    # The sweeper touched the planned ones: they are not queued again at once; the rows
    # of the dead worker stay stuck until someone claims them.
    again = later + dt.timedelta(seconds=1)
    assert delivery.stuck_deliveries(session=session, settings=settings, now=again) == ids[:2]
    assert store.claim(session, ids, now=again, settings=settings).ids == ids


def test_why_explains_what_was_sent_and_why_nothing_was(seeded_store, db_settings):
    session = seeded_store
    store_papers(
        session,
        [make_paper(title="Diffusion models at scale", abstract="Diffusion models at scale.")],
    )
    make_subscriber(session, email="a@example.com")
    make_subscriber(session, email="b@example.com", topics=["protein folding"])
    make_subscriber(session, email="c@example.com", status=SubscriberStatus.PENDING)
    delivery.send_due_digests(
        session=session,
        mailer=FileMailer(db_settings.outbox_dir),
        settings=db_settings,
        now=NOW,
        digest_date=NOW.date(),
    )
    a = delivery.why(
        session=session,
        settings=db_settings,
        email="a@example.com",
        now=NOW,
        digest_date=NOW.date(),
    )
    b = delivery.why(
        session=session,
        settings=db_settings,
        email="b@example.com",
        now=NOW,
        digest_date=NOW.date(),
    )
    c = delivery.why(
        session=session,
        settings=db_settings,
        email="c@example.com",
        now=NOW,
        digest_date=NOW.date(),
    )
    (row,) = session.exec(select(Delivery).where(Delivery.state == DeliveryState.SENT))
    assert a[1].startswith(f"{NOW.date().isoformat()}: sent at")
    assert any("Diffusion models at scale — matches 'diffusion models'" in line for line in a)
    assert b[1] == f"{NOW.date().isoformat()}: skipped: no new paper above the relevance threshold"
    assert c[1] == f"{NOW.date().isoformat()}: nothing sent: not confirmed yet"


def test_speed_trick_corpus_cache_directory_shares_a_prepared_corpus_between_processes(
    seeded_store, db_settings, tmp_path, monkeypatch
):
    session = seeded_store
    first = delivery.CorpusCache(directory=tmp_path / "cache")
    corpus, papers = first.get(
        session=session, settings=db_settings, digest_date=NOW.date(), now=NOW
    )
    assert len(list((tmp_path / "cache").glob("corpus-*.pickle"))) == 1

    # Another worker process (a fresh cache) loads it instead of fitting again.
    def no_fitting(*args, **kwargs):
        raise AssertionError("prepared again instead of loaded")

    monkeypatch.setattr(corpus_cache, "prepare_candidates", no_fitting)
    second = delivery.CorpusCache(directory=tmp_path / "cache")
    loaded, _ = second.get(session=session, settings=db_settings, digest_date=NOW.date(), now=NOW)
    profile = digests.profiles_for(
        session=session,
        subscribers=[
            subscribers.add_subscriber(
                session=session, email="a@example.com", topics=["diffusion models"], now=NOW
            )
        ],
    )
    config = digests.ranking_config(db_settings)
    assert rank_prepared(loaded, profile, config=config) == rank_prepared(
        corpus, profile, config=config
    )
    assert [p.id for p in loaded.papers] == sorted(papers)
    # The arrays are read-only views of one mapped file that every process shares.
    assert len(list((tmp_path / "cache").glob("corpus-*.arrays"))) == 1
    assert not loaded.vectors.data.flags.writeable
    assert not loaded.prior.flags.writeable

    # A damaged file is prepared again, not trusted.
    monkeypatch.undo()
    (path,) = (tmp_path / "cache").glob("corpus-*.pickle")
    path.write_bytes(b"not a pickle")
    third = delivery.CorpusCache(directory=tmp_path / "cache")
    again, _ = third.get(session=session, settings=db_settings, digest_date=NOW.date(), now=NOW)
    assert rank_prepared(again, profile, config=config) == rank_prepared(
        corpus, profile, config=config
    )


def test_speed_trick_gc_freeze_leaves_a_cached_corpus_uncollected_until_it_is_replaced(
    seeded_store, db_settings
):
    import gc
    import weakref

    class Node:
        pass

    session = seeded_store
    cache = delivery.CorpusCache()
    # A reference cycle alive while the corpus is loaded: frozen with it.
    node = Node()
    node.me = node
    alive = weakref.ref(node)
    try:
        corpus, _ = cache.get(
            session=session, settings=db_settings, digest_date=NOW.date(), now=NOW
        )
        assert gc.get_freeze_count() > 0
        assert not any(o is corpus.papers for o in gc.get_objects())  # nothing to walk
        del node
        gc.collect()
        assert alive() is not None  # frozen: collections leave it alone
        # The next date's corpus unfreezes first: the cycle is collected at last.
        later = NOW + dt.timedelta(days=1)
        cache.get(session=session, settings=db_settings, digest_date=later.date(), now=later)
        assert alive() is None
    finally:
        gc.unfreeze()


def test_speed_trick_prepared_sent_marks_work_on_a_reused_connection_and_errors_surface(
    engine, db_settings
):
    with Session(engine) as session:
        for i in range(3):
            make_subscriber(session, email=f"m{i}@example.com")
        ids = delivery.plan_deliveries(
            session=session, settings=db_settings, now=NOW, digest_date=NOW.date()
        ).delivery_ids
    later = NOW + dt.timedelta(minutes=3)
    store = delivery_store(engine)
    with Session(engine) as session:
        claim = store.claim(session, ids, now=NOW, settings=db_settings)
    assert claim.ids == ids
    first = store.writer(engine, claim)
    assert first.mark_sent(ids[0], later)
    first.close()
    # A second writer on the same (pooled) connection finds its statement prepared.
    second = store.writer(engine, claim)
    assert second.mark_sent(ids[1], later)
    second.close()
    # A writer of another claim (a sender whose lease ran out) changes nothing (on PostgreSQL
    # the mark is sent ahead and its answer read at the next statement or at close).
    stale = store.writer(engine, Claim(ids, lease_until=later, token="0" * 32))
    stale.mark_sent(ids[2], later)
    stale.close()
    if engine.dialect.name == "postgresql":
        import psycopg

        marker = store.writer(engine, claim)
        with engine.begin() as ddl:
            ddl.exec_driver_sql(
                "ALTER TABLE delivery ADD CONSTRAINT no_sent CHECK (state <> 'sent') NOT VALID"
            )
        try:
            with pytest.raises(psycopg.errors.CheckViolation):
                marker.mark_sent(ids[2], later)
                marker.flush()  # the answer of a mark sent ahead
        finally:
            marker.close()
            with engine.begin() as ddl:
                ddl.exec_driver_sql("ALTER TABLE delivery DROP CONSTRAINT no_sent")
    with Session(engine) as session:
        rows = {d.id: d for d in session.exec(select(Delivery))}
    assert [(rows[i].state, rows[i].sent_at, rows[i].updated_at) for i in ids[:2]] == [
        (DeliveryState.SENT, later, later)
    ] * 2
    assert rows[ids[2]].state == DeliveryState.SENDING
