"""The one Settings object: every tunable of the service, read from DIGEST_* variables."""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import parse_qs, urlsplit

import redis
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from digest.resources import data_dir
from digest.schedule import zone

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Public (it is in the source): accepted only when set on purpose, and then only by a server on
# a loopback address in development. Never a default.
DEV_SECRET_KEY = "dev-insecure-secret-key-change-me"
SECRET_KEY_FILE = "secret_key"
MIN_SECRET_KEY_CHARS = 16
ARXIV_CATEGORY = re.compile(r"^[a-z-]+(\.[A-Za-z-]+)?$")
# The database URLs we have a driver for; `postgres://` (Heroku's, many hosts') is an alias.
DATABASE_DRIVERS = ("sqlite", "sqlite+pysqlite", "postgresql", "postgresql+psycopg")
SMTP_PIPELINING = ("auto", "always", "never")
# The bounce address: a DNS name of ASCII labels, and a plain local part that leaves room for
# "+token" (and takes no "+" itself: that separates the token).
BOUNCE_DOMAIN_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
BOUNCE_LOCAL_PART = re.compile(r"^[A-Za-z0-9]+(?:[.-][A-Za-z0-9]+)*$")


def safe_url(url: str) -> str:
    """`url` with its password hidden, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def check_database_url(url: str) -> str:
    """`url` with `postgres://` spelled `postgresql://`; a ValueError says what is wrong."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    try:
        driver = make_url(url).drivername
    except ArgumentError:
        raise ValueError(
            f"cannot read {safe_url(url)!r} as a database URL: use sqlite:////abs/path/digest.db "
            "or postgresql://user:password@host:5432/dbname"
        ) from None
    if driver not in DATABASE_DRIVERS:
        raise ValueError(
            f"unknown database scheme {driver + '://'!r}: use sqlite:///path/digest.db "
            "or postgresql://user:password@host:5432/dbname (postgres:// works too)"
        )
    return url


