"""Ingestion runs on SQLite and PostgreSQL: recorded HF and arXiv responses replayed by
`responses`, stored, merged, re-ingested, and every failure recorded without losing papers."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import responses
from sqlmodel import Session, col, func, select

from digest import paperstore
from digest.ingestion import ingest_source, ingest_sources
from digest.models import Paper, Run
from digest.runs import describe_run, last_runs
from digest.sources.arxiv import ARXIV_API_URL, ARXIV_RSS_URL
from digest.sources.hf import HF_DAILY_PAPERS_URL
from tests.fake_sources import fixture_bytes

NOW = dt.datetime(2026, 6, 12, 5, 0, tzinfo=dt.UTC)
LATER = NOW + dt.timedelta(days=1)
HF_JUNE = "api-daily-papers-2026-06-12.json"
ATOM_NEW = "api-query-transformer-cs.LG-2026-06-14.xml"
RSS_ITEMS = "rss-cs.CL-2026-07-01-constructed.xml"
RSS_EMPTY = "rss-cs.CL-weekend-empty-2026-08-01.xml"


class FakeClock:
    """A monotonic clock that only sleeping moves; records sleeps and when requests went out."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.request_times: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def __call__(self) -> float:
        return self.now


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def run_source(engine, settings, source, now=NOW, **kwargs) -> Run:
    with Session(engine, expire_on_commit=False) as session:
        return ingest_source(
            session=session, settings=settings, source=source, now=now, sleep=Sleeps(), **kwargs
        )


def stored(engine) -> dict[str, dict]:
    """Every stored paper as plain data, to compare the store before and after a run."""
    with Session(engine) as session:
        return {p.id: p.model_dump() for p in session.exec(select(Paper))}


def hf_items() -> list[dict]:
    return json.loads(fixture_bytes(HF_JUNE))


@pytest.fixture
def mocked():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def test_ingesting_recorded_hf_and_arxiv_twice_adds_nothing_the_second_time_and_updates_upvotes(
    engine, db_settings, mocked
):
    mocked.get(HF_DAILY_PAPERS_URL, body=fixture_bytes(HF_JUNE))
    mocked.get(ARXIV_RSS_URL + "cs.CL", body=fixture_bytes(RSS_ITEMS))
    mocked.get(ARXIV_API_URL, body=fixture_bytes(ATOM_NEW))
    day = dt.date(2026, 6, 12)
    first = [
        run_source(engine, db_settings, "hf", day=day),
        run_source(engine, db_settings, "arxiv", categories=["cs.CL"]),
        run_source(engine, db_settings, "arxiv", categories=["cs.LG"], day=day),
    ]
    assert [(r.status, r.summary["fetched"], r.summary["new"]) for r in first] == [
        ("ok", 30, 30),
        ("ok", 4, 4),
        ("ok", 5, 5),
    ]
    before = stored(engine)
    assert len(before) == 39

    # A day later the same listings come back; HF's upvotes have moved on three papers.
    items = hf_items()
    for item in items[:3]:
        item["paper"]["upvotes"] += 10
    mocked.replace(responses.GET, HF_DAILY_PAPERS_URL, body=json.dumps(items))
    second = [
        run_source(engine, db_settings, "hf", now=LATER, day=day),
        run_source(engine, db_settings, "arxiv", now=LATER, categories=["cs.CL"]),
        run_source(engine, db_settings, "arxiv", now=LATER, categories=["cs.LG"], day=day),
    ]
    assert [(r.summary["new"], r.summary["updated"], r.summary["unchanged"]) for r in second] == [
        (0, 3, 27),
        (0, 0, 4),
        (0, 0, 5),
    ]
    assert second[0].summary["empty_reason"] == "everything listed was already stored"
    after = stored(engine)
    assert set(after) == set(before)
    for item in items[:3]:
        paper_id = item["paper"]["id"]
        assert after[paper_id]["upvotes"] == item["paper"]["upvotes"]
        assert after[paper_id]["updated_at"] == LATER
    unchanged = [pid for pid in before if pid not in {i["paper"]["id"] for i in items[:3]}]
    assert all(after[pid] == before[pid] for pid in unchanged)
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(Run)).one() == 6


