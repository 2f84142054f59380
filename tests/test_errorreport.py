"""Error reports (digest/errorreport.py): sent to DIGEST_SENTRY_DSN when it is set, by the web app
and the CLI, to a real HTTP server here standing in for Sentry; never with a token in them."""

import gzip
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from digest.errorreport import init_error_reporting, scrub
from digest.tokens import Purpose, make_token
from tests.conftest import ROOT, SECRET, make_settings

pytestmark = pytest.mark.integration  # processes and a server

DIGEST = str(Path(sys.executable).parent / "digest")
TOKEN = make_token(SECRET, Purpose.UNSUBSCRIBE, {"s": 1})


class Sink:
    """An HTTP server that keeps every request body (decompressed), as Sentry would get it."""

    def __init__(self) -> None:
        self.bodies: list[str] = []
        self.paths: list[str] = []
        self.received = threading.Event()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                elif encoding == "br":
                    import brotli

                    body = brotli.decompress(body)
                sink.bodies.append(body.decode("utf-8", "replace"))
                sink.paths.append(self.path)
                sink.received.set()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def dsn(self) -> str:
        return f"http://publickey@127.0.0.1:{self.server.server_address[1]}/42"

    def text(self) -> str:
        return "\n".join(self.bodies)


@pytest.fixture
def sink():
    server = Sink()
    yield server
    server.server.shutdown()
    server.server.server_close()


def env_for(settings, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    env.update(
        DIGEST_ENV="test",
        DIGEST_SECRET_KEY=SECRET,
        DIGEST_DATABASE_URL=settings.database_url,
        DIGEST_OUTBOX_DIR=str(settings.outbox_dir),
        DIGEST_BASE_URL="https://digest.test",
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        **extra,
    )
    return env


def test_scrub_blanks_tokens_anywhere_in_an_event():
    event = {
        "request": {"url": f"https://digest.test/unsubscribe/{TOKEN}", "query_string": ""},
        "exception": {"values": [{"type": "ValueError", "value": f"bad {TOKEN}"}]},
        "breadcrumbs": {"values": [{"message": f"GET /preferences/{TOKEN}"}]},
        "extra": {f"/feedback/{TOKEN}": [f"{TOKEN}", 3]},
    }
    text = repr(scrub(event))
    assert TOKEN not in text and text.count("<token>") == 5
    assert scrub(event)["extra"] == {"/feedback/<token>": ["<token>", 3]}


def test_nothing_is_set_up_without_a_dsn(tmp_path):
    assert init_error_reporting(make_settings(tmp_path), process="cli") is False


WEB_SCRIPT = textwrap.dedent(
    """
    import sys
    import sentry_sdk
    from digest.config import Settings
    from digest.db import make_engine, upgrade_schema
    from digest.errorreport import init_error_reporting
    from digest.web import create_app

    settings = Settings()
    assert init_error_reporting(settings, process="web")
    engine = make_engine(settings.database_url)
    upgrade_schema(engine)
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE feedback")
        connection.exec_driver_sql("DROP TABLE delivery")
        connection.exec_driver_sql("DROP TABLE subscriber")
    app = create_app(settings, engine=engine)
    response = app.test_client().get("/unsubscribe/" + sys.argv[1])
    assert response.status_code == 500, response.status_code
    sentry_sdk.flush(10)
    """
)


def test_a_failing_page_behind_a_signed_link_is_reported_without_its_token(tmp_path, sink):
    settings = make_settings(tmp_path)
    env = env_for(settings, DIGEST_SENTRY_DSN=sink.dsn)
    done = subprocess.run(
        [sys.executable, "-c", WEB_SCRIPT, TOKEN],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert sink.received.wait(10), "no event arrived"
    text = sink.text()
    assert all(path == "/api/42/envelope/" for path in sink.paths)
    assert "OperationalError" in text and "no such table: subscriber" in text
    assert '"process":"web"' in text.replace(" ", "")
    assert "/unsubscribe/<token>" in text
    assert TOKEN not in text


def test_the_cli_reports_an_unhandled_error(tmp_path, sink):
    settings = make_settings(tmp_path)
    env = env_for(settings, DIGEST_SENTRY_DSN=sink.dsn)
    upgraded = subprocess.run(
        [DIGEST, "db", "upgrade"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert upgraded.returncode == 0, upgraded.stderr
    with sqlite3.connect(tmp_path / "digest.db") as connection:
        connection.execute("DROP TABLE run")  # the next `digest status` fails inside
    failed = subprocess.run(
        [DIGEST, "status"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert failed.returncode == 1 and "no such table: run" in failed.stderr
    assert sink.received.wait(10), "no event arrived"
    text = sink.text().replace(" ", "")
    assert '"process":"cli"' in text and "nosuchtable:run" in text
    assert SECRET not in text  # frames go without their local variables (the settings)


def test_a_worker_reports_a_task_that_fails(tmp_path, sink, celery_settings, celery_client):
    from digest.db import create_schema, make_engine
    from tests.conftest import start_worker

    create_schema(engine := make_engine(celery_settings.database_url))
    engine.dispose()
    worker = start_worker(
        celery_settings, tmp_path / "worker.log", extra_env={"DIGEST_SENTRY_DSN": sink.dsn}
    )
    try:
        result = celery_client.send_task("workers.tasks.ingest", kwargs={"source": "nope"})
        with pytest.raises(Exception, match="Unknown source"):
            result.get(timeout=60)
        assert sink.received.wait(20), "no event arrived"
    finally:
        worker.stop()
    text = sink.text().replace(" ", "")
    assert '"process":"worker"' in text and "Unknownsource" in text
    assert "workers.tasks.ingest" in text