def check_smtp_url(url: str) -> None:
    """A ValueError says what is wrong with an SMTP URL (smtp[s]://user:pass@host:port)."""
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps"):
        raise ValueError(f"must start with smtp:// or smtps://, got {safe_url(url)!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"the port of {safe_url(url)!r} is not a number from 1 to 65535") from None
    if port == 0:
        raise ValueError(f"the port of {safe_url(url)!r} is not a number from 1 to 65535")
    if not parts.hostname:
        raise ValueError(f"{safe_url(url)!r} names no host, e.g. smtp://mail.example.org:587")
    pipelining = parse_qs(parts.query).get("pipelining", ["auto"])[0].lower()
    if pipelining not in SMTP_PIPELINING:
        raise ValueError(f"pipelining={pipelining!r}: use auto, always or never")


def redis_problem(url: str, *, timeout: float = 3.0) -> str | None:
    """Why the Redis at DIGEST_REDIS_URL does not answer a PING, in one line, or None."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, ValueError, OSError) as exc:
        reason = " ".join(str(exc).split())[:300]
        return f"DIGEST_REDIS_URL: cannot reach Redis at {safe_url(url)} ({reason})"
    return None


def describe_settings_error(exc: ValidationError) -> str:
    """One line: each wrong setting by its variable name, and what is wrong with it (never
    its value, which may be a secret)."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["loc"]:
            name = "DIGEST_" + str(error["loc"][0]).upper()
            message = f"{name}: {message}"
        problems.append(message)
    return "; ".join(problems)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DIGEST_", extra="ignore")

    env: Literal["development", "test", "production"] = "development"
    # Signs every link in emails. Unset, a process gets a random key of its own, and the edges
    # (CLI, web app, worker: get_settings) keep one in data_dir, created on first run, so that
    # the links one process signs work in the others and after a restart.
    secret_key: str = Field(default_factory=lambda: secrets.token_urlsafe(32))
    # What the service creates for itself (the generated secret key). Give the web app, the
    # worker and the CLI the same absolute path, or set DIGEST_SECRET_KEY for all of them.
    data_dir: Path = Path("instance")

    database_url: str = "sqlite:///digest.db"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # The Celery queue the tasks go to; separate deployments on one Redis use separate queues.
    task_queue: str = "digest"

    # Delivery: "file" writes .eml files under outbox_dir, "smtp" sends through smtp_url,
    # "console" prints messages.
    mailer: Literal["file", "smtp", "console"] = "file"
    outbox_dir: Path = Path("outbox")
    # smtp://user:pass@host:port, smtps:// for implicit TLS; ?starttls=1 to upgrade a plain one.
    smtp_url: str = "smtp://127.0.0.1:1025"
    smtp_timeout: float = 30.0

    from_address: str = "digest@localhost"
    from_name: str = "Paper digest"
    # Where the one-click mailto: unsubscribe goes (processed by `digest unsubscribes process`).
    unsubscribe_mailto: str = "unsubscribe@localhost"
    # Bounces: set, each digest's envelope sender (MAIL FROM, the Return-Path) is
    # bounce_local_part+TOKEN@bounce_domain, a signed token naming its delivery (VERP), and
    # `digest bounces process` reads the mailbox that domain delivers to. Unset, the envelope
    # sender is from_address. A subdomain of from_address's domain keeps DMARC aligned.
    bounce_domain: str | None = None
    bounce_local_part: str = "bounces"
    # A bounce without a valid token is tied to its address's digest sent within this many days.
    bounce_match_days: int = Field(default=14, ge=1, le=365)
    base_url: str = "http://127.0.0.1:8000"

    # Shipped in the wheel, or the checkout's top-level folders (digest.resources).
    seeds_dir: Path = Field(default_factory=lambda: data_dir("seeds"))
    templates_dir: Path = Field(default_factory=lambda: data_dir("templates"))

    # Ranking.
    digest_size: int = Field(default=10, ge=1, le=100)
    candidate_days: int = Field(default=7, ge=1)
    half_life_days: float = Field(default=3.0, gt=0)
    min_relevance: float = Field(default=0.05, ge=0)
    weight_topic: float = Field(default=0.6, ge=0)
    weight_recency: float = Field(default=0.1, ge=0)
    weight_trending: float = Field(default=0.15, ge=0)
    # Paper embeddings (digest/encoder.py): "minilm" encodes each paper once, after ingestion;
    # "tfidf" runs without an encoder (also the fallback when the model is not installed).
    encoder: Literal["minilm", "tfidf"] = "minilm"
    # onnxruntime threads per encoding process; like worker_blas_threads, one per process.
    encoder_threads: int = Field(default=1, ge=1, le=64)
    # Papers encoded and committed together by `digest papers embed` and the embed task.
    embed_batch_size: int = Field(default=256, ge=1)

    # Schedule.
    default_send_hour: int = Field(default=7, ge=0, le=23)
    default_timezone: str = "UTC"
    send_batch_size: int = Field(default=500, ge=1)
    ingest_hour_utc: int = Field(default=5, ge=0, le=23)
    plan_every_minutes: int = Field(default=10, ge=1, le=60)

    # Delivery.
    # A planner that runs late still sends a day's digest up to this many hours after its hour.
    catchup_hours: float = Field(default=12.0, ge=0, le=23)
    # How long a worker owns the deliveries it claimed before another may take them over. A
    # live sender renews it every third of this (digest.delivery.lease), so a long batch or a
    # stalled server keeps its rows; a dead worker's rows are free again after this long.
    lease_seconds: int = Field(default=45, ge=3)
    # A planned delivery that no queued task carries, this long after it was planned or last
    # queued, is queued again by the sweeper (a lost task, a flushed Redis).
    planned_grace_seconds: int = Field(default=30, ge=0)
    # The sweeper's period. Recovery bound: lease (or grace) + this + the send itself.
    sweep_every_minutes: int = Field(default=1, ge=1, le=60)
    # "durable": each outcome ("sent", "failed") is on disk when its commit returns. "fast"
    # (PostgreSQL synchronous_commit=off): cheaper commits, but a crash of PostgreSQL itself can
    # lose the last fraction of a second of "sent" marks, and those digests go out again.
    outcome_commit: Literal["durable", "fast"] = "durable"
    # A delivery whose connection dropped after the whole message was handed over, before the
    # server answered, is "unconfirmed": "hold" keeps it so (an operator may release it with
    # `digest deliveries release`); "resend" retries it like a temporary failure (it may then
    # arrive twice).
    unconfirmed: Literal["hold", "resend"] = "hold"
    # How long an outcome write keeps trying on a database that went away (a restart), before
    # the batch stops; the message just handed over is never sent again meanwhile.
    db_retry_seconds: float = Field(default=120.0, ge=0)
    # Temporary SMTP failures: tries within one task, then retried later until the deadline.
    smtp_attempts: int = Field(default=3, ge=1)
    smtp_retry_base_seconds: float = Field(default=0.5, ge=0)
    retry_deadline_hours: float = Field(default=6.0, gt=0)
    # Later retries of a temporarily failed digest: this long after the first, doubling.
    retry_base_seconds: float = Field(default=60.0, gt=0)
    # Messages per second through one connection (0: no limit) and the burst it allows.
    smtp_rate_per_second: float = Field(default=0.0, ge=0)
    smtp_rate_burst: int = Field(default=50, ge=1)
    # Permanent failures (5xx) in a row after which an address is suppressed.
    suppress_after_failures: int = Field(default=3, ge=1)
    # Where the worker processes of a host share the day's prepared candidate corpus (fitted
    # once, loaded by the others). Only this service should be able to write there.
    cache_dir: Path = Path(tempfile.gettempdir()) / "digest-cache"
    # Celery: seconds before an unacknowledged task of a dead worker is delivered again.
    visibility_timeout: int = Field(default=3600, ge=1)
    # BLAS threads per worker process (ranking's matrix products). Worker processes already
    # run one per core; more threads each only fight over the cores (measured: a QR step 40x
    # slower with two threads per process on a busy 2-core machine). 0 leaves the default.
    worker_blas_threads: int = Field(default=1, ge=0)

    # Paper sources (digest/sources/). Lists are comma-separated in the environment.
    ingest_sources: Annotated[list[Literal["hf", "arxiv", "seeds"]], NoDecode] = ["hf"]
    arxiv_categories: Annotated[list[str], NoDecode] = ["cs.LG", "cs.CL", "cs.AI", "cs.CV"]
    hf_daily_papers_url: str = "https://huggingface.co/api/daily_papers"
    hf_page_size: int = Field(default=100, ge=1, le=100)
    arxiv_api_url: str = "https://export.arxiv.org/api/query"
    arxiv_rss_url: str = "https://rss.arxiv.org/rss/"
    arxiv_page_size: int = Field(default=200, ge=1, le=2000)
    # A scheduled ingestion whose source failed entirely is tried again this often.
    ingest_retries: int = Field(default=3, ge=0)
    ingest_retry_seconds: int = Field(default=900, ge=1)
    # arXiv's terms: one request every 3 seconds, one connection at a time.
    arxiv_delay_seconds: float = Field(default=3.0, ge=3.0)
    http_timeout: float = Field(default=30.0, gt=0)
    http_retries: int = Field(default=4, ge=0, le=10)
    http_backoff_seconds: float = Field(default=2.0, ge=0)
    http_max_wait_seconds: float = Field(default=120.0, ge=0)
    # Sources ask that clients name themselves; operators should append a contact address.
    http_user_agent: str = "digest/0.1 (self-hosted research-paper digest; python-requests)"

    # Token lifetimes (seconds).
    confirm_max_age: int = 3 * 24 * 3600

    # Operating (digest/logs.py, digest/metrics.py, digest/errorreport.py). Logs go to stderr,
    # one line per event, as text or as one JSON object a line.
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Errors reported to Sentry (or a compatible server) by the web app, workers, beat and CLI.
    sentry_dsn: str | None = None
    # /metrics answers a request with `Authorization: Bearer <this>`; unset, only a request
    # made on this host (a loopback peer, not through a proxy) is answered.
    metrics_token: str | None = Field(default=None, min_length=MIN_SECRET_KEY_CHARS)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        return check_database_url(value)

    @field_validator("smtp_url")
    @classmethod
    def _smtp_url(cls, value: str) -> str:
        check_smtp_url(value)
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("sentry_dsn", "metrics_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `DIGEST_METRICS_TOKEN=` in an env file means no token, not an empty one.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("sentry_dsn")
    @classmethod
    def _sentry_dsn(cls, value: str | None) -> str | None:
        if not value:
            return None
        from sentry_sdk.utils import BadDsn, Dsn

        try:
            Dsn(value)
        except BadDsn as exc:
            raise ValueError(f"not a Sentry DSN like https://KEY@host/PROJECT ({exc})") from None
        return value

    @field_validator("bounce_domain")
    @classmethod
    def _bounce_domain(cls, value: str | None) -> str | None:
        value = (value or "").strip().lower().rstrip(".")
        if not value:
            return None
        if len(value) > 253 or not all(BOUNCE_DOMAIN_LABEL.match(p) for p in value.split(".")):
            raise ValueError(f"{value!r} is not a domain name like bounces.example.org")
        return value

    @field_validator("bounce_local_part")
    @classmethod
    def _bounce_local_part(cls, value: str) -> str:
        if len(value) > 20 or not BOUNCE_LOCAL_PART.match(value):
            raise ValueError(
                f"{value!r}: use 1 to 20 letters, digits, dots or dashes (no '+'), e.g. bounces"
            )
        return value

    @field_validator("default_timezone")
    @classmethod
    def _default_timezone(cls, value: str) -> str:
        zone(value)  # a ValueError names it
        return value

    @field_validator("ingest_sources", "arxiv_categories", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("arxiv_categories", mode="after")
    @classmethod
    def _arxiv_categories(cls, value: list[str]) -> list[str]:
        for category in value:
            if not ARXIV_CATEGORY.match(category):
                raise ValueError(f"{category!r} is not an arXiv category like cs.LG")
        return value

    # Abuse limits on the subscribe form, in the `limits` notation ("3/hour;5/day"): per client
    # address, and per target address so the form cannot bomb someone's inbox. Counted in
    # rate_limit_storage_url: memory:// (one web process) or redis://host:port/db (several).
    rate_limit_storage_url: str = "memory://"
    subscribe_limit_per_client: str = "10/hour;50/day"
    subscribe_limit_per_address: str = "3/hour;5/day"
    # How many reverse proxies in front of the web app set X-Forwarded-For (0: use the peer).
    trusted_proxy_hops: int = Field(default=0, ge=0, le=5)

    @field_validator("subscribe_limit_per_client", "subscribe_limit_per_address")
    @classmethod
    def _rate_limit_notation(cls, value: str) -> str:
        from limits import parse_many

        try:
            if not parse_many(value):
                raise ValueError(value)
        except ValueError as exc:
            raise ValueError(
                f"{value!r} is not a rate limit like '3/hour' or '3/hour;5/day'"
            ) from exc
        return value

    @model_validator(mode="after")
    def _refuse_default_secret_in_production(self) -> Settings:
        # Several hosts of a production deployment must share one key: none is made up there.
        if self.env == "production" and (
            not self.secret_key_is_set
            or self.secret_key == DEV_SECRET_KEY
            or len(self.secret_key) < MIN_SECRET_KEY_CHARS
        ):
            raise ValueError(
                "DIGEST_SECRET_KEY must be set to a long random value when DIGEST_ENV=production"
            )
        return self

    @model_validator(mode="after")
    def _lease_outlasts_one_message(self) -> Settings:
        # A sender starts a message only while its lease covers the longest that one message
        # can take; a lease shorter than that could never send, or lose its rows mid-message.
        if self.mailer == "smtp":
            longest = self.smtp_timeout + (
                1.0 / self.smtp_rate_per_second if self.smtp_rate_per_second else 0.0
            )
            if self.lease_seconds <= longest:
                raise ValueError(
                    f"DIGEST_LEASE_SECONDS={self.lease_seconds} is too short: one message may "
                    f"take {longest:g} s (DIGEST_SMTP_TIMEOUT"
                    + (" + 1/DIGEST_SMTP_RATE_PER_SECOND" if self.smtp_rate_per_second else "")
                    + f"); make it more than {longest:g}"
                )
        return self

    @property
    def secret_key_is_set(self) -> bool:
        return "secret_key" in self.model_fields_set

    @property
    def uses_default_secret(self) -> bool:
        return self.secret_key == DEV_SECRET_KEY


HOW_TO_SET_A_KEY = (
    "set DIGEST_SECRET_KEY to a long random value, e.g. "
    "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
)


def with_kept_secret_key(settings: Settings) -> Settings:
    """`settings` with the key kept in data_dir when DIGEST_SECRET_KEY is not set: read if it
    is there, else created (random, readable by this user only) and kept for every later run.

    A ValueError says what to do when the folder cannot be written or the file is unusable.
    """
    if settings.secret_key_is_set:
        return settings
    path = settings.data_dir / SECRET_KEY_FILE
    try:
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = secrets.token_urlsafe(32)
        try:
            # O_EXCL: processes starting together agree on the one that wrote it first.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            key = path.read_text(encoding="ascii").strip()
        else:
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(key + "\n")
    except (OSError, UnicodeError) as exc:
        raise ValueError(
            f"DIGEST_SECRET_KEY is not set and the key file {path} cannot be kept "
            f"({exc.__class__.__name__}: {exc}): {HOW_TO_SET_A_KEY}, "
            "or DIGEST_DATA_DIR to a folder this user can write"
        ) from None
    if len(key) < MIN_SECRET_KEY_CHARS or key == DEV_SECRET_KEY:
        raise ValueError(
            f"the key in {path} is empty, short or public: delete it, or {HOW_TO_SET_A_KEY}"
        )
    return settings.model_copy(update={"secret_key": key})


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def public_key_refusal(settings: Settings, *, host: str | None = None) -> str | None:
    """Why `settings` must not sign links here, in one line, or None when they may.

    The public development key is for a server on a loopback address in development only:
    anyone can forge links signed with it. `host` is the address a server listens on; a
    process without one (the worker, which signs links in emails) never may use it, except
    in development with a mailer that sends nothing out (file or console).
    """
    if not settings.uses_default_secret:
        return None
    if settings.env != "development":
        where = f"DIGEST_ENV={settings.env}"
    elif host is not None and not is_loopback(host):
        where = f"listening on {host}, not a loopback address"
    elif host is None and settings.mailer == "smtp":
        where = "sending mail through SMTP"
    else:
        return None
    return (
        f"refusing to start with the public development DIGEST_SECRET_KEY ({where}): "
        + HOW_TO_SET_A_KEY
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once at the edges (CLI, web app, Celery app), with the
    secret key kept in data_dir when none is set."""
    return with_kept_secret_key(Settings())