def test_the_same_paper_from_hf_and_arxiv_is_one_paper_with_merged_fields(
    engine, db_settings, mocked
):
    # The Mana paper as arXiv's API lists it, then as HF lists it (ids made to match).
    mocked.get(ARXIV_API_URL, body=fixture_bytes(ATOM_NEW))
    items = hf_items()[:2]
    items[0]["paper"]["id"] = "2606.13677"
    items[0]["paper"]["submittedOnDailyAt"] = "2026-06-10T00:00:00.000Z"
    mocked.get(HF_DAILY_PAPERS_URL, body=json.dumps(items))
    run_source(engine, db_settings, "arxiv", categories=["cs.LG"], day=dt.date(2026, 6, 11))
    run = run_source(engine, db_settings, "hf", now=LATER)
    assert (run.summary["new"], run.summary["updated"]) == (1, 1)
    with Session(engine) as session:
        paper = session.get(Paper, "2606.13677")
        assert paper is not None
        assert paper.categories[0] == "cs.RO"  # arXiv's primary category first
        assert paper.comment == "Project Page: https://zhaohengyin.github.io/mana"
        assert paper.upvotes == items[0]["paper"]["upvotes"]
        assert paper.ai_summary == items[0]["paper"]["ai_summary"]
        assert paper.sources == ["arxiv", "hf"]
        # Listed by HF on 2026-06-10, before our arXiv run saw it: the earliest sighting.
        assert paper.first_seen == dt.datetime(2026, 6, 10, tzinfo=dt.UTC)
        assert paper.published == dt.datetime(2026, 6, 11, 17, 59, 49, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ({"status": 500}, "HTTP 500"),
        ({"status": 429, "headers": {"Retry-After": "1"}}, "HTTP 429"),
        ({"body": b"<!DOCTYPE html><html><title>Bad gateway</title></html>"}, "HTML page"),
        ({"body": fixture_bytes(HF_JUNE)[:5000]}, "truncated JSON"),
    ],
    ids=["5xx", "429-storm", "html", "truncated"],
)
def test_a_failed_fetch_keeps_every_stored_paper_and_records_why(
    engine, db_settings, mocked, reply, expected
):
    mocked.get(HF_DAILY_PAPERS_URL, body=fixture_bytes(HF_JUNE))
    run_source(engine, db_settings, "hf")
    before = stored(engine)
    mocked.replace(responses.GET, HF_DAILY_PAPERS_URL, **reply)
    run = run_source(engine, db_settings, "hf", now=LATER)
    assert run.status == "failed"
    assert (run.summary["fetched"], run.summary["new"], run.summary["updated"]) == (0, 0, 0)
    assert len(run.summary["errors"]) == 1 and expected in run.summary["errors"][0]
    assert run.summary["empty_reason"] == "source unavailable: every request failed (see errors)"
    assert stored(engine) == before


def test_a_partly_bad_response_stores_the_good_items_and_reports_the_bad_ones(
    engine, db_settings, mocked
):
    items = hf_items()[:6]
    items[1]["paper"]["title"] = ""
    items[1]["title"] = "<b> </b>"  # the item's own title would otherwise stand in
    items[2]["paper"]["upvotes"] = "many"
    items.append(items[0])  # a duplicate id inside one response
    mocked.get(HF_DAILY_PAPERS_URL, body=json.dumps(items))
    run = run_source(engine, db_settings, "hf")
    assert run.status == "partial"
    assert (run.summary["fetched"], run.summary["new"], run.summary["bad_item_count"]) == (4, 4, 2)
    assert run.summary["bad_items"][0].startswith(
        f"hf latest page 0: item 2 ({items[1]['paper']['id']}): title"
    )
    assert "duplicate id" in run.summary["notes"][0]
    assert set(stored(engine)) == {items[i]["paper"]["id"] for i in (0, 3, 4, 5)}
    lines = describe_run(run)
    assert lines[0] == ("hf: fetched 4, new 4, updated 0, bad items 2, failed requests 0/1")
    assert any(line.startswith("bad item: hf latest page 0: item 3") for line in lines)


def test_a_weekend_feed_records_why_nothing_came(engine, db_settings, mocked):
    mocked.get(ARXIV_RSS_URL + "cs.CL", body=fixture_bytes(RSS_EMPTY))
    run = run_source(engine, db_settings, "arxiv", categories=["cs.CL"])
    assert run.status == "ok"
    assert run.summary["new"] == 0
    assert "arXiv announces nothing on Sunday and Saturday" in run.summary["empty_reason"]
    assert describe_run(run)[1].startswith("no new papers: the source listed no papers")


def test_one_category_down_does_not_stop_the_others_and_requests_keep_the_gap(
    engine, db_settings, mocked
):
    clock = FakeClock()

    def replay(status: int, body: bytes):
        def callback(_request):
            clock.request_times.append(clock.now)
            return status, {}, body

        return callback

    mocked.add_callback(responses.GET, ARXIV_RSS_URL + "cs.LG", callback=replay(503, b""))
    mocked.add_callback(
        responses.GET, ARXIV_RSS_URL + "cs.CL", callback=replay(200, fixture_bytes(RSS_ITEMS))
    )
    with Session(engine, expire_on_commit=False) as session:
        run = ingest_source(
            session=session,
            settings=db_settings.model_copy(update={"http_retries": 1}),
            source="arxiv",
            now=NOW,
            categories=["cs.LG", "cs.CL"],
            sleep=clock.sleep,
            clock=clock,
        )
    assert run.status == "partial"
    assert run.summary["new"] == 4 and run.summary["failed_requests"] == 1
    assert run.summary["errors"][0].startswith("arxiv rss cs.LG: ")
    assert "HTTP 503" in run.summary["errors"][0]
    # cs.LG, its retry after the 2 s backoff plus 1 s to make up arXiv's 3 s, then cs.CL 3 s later
    assert clock.sleeps == [2.0, 1.0, 3.0]
    assert clock.request_times == [0.0, 3.0, 6.0]


