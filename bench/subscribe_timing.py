"""Does the subscribe form answer a known address as fast as an unknown one? (issue 5: "same
timing class"). Times POST /subscribe through the real app, a SQLite file store and a real SMTP
server (aiosmtpd on loopback), alternating unknown and known addresses, and prints the medians
and their ratio. The baseline is the unknown-address path, measured in the same run.

    .venv/bin/python bench/subscribe_timing.py [--requests 200]
"""

from __future__ import annotations

import argparse
import datetime as dt
import socket
import statistics
import tempfile
import time
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Sink
from sqlmodel import Session

from digest import subscribers
from digest.config import Settings
from digest.db import create_schema, make_engine
from digest.mailer import SMTPConfig, SMTPMailer
from digest.models import SubscriberStatus
from digest.web import create_app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="per kind of address")
    args = parser.parse_args()
    now = dt.datetime.now(dt.UTC)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            env="test",
            secret_key="bench-secret-key-0123456789abcdef",
            database_url=f"sqlite:///{Path(tmp) / 'bench.db'}",
            subscribe_limit_per_client="100000/hour",
            subscribe_limit_per_address="100000/hour",
        )
        engine = make_engine(settings.database_url)
        create_schema(engine)
        with Session(engine) as session:
            for n in range(args.requests):
                subscribers.add_subscriber(
                    session=session,
                    email=f"known{n}@example.com",
                    topics=["robots"],
                    now=now,
                    status=SubscriberStatus.ACTIVE if n % 2 else SubscriberStatus.PENDING,
                )
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        controller = Controller(Sink(), hostname="127.0.0.1", port=port)
        controller.start()
        try:
            mailer = SMTPMailer(SMTPConfig(host="127.0.0.1", port=port))
            app = create_app(settings, engine=engine, mailer=mailer)
            app.config["WTF_CSRF_ENABLED"] = False
            client = app.test_client()
            timings: dict[str, list[float]] = {"unknown": [], "known": []}
            for n in range(-10, args.requests):  # the first 10 of each warm up, untimed
                for kind, email in (
                    ("unknown", f"new{n}@example.com"),
                    ("known", f"known{max(n, 0)}@example.com"),
                ):
                    start = time.perf_counter()
                    r = client.post("/subscribe", data={"email": email, "topics": "robots"})
                    elapsed = time.perf_counter() - start
                    assert r.status_code == 200, r.get_data(as_text=True)
                    if n >= 0:
                        timings[kind].append(elapsed)
        finally:
            controller.stop()
            engine.dispose()
    base = statistics.median(timings["unknown"])
    print(f"{args.requests} requests each, SQLite file store, SMTP on loopback")
    for kind in ("unknown", "known"):
        values = sorted(timings[kind])
        p90 = values[int(len(values) * 0.9)]
        print(
            f"  {kind:>8} address: median {statistics.median(values) * 1000:6.2f} ms, "
            f"p90 {p90 * 1000:6.2f} ms, ratio to unknown {statistics.median(values) / base:.2f}"
        )


if __name__ == "__main__":
    main()
