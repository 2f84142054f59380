"""A local HTTP server standing in for Hugging Face and arXiv, replaying recorded responses.

For tests that run the real `digest` command or a real Celery worker in another process, where
the in-process `responses` mock cannot reach.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


@dataclass
class Reply:
    body: bytes
    status: int = 200
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class SeenRequest:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


@dataclass
class FakeSources:
    """Path -> replies served in order (the last one repeats); records every request."""

    base_url: str = ""
    routes: dict[str, list[Reply]] = field(default_factory=dict)
    requests: list[SeenRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def route(self, path: str, *replies: Reply) -> None:
        self.routes[path] = list(replies)

    def next_reply(self, path: str) -> Reply:
        with self.lock:
            replies = self.routes.get(path)
            if not replies:
                return Reply(b"not found", 404, "text/plain")
            return replies.pop(0) if len(replies) > 1 else replies[0]


def _handler(sources: FakeSources) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            parts = urlsplit(self.path)
            with sources.lock:
                sources.requests.append(
                    SeenRequest(parts.path, parse_qs(parts.query), dict(self.headers.items()))
                )
            reply = sources.next_reply(parts.path)
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(reply.body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    return Handler


@pytest.fixture(name="fake_sources")
def fake_sources_fixture() -> Iterator[FakeSources]:
    sources = FakeSources()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(sources))
    sources.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield sources
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