def test_ingest_sources_runs_each_configured_source(engine, db_settings, mocked):
    mocked.get(HF_DAILY_PAPERS_URL, body=fixture_bytes(HF_JUNE))
    settings = db_settings.model_copy(update={"ingest_sources": ["hf", "seeds"]})
    with Session(engine) as session:
        runs = ingest_sources(session=session, settings=settings, clock=lambda: NOW)
        assert [(r.summary["source"], r.status) for r in runs] == [("hf", "ok"), ("seeds", "ok")]
        assert runs[0].summary["new"] == 30 and runs[1].summary["new"] == 119
    with Session(engine) as session:
        assert [r.summary["source"] for r in last_runs(session=session)] == [
            "seeds",
            "hf",
        ]


# --- the bulk import --------------------------------------------------------------------------


def corpus_lines(n: int = 3) -> list[str]:
    return [
        json.dumps(
            {
                "id": f"2606.3{i:04d}",
                "title": f"Paper {i}",
                "summary": f"Abstract {i}.",
                "authors": ["A B"],
                "categories": ["cs.CL", "cs.AI"],
                "abs": f"https://arxiv.org/abs/2606.3{i:04d}",
                "first_seen": "2026-07-01",
                "seen_dates": ["2026-07-01"],
            }
        )
        for i in range(n)
    ]


def test_import_keeps_first_seen_and_a_second_import_adds_nothing(engine):
    with Session(engine) as session:
        report = paperstore.import_papers(session=session, lines=corpus_lines(5), now=NOW)
        assert (report.new, report.updated, report.unchanged) == (5, 0, 0)
        again = paperstore.import_papers(session=session, lines=corpus_lines(5), now=LATER)
        assert (again.new, again.updated, again.unchanged) == (0, 0, 5)
    with Session(engine) as session:
        papers = session.exec(select(Paper).order_by(col(Paper.id))).all()
        assert len(papers) == 5
        assert {p.first_seen for p in papers} == {dt.datetime(2026, 7, 1, tzinfo=dt.UTC)}
        assert papers[0].categories == ["cs.CL", "cs.AI"]
        assert papers[0].url == "https://arxiv.org/abs/2606.30000"
        assert {p.updated_at for p in papers} == {NOW}


def test_import_merges_known_ids_with_the_usual_rules(engine, mocked, db_settings):
    mocked.get(HF_DAILY_PAPERS_URL, body=fixture_bytes(HF_JUNE))
    run_source(engine, db_settings, "hf")
    known = hf_items()[0]["paper"]
    lines = [
        json.dumps(
            {
                "id": known["id"] + "v2",
                "title": known["title"],
                "categories": ["cs.CL"],
                "first_seen": "2026-06-01",
                "upvotes": 99,
            }
        ),
        *corpus_lines(2),
        "{broken",
    ]
    with Session(engine) as session:
        report = paperstore.import_papers(session=session, lines=lines, now=LATER, batch_size=2)
    assert (report.new, report.updated, len(report.bad_lines)) == (2, 1, 1)
    with Session(engine) as session:
        paper = session.get(Paper, known["id"])
        assert paper.upvotes == 99 and paper.categories == ["cs.CL"]
        assert paper.first_seen == dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
        assert paper.ai_summary == known["ai_summary"]  # kept from HF
        assert paper.abstract.startswith(known["summary"][:40])


def test_bulk_insert_leaves_a_row_another_writer_stored_meanwhile_to_the_merge(engine):
    from digest.paperstore import insert_new, paper_row
    from tests.factories import make_paper

    with Session(engine) as session:
        paperstore.upsert_papers(session=session, papers=[make_paper(id="2606.00001")], now=NOW)
        rows = [
            {**paper_row(make_paper(id=i)), "first_seen": NOW, "updated_at": NOW}
            for i in ("2606.00001", "2606.00002")
        ]
        assert insert_new(session, rows) == {"2606.00002"}
        session.commit()
        assert session.exec(select(func.count()).select_from(Paper)).one() == 2


def test_papers_are_stamped_when_written_not_when_the_fetch_began(engine, db_settings, mocked):
    """A digest skipped for want of papers while a fetch ran (stamped between the fetch's start
    and its write) must see the fetch's papers as newer than the skip: they are stamped when
    stored, so the planner looks at the skipped digest again."""
    mocked.get(HF_DAILY_PAPERS_URL, body=fixture_bytes(HF_JUNE))
    written = NOW + dt.timedelta(minutes=4)
    run = run_source(engine, db_settings, "hf", day=dt.date(2026, 6, 12), stored_at=lambda: written)
    assert run.started_at == NOW
    with Session(engine) as session:
        stamps = set(session.exec(select(Paper.updated_at)).all())
    assert stamps == {written}
