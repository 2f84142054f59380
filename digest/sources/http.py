"""Polite HTTP for the sources: timeouts, retries with exponential backoff on 429/5xx that honour
Retry-After, a User-Agent naming the project, and an optional minimum gap between requests."""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests

from digest.logs import event

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
log = logging.getLogger(__name__)


class FetchError(Exception):
    """A request that failed for good (after retries): the message says what and why."""


@dataclass
class Throttle:
    """At most one request every `min_interval` seconds (arXiv asks for 3 s)."""

    min_interval: float
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    _last: float | None = None

    def wait(self) -> None:
        if self._last is not None:
            remaining = self._last + self.min_interval - self.clock()
            if remaining > 0:
                self.sleep(remaining)
        self._last = self.clock()


def retry_after_seconds(value: str | None, now: dt.datetime | None = None) -> float | None:
    """Retry-After as seconds: either a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    now = now or dt.datetime.now(dt.UTC)
    return max(0.0, (when - now).total_seconds())


@dataclass
class Response:
    url: str
    status: int
    content_type: str
    body: bytes
    attempts: int


@dataclass
class HttpClient:
    """One requests session (one connection at a time) with the project's retry policy."""

    user_agent: str
    timeout: float = 30.0
    retries: int = 4  # further attempts after the first
    backoff: float = 2.0  # seconds before the first retry; doubles each time
    max_wait: float = 120.0  # cap on any one wait, including a long Retry-After
    sleep: Callable[[float], None] = time.sleep
    throttle: Throttle | None = None
    session: requests.Session = field(default_factory=requests.Session)
    waits: list[float] = field(default_factory=list)  # what it slept between attempts

    def __post_init__(self) -> None:
        self.session.headers["User-Agent"] = self.user_agent
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=1)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def get(self, url: str, params: Mapping[str, Any] | None = None) -> Response:
        last_problem = ""
        for attempt in range(self.retries + 1):
            if self.throttle is not None:
                self.throttle.wait()
            wait: float | None = None
            try:
                reply = self.session.get(url, params=params, timeout=self.timeout)
            except requests.Timeout:
                last_problem = f"no answer within {self.timeout:g} s"
            except requests.ConnectionError as exc:
                last_problem = f"connection failed ({type(exc).__name__})"
            else:
                with reply:
                    if reply.status_code < 400:
                        return Response(
                            url=reply.url,
                            status=reply.status_code,
                            content_type=reply.headers.get("Content-Type", ""),
                            body=reply.content,
                            attempts=attempt + 1,
                        )
                    last_problem = f"HTTP {reply.status_code} {reply.reason or ''}".strip()
                    if reply.status_code not in RETRY_STATUSES:
                        raise FetchError(f"{url}: {last_problem}")
                    wait = retry_after_seconds(reply.headers.get("Retry-After"))
                    if wait is not None:
                        last_problem += f" (Retry-After {reply.headers['Retry-After']})"
            if attempt == self.retries:
                break
            if wait is None:
                wait = self.backoff * (2**attempt)
            wait = min(wait, self.max_wait)
            event(
                log,
                "http.retry",
                level=logging.WARNING,
                url=url,
                attempt=attempt + 1,
                problem=last_problem,
                wait_seconds=round(wait, 1),
            )
            self.waits.append(wait)
            self.sleep(wait)
        raise FetchError(f"{url}: {last_problem} after {self.retries + 1} attempts")
