"""The HTTP behaviour of the sources against recorded responses replayed by `responses`:
retries, Retry-After, timeouts, arXiv's 3 s gap, the User-Agent. No test sleeps or goes online."""

from __future__ import annotations

import datetime as dt

import pytest
import requests
import responses
from responses import matchers

from digest.sources.arxiv import ARXIV_API_URL, ARXIV_RSS_URL, fetch_arxiv_api, fetch_arxiv_rss
from digest.sources.hf import HF_DAILY_PAPERS_URL, fetch_hf_daily, parse_hf_daily
from digest.sources.http import FetchError, HttpClient, Throttle, retry_after_seconds
from tests.fake_sources import fixture_bytes

UA = "digest-test/1.0 (tests)"


class FakeClock:
    """time.monotonic and time.sleep in one: sleeping moves the clock, and is recorded."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def __call__(self) -> float:
        return self.now


def client(clock: FakeClock, **kwargs) -> HttpClient:
    return HttpClient(user_agent=UA, sleep=clock.sleep, **kwargs)


@responses.activate
def test_requests_name_the_project_and_retry_5xx_with_exponential_backoff():
    clock = FakeClock()
    responses.get(HF_DAILY_PAPERS_URL, status=503)
    responses.get(HF_DAILY_PAPERS_URL, status=502)
    responses.get(HF_DAILY_PAPERS_URL, body=fixture_bytes("api-daily-papers-2026-07-31.json"))
    with client(clock, backoff=2.0) as http:
        pages = list(fetch_hf_daily(http, day=dt.date(2026, 7, 31), limit=100))
    assert clock.sleeps == [2.0, 4.0]
    assert len(pages) == 1 and pages[0].attempts == 3
    assert len(parse_hf_daily(pages[0].body).papers) == 5
    sent = responses.calls[-1].request
    assert sent.headers["User-Agent"] == UA
    assert "date=2026-07-31" in sent.url and "limit=100" in sent.url


@responses.activate
def test_a_429_storm_honours_retry_after_then_gives_up_with_a_clear_error():
    clock = FakeClock()
    responses.get(HF_DAILY_PAPERS_URL, status=429, headers={"Retry-After": "7"})
    with client(clock, retries=3, backoff=1.0) as http, pytest.raises(FetchError) as raised:
        list(fetch_hf_daily(http, day=None))
    assert clock.sleeps == [7.0, 7.0, 7.0]  # Retry-After, not the 1-2-4 s backoff
    assert len(responses.calls) == 4
    message = str(raised.value)
    assert "HTTP 429" in message and "Retry-After 7" in message and "after 4 attempts" in message


@responses.activate
def test_a_long_retry_after_is_capped():
    clock = FakeClock()
    responses.get(HF_DAILY_PAPERS_URL, status=429, headers={"Retry-After": "86400"})
    responses.get(HF_DAILY_PAPERS_URL, body=b"[]")
    with client(clock, max_wait=60.0) as http:
        list(fetch_hf_daily(http, day=None))
    assert clock.sleeps == [60.0]


def test_retry_after_as_an_http_date():
    now = dt.datetime(2026, 6, 12, 8, 0, 0, tzinfo=dt.UTC)
    assert retry_after_seconds("Fri, 12 Jun 2026 08:00:30 GMT", now) == 30.0
    assert retry_after_seconds("Fri, 12 Jun 2026 07:00:00 GMT", now) == 0.0
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds("12", now) == 12.0


@responses.activate
def test_a_timeout_is_retried_then_reported():
    clock = FakeClock()
    responses.get(HF_DAILY_PAPERS_URL, body=requests.ReadTimeout("read timed out"))
    with client(clock, retries=2, timeout=5.0) as http, pytest.raises(FetchError) as raised:
        list(fetch_hf_daily(http, day=None))
    assert len(responses.calls) == 3 and clock.sleeps == [2.0, 4.0]
    assert "no answer within 5 s after 3 attempts" in str(raised.value)


@responses.activate
def test_a_timeout_then_success_returns_the_response():
    clock = FakeClock()
    responses.get(HF_DAILY_PAPERS_URL, body=requests.ConnectTimeout("connect timed out"))
    responses.get(HF_DAILY_PAPERS_URL, body=b"[]")
    with client(clock) as http:
        pages = list(fetch_hf_daily(http, day=None))
    assert pages[0].body == b"[]" and pages[0].attempts == 2


@responses.activate
def test_client_errors_are_not_retried():
    clock = FakeClock()
    responses.get(HF_DAILY_PAPERS_URL, status=404, body="no such page")
    with client(clock) as http, pytest.raises(FetchError, match="HTTP 404"):
        list(fetch_hf_daily(http, day=None))
    assert len(responses.calls) == 1 and clock.sleeps == []


@responses.activate
def test_hf_pages_until_a_short_page():
    clock = FakeClock()
    full = fixture_bytes("api-daily-papers-2026-07-31.json")
    responses.get(
        HF_DAILY_PAPERS_URL,
        body=full,
        match=[matchers.query_param_matcher({"limit": "5", "p": "0", "sort": "publishedAt"})],
    )
    responses.get(
        HF_DAILY_PAPERS_URL,
        body=b"[]",
        match=[matchers.query_param_matcher({"limit": "5", "p": "1", "sort": "publishedAt"})],
    )
    with client(clock) as http:
        pages = list(fetch_hf_daily(http, day=None, limit=5))
    assert [len(parse_hf_daily(p.body).papers) for p in pages] == [5, 0]


def test_throttle_keeps_three_seconds_between_requests():
    clock = FakeClock()
    throttle = Throttle(3.0, sleep=clock.sleep, clock=clock)
    throttle.wait()
    assert clock.sleeps == []
    clock.now += 1.0  # the first request took a second
    throttle.wait()
    assert clock.sleeps == [2.0]
    clock.now += 10.0
    throttle.wait()
    assert clock.sleeps == [2.0]


@responses.activate
def test_arxiv_requests_are_spaced_by_the_throttle_retries_included():
    clock = FakeClock()
    throttle = Throttle(3.0, sleep=clock.sleep, clock=clock)
    responses.get(ARXIV_RSS_URL + "cs.CL", status=503)
    responses.get(
        ARXIV_RSS_URL + "cs.CL", body=fixture_bytes("rss-cs.CL-2026-07-01-constructed.xml")
    )
    responses.get(
        ARXIV_RSS_URL + "cs.LG", body=fixture_bytes("rss-cs.CL-weekend-empty-2026-08-01.xml")
    )
    with client(clock, throttle=throttle, backoff=1.0) as http:
        fetch_arxiv_rss(http, category="cs.CL")
        fetch_arxiv_rss(http, category="cs.LG")
    # 503 -> backoff 1 s, then the throttle waits the 2 s left of the 3 s gap; then a full 3 s.
    assert clock.sleeps == [1.0, 2.0, 3.0]
    assert [c.request.url for c in responses.calls] == [
        ARXIV_RSS_URL + "cs.CL",
        ARXIV_RSS_URL + "cs.CL",
        ARXIV_RSS_URL + "cs.LG",
    ]


@responses.activate
def test_arxiv_api_query_by_category_and_day():
    clock = FakeClock()
    responses.get(ARXIV_API_URL, body=fixture_bytes("api-query-transformer-cs.LG-2026-06-14.xml"))
    with client(clock) as http:
        pages = list(
            fetch_arxiv_api(http, category="cs.LG", day=dt.date(2026, 6, 11), page_size=50)
        )
    assert len(pages) == 1  # 5 entries < 50: no second page
    params = responses.calls[0].request.params
    assert params["search_query"] == "cat:cs.LG AND submittedDate:[202606110000 TO 202606112359]"
    assert (params["start"], params["max_results"], params["sortBy"]) == (
        "0",
        "50",
        "submittedDate",
    )
