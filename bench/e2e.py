"""The whole daily job at scale, through real Celery workers on the real Redis into an SMTP sink.

    python bench/e2e.py --subscribers 100000 --papers 5000

Builds a fresh store (PostgreSQL by default, `--database sqlite` for a file), loads `--papers`
real arXiv papers (from the corpus given by `--corpus`, announced within the candidate window),
adds `--subscribers` subscribers whose send hour is now, each with one to three topics, starts
the SMTP sink (bench/smtp_sink.py) and `--workers` Celery worker processes, then runs the planner
task and waits until every digest reached the sink. Wall time runs from the planner task to the
last message accepted.

With the encoder (`DIGEST_ENCODER=minilm`, the default) relevance is hybrid, as in a deployment:
the papers' embeddings are stored before the run, as the ingest's embed task stores them (read
from the benchmark's cache of the product's model, `.cache/bench-embeddings`: the first run
encodes them, ~0.1 s of CPU a paper, outside the timed part), and the workers encode the
subscribers' topics during the run. `DIGEST_ENCODER=tfidf` runs the fallback.

The baseline, measured in the same run, is a naive pipeline: a per-subscriber ranking loop (one
profile at a time against the same prepared corpus), rendering, and one SMTP connection per
message, recording each delivery. It runs on a sample (`--naive-sample`) and is extrapolated to
all subscribers; the ratio is naive time over our wall time.

The last line printed is one JSON object with messages_per_second, wall_seconds, peak_rss_mb,
ratio_vs_naive and the figures behind them: the seconds to the first message (planning, and
fitting the day's model), and the CPU each part used (the worker processes, the sink,
PostgreSQL's server processes, Redis), in all and per message, since they share the cores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_CORPUS = ROOT.parent / "shared/data/arxiv-daily/arxiv-daily-2025-03-18_2026-07-01.jsonl.gz"
TOPICS = [
    "diffusion models",
    "large language models",
    "reinforcement learning",
    "robot learning",
    "legged robots",
    "graph neural networks",
    "retrieval augmented generation",
    "vision transformers",
    "speech recognition",
    "machine translation",
    "protein structure",
    "medical image segmentation",
    "autonomous driving",
    "federated learning",
    "differential privacy",
    "adversarial robustness",
    "3d reconstruction",
    "neural rendering",
    "object detection",
    "time series forecasting",
    "recommender systems",
    "code generation",
    "mathematical reasoning",
    "multimodal models",
    "video generation",
    "text to image",
    "quantization",
    "mixture of experts",
    "knowledge graphs",
    "question answering",
    "hallucination",
    "in-context learning",
    "causal inference",
    "bayesian optimization",
    "point clouds",
    "semantic segmentation",
    "anomaly detection",
    "contrastive learning",
    "self-supervised learning",
    "continual learning",
    "meta learning",
    "model compression",
    "sparse attention",
    "state space models",
    "world models",
    "embodied agents",
    "motion planning",
    "drug discovery",
    "climate modeling",
    "quantum computing",
    "optimization theory",
    "theorem proving",
    "fairness",
    "interpretability",
    "tabular data",
    "information retrieval",
    "dialogue systems",
    "sentiment analysis",
    "named entity recognition",
    "image captioning",
]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pids: list[int]) -> float:
    """Memory of a process tree: the sum of each process's proportional set size (PSS).

    Summing plain RSS would count the pages that forked workers share with their parent once
    per process; PSS splits each shared page among its sharers, so the sum is what the tree
    really holds in memory.
    """
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    kids = [int(x) for x in out.split()]
    for k in list(kids):
        kids += children(k)
    return kids


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (0 for those gone)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total / tick


def pids_named(name: str) -> list[int]:
    out = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


class PeakRSS(threading.Thread):
    """Samples the summed RSS of a process tree until stopped."""

    def __init__(self, root_pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.root_pids = root_pids
        self.peak = 0.0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            pids = list(self.root_pids)
            for p in self.root_pids:
                pids += children(p)
            self.peak = max(self.peak, rss_mb(pids))
            time.sleep(0.2)

    def stop(self) -> float:
        self._done.set()
        self.join()
        return self.peak


def load_papers(path: Path, count: int, now: dt.datetime, seed: int):
    from digest.papers import PaperIn

    rows = []
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            rows.append(line)
    rng = random.Random(seed)
    picked = rng.sample(rows, count)
    papers = []
    for i, line in enumerate(picked):
        data = json.loads(line)
        data["first_seen"] = (now - dt.timedelta(hours=rng.uniform(1, 60))).isoformat()
        data["upvotes"] = int(rng.paretovariate(1.5)) - 1 if i % 5 == 0 else None
        papers.append(PaperIn.model_validate(data))
    return papers


def make_database(kind: str, tmp: Path) -> tuple[str, callable]:
    if kind == "sqlite":
        return f"sqlite:///{tmp / 'bench.db'}", lambda: None
    import psycopg

    admin = kind
    name = f"digest_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return admin.rsplit("/", 1)[0] + "/" + name, drop


def store_paper_embeddings(session, settings, papers) -> None:
    """The papers' embeddings, stored as the ingest's embed task stores them (from the
    benchmark's cache of the same model: encoded only the first time)."""
    from bench.encoder import load_encoder as cached_encoder
    from digest.embedding_store import store_embeddings
    from digest.encoder import load_encoder, paper_text

    encoder = load_encoder(kind=settings.encoder)
    if encoder is None:
        return
    cached = cached_encoder()
    t0 = time.process_time()
    matrix = cached.encode([paper_text(p.title, p.abstract) for p in papers])
    store_embeddings(
        session=session, model=encoder.model_key, paper_ids=[p.id for p in papers], matrix=matrix
    )
    print(
        f"stored {len(papers)} paper embeddings ({cached.encoded} encoded now, "
        f"{time.process_time() - t0:.0f} s CPU; untimed: ingestion's work)",
        file=sys.stderr,
    )


def populate(settings, papers, subscribers: int, now: dt.datetime, seed: int) -> None:
    from sqlalchemy import insert
    from sqlmodel import Session

    from digest import paperstore
    from digest.db import create_schema, make_engine
    from digest.models import Subscriber

    engine = make_engine(settings.database_url)
    create_schema(engine)
    rng = random.Random(seed)
    with Session(engine) as session:
        paperstore.upsert_papers(session=session, papers=papers, now=now)
        store_paper_embeddings(session, settings, papers)
        rows = []
        for i in range(subscribers):
            rows.append(
                {
                    "email": f"reader{i:06d}@bench.example",
                    "status": "active",
                    "topics": rng.sample(TOPICS, rng.randint(1, 3)),
                    "exclude": ["survey"] if i % 10 == 0 else [],
                    "frequency": "daily",
                    "weekly_day": 0,
                    "send_hour": now.hour,
                    "timezone": "UTC",
                    "bounce_count": 0,
                    "created_at": now,
                }
            )
            if len(rows) == 10000:
                session.execute(insert(Subscriber), rows)
                rows = []
        if rows:
            session.execute(insert(Subscriber), rows)
        session.commit()
    engine.dispose()


def worker_env(settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    for name, value in settings.model_dump().items():
        if value is None:  # unset (DIGEST_SENTRY_DSN, DIGEST_METRICS_TOKEN): not "None"
            continue
        # Lists are comma-separated in the environment, as Settings reads them.
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        env[f"DIGEST_{name.upper()}"] = text
    return env


def sink_count(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except (OSError, ValueError):
        return 0


_engines: dict[str, object] = {}


def finished(settings) -> int:
    """Deliveries in a final state (sent, skipped, failed without retry)."""
    from sqlalchemy import func, select
    from sqlmodel import Session, col

    from digest.db import make_engine
    from digest.models import Delivery

    engine = _engines.setdefault(settings.database_url, make_engine(settings.database_url))
    with Session(engine) as session:
        return session.execute(
            select(func.count())
            .select_from(Delivery)
            .where(
                col(Delivery.state).in_(["sent", "skipped"])
                | ((col(Delivery.state) == "failed") & col(Delivery.retry_at).is_(None))
            )
        ).scalar_one()


def run_ours(
    settings, args, tmp: Path, sink_live: Path, sink_pid: int
) -> tuple[float, float, dict[str, float], float]:
    from workers.app import make_celery

    env = worker_env(settings)
    logs = open(tmp / "workers.log", "wb")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers",
            "worker",
            f"--loglevel={args.worker_loglevel}",
            "--pool=prefork",
            f"--concurrency={args.workers}",
            "-Q",
            settings.task_queue,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-n",
            f"bench-{uuid.uuid4().hex[:6]}@%h",
        ],
        cwd=ROOT,
        env=env,
        stdout=logs,
        stderr=subprocess.STDOUT,
    )
    client = make_celery(settings)
    try:
        client.control.ping(timeout=1)  # warm the connection
        deadline = time.monotonic() + 60
        while not client.control.ping(timeout=1):
            if time.monotonic() > deadline:
                raise SystemExit("workers did not start")
        monitor = PeakRSS([worker.pid])
        monitor.start()

        # Where the CPU goes: the workers, the sink, PostgreSQL and Redis share the cores.
        # Per process, so that the database connections opened during the run count in full.
        def cpu_by_process() -> dict[str, dict[int, float]]:
            groups = {
                "postgres": pids_named("postgres"),
                "redis": pids_named("redis-server"),
                "sink": [sink_pid],
                "workers": [worker.pid, *children(worker.pid)],
            }
            return {n: {p: cpu_seconds([p]) for p in pids} for n, pids in groups.items()}

        cpu_before = cpu_by_process()
        start = time.perf_counter()
        client.send_task("workers.tasks.plan_due")
        last, stalled_since = -1, time.monotonic()
        first_message = None
        checked = 0.0
        last_arrived, arrived_at, shown = -1, time.monotonic(), time.monotonic()
        while True:
            arrived = sink_count(sink_live)
            if first_message is None and arrived > 0:
                # Until here: planning, and preparing the day's corpus (the model fit).
                first_message = time.perf_counter() - start
            # Counting finished deliveries scans the table: ask the database when every message
            # arrived, and otherwise only when messages stopped arriving for a second (digests
            # skipped for want of a paper never reach the sink), so that the bench's own queries
            # hardly load the database while the run goes on.
            if arrived != last_arrived:
                last_arrived, arrived_at = arrived, time.monotonic()
                if arrived_at - shown >= 5.0:
                    print(f"  ours: {arrived}/{args.subscribers} messages", file=sys.stderr)
                    shown = arrived_at
            quiet = time.monotonic() - arrived_at >= 1.0
            if arrived < args.subscribers and not (quiet and time.monotonic() - checked >= 1.0):
                time.sleep(0.05)
                continue
            checked = time.monotonic()
            done = finished(settings)
            if done >= args.subscribers:
                break
            if done != last:
                if int(time.monotonic()) != int(stalled_since):
                    print(
                        f"  ours: {done}/{args.subscribers} digests done, "
                        f"{sink_count(sink_live)} messages",
                        file=sys.stderr,
                    )
                last, stalled_since = done, time.monotonic()
            elif time.monotonic() - stalled_since > 120:
                raise SystemExit(f"stalled at {done} digests; see {tmp / 'workers.log'}")
            time.sleep(0.05)
        wall = time.perf_counter() - start
        cpu_after = cpu_by_process()
        cpu = {
            name: round(
                sum(v - cpu_before[name].get(pid, 0.0) for pid, v in cpu_after[name].items()), 2
            )
            for name in cpu_after
        }
        peak = monitor.stop()
    finally:
        worker.terminate()
        worker.wait(30)
        client.close()
        logs.close()
    return wall, peak, cpu, first_message or wall


def run_naive(settings, sample: int, port: int, now: dt.datetime) -> float:
    """Seconds per message of the naive pipeline, measured on `sample` subscribers."""
    import smtplib

    from sqlalchemy import update
    from sqlmodel import Session, col, select

    from digest import digests
    from digest.db import make_engine
    from digest.delivery import CorpusCache
    from digest.models import Delivery, Subscriber
    from digest.ranking import rank_prepared
    from digest.render import Envelope, render_digest

    engine = make_engine(settings.database_url)
    with Session(engine) as session:
        subscribers = list(
            session.exec(select(Subscriber).order_by(col(Subscriber.id)).limit(sample))
        )
        corpus, papers = CorpusCache().get(
            session=session, settings=settings, digest_date=now.date(), now=now
        )
        config = digests.ranking_config(settings)
        start = time.perf_counter()
        for sub in subscribers:
            (profile,) = digests.profiles_for(session=session, subscribers=[sub])
            (picks,) = rank_prepared(corpus, [profile], config=config)
            context = digests.digest_context(
                settings=settings,
                subscriber=sub,
                digest_date=now.date(),
                picks=picks,
                papers=papers,
            )
            mail = render_digest(
                settings.templates_dir,
                context,
                Envelope(
                    sender_name=settings.from_name,
                    sender_address=settings.from_address,
                    recipient=sub.email,
                    now=now,
                    message_id=f"<{uuid.uuid4().hex}@bench>",
                ),
            )
            with smtplib.SMTP("127.0.0.1", port) as smtp:
                smtp.sendmail(mail.sender, [mail.recipient], mail.data)
            session.execute(
                update(Delivery).where(col(Delivery.subscriber_id) == sub.id).values(reason="naive")
            )
            session.commit()
        elapsed = time.perf_counter() - start
    engine.dispose()
    return elapsed / len(subscribers)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=100_000)
    parser.add_argument("--papers", type=int, default=5_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument(
        "--database",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="an admin PostgreSQL URL (a fresh database is made), or 'sqlite'",
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--naive-sample", type=int, default=500)
    parser.add_argument("--seed", type=int, default=7)
    # A relay across a network answers each message in a few milliseconds; 0 is loopback.
    parser.add_argument("--sink-delay-ms", type=float, default=0.0)
    # INFO shows when each batch was received and how long it took (in workers.log).
    parser.add_argument("--worker-loglevel", default="WARNING")
    args = parser.parse_args()

    from digest.config import Settings

    now = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0) + dt.timedelta(
        minutes=30
    )
    tmp = Path(tempfile.mkdtemp(prefix="digest-bench-"))
    print(f"run directory (worker log, sink stats): {tmp}", file=sys.stderr)
    database_url, drop = make_database(args.database, tmp)
    port = free_port()
    sink_live = tmp / "sink.count"
    sink = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench/smtp_sink.py"),
            "--port",
            str(port),
            "--stats",
            str(tmp / "sink.json"),
            "--live",
            str(sink_live),
            "--delay-ms",
            str(args.sink_delay_ms),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
    settings = Settings(
        env="test",
        secret_key="bench-secret-key-0123456789abcdef",
        database_url=database_url,
        redis_url=args.redis,
        task_queue=f"digest-bench-{uuid.uuid4().hex[:8]}",
        mailer="smtp",
        smtp_url=f"smtp://127.0.0.1:{port}",
        send_batch_size=args.batch_size,
        base_url="https://digest.example",
        from_address="digest@digest.example",
        candidate_days=3,
        # A fresh corpus cache: the run fits its own model, as the first run of a day does.
        cache_dir=tmp / "cache",
    )
    try:
        print(
            f"loading {args.papers} papers and {args.subscribers} subscribers ...", file=sys.stderr
        )
        papers = load_papers(args.corpus, args.papers, now, args.seed)
        populate(settings, papers, args.subscribers, now, args.seed)
        wall, peak, cpu, first_message = run_ours(settings, args, tmp, sink_live, sink.pid)
        print(f"naive pipeline on {args.naive_sample} subscribers ...", file=sys.stderr)
        naive_port = free_port()
        naive_sink = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "bench/smtp_sink.py"),
                "--port",
                str(naive_port),
                "--stats",
                str(tmp / "naive.json"),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert naive_sink.stdout is not None and naive_sink.stdout.readline().strip() == "ready"
        try:
            naive_per_message = run_naive(settings, args.naive_sample, naive_port, now)
        finally:
            naive_sink.terminate()
            naive_sink.wait(30)
    finally:
        sink.terminate()
        sink.wait(30)
        drop()
    for engine in _engines.values():
        engine.dispose()  # type: ignore[attr-defined]
    stats = json.loads((tmp / "sink.json").read_text())
    naive_total = naive_per_message * args.subscribers
    result = {
        "subscribers": args.subscribers,
        "papers": args.papers,
        "workers": args.workers,
        "database": "sqlite" if args.database == "sqlite" else "postgresql",
        "messages": stats["messages"],
        "duplicates": stats["duplicates"],
        "wall_seconds": round(wall, 2),
        "skipped_no_relevant_paper": args.subscribers - stats["messages"],
        "messages_per_second": round(stats["messages"] / wall, 1),
        "peak_rss_mb": round(peak, 1),
        "naive_seconds_per_message": round(naive_per_message, 5),
        "naive_extrapolated_seconds": round(naive_total, 1),
        "ratio_vs_naive": round(naive_total / wall, 2),
        # Planning and preparing the day's corpus (the model fit), before the first message.
        "first_message_seconds": round(first_message, 2),
        # CPU seconds each part used during our run (postgres: its server processes).
        "cpu_seconds": cpu,
        "cpu_ms_per_message": {
            name: round(1000 * value / max(1, stats["messages"]), 3) for name, value in cpu.items()
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
