"""The Celery app, built from Settings: Redis broker, late acks, the beat schedule."""

from __future__ import annotations

import sys

from celery import Celery
from celery.signals import beat_init, setup_logging, worker_init, worker_process_init
from pydantic import ValidationError

from digest.config import (
    Settings,
    describe_settings_error,
    get_settings,
    public_key_refusal,
    redis_problem,
)
from digest.errorreport import init_error_reporting
from digest.logs import configure_logging
from workers.schedule import beat_schedule


def make_celery(settings: Settings) -> Celery:
    app = Celery("digest", include=["workers.tasks"])
    app.conf.update(
        broker_url=settings.redis_url,
        result_backend=settings.redis_url,
        result_expires=24 * 3600,
        task_default_queue=settings.task_queue,
        # A task is acknowledged only when it finished, so a killed worker's task comes back;
        # the tasks are idempotent (the delivery row is the claim), so a rerun sends nothing twice.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        enable_utc=True,
        beat_schedule=beat_schedule(settings),
        # Task events, for Flower (compose's `flower` service): workers publish each task's
        # progress, senders each task they queue. On Redis these are pub/sub messages, dropped
        # when no monitor listens.
        worker_send_task_events=True,
        task_send_sent_event=True,
        # Beat answers `celery inspect ping` (its healthcheck) only while its loop ticks; the
        # loop wakes at least once a minute, so a beat that hangs stops answering within two.
        beat_enable_remote_control=True,
        beat_max_loop_interval=60,
    )
    return app


def limit_blas_threads(threads: int) -> None:
    """Give each worker process `threads` BLAS threads (0: leave the library's default)."""
    if threads > 0:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads, user_api="blas")


@setup_logging.connect
def _logging(**_: object) -> None:
    """Our logging instead of Celery's (connected, this signal makes Celery leave the root
    logger alone): DIGEST_LOG_FORMAT and DIGEST_LOG_LEVEL (Celery's --loglevel is not used),
    tokens redacted, in the worker, its child processes and beat alike."""
    configure_logging(get_settings())


@worker_init.connect
def _report_worker_errors(**_: object) -> None:
    init_error_reporting(get_settings(), process="worker")


@beat_init.connect
def _report_beat_errors(**_: object) -> None:
    init_error_reporting(get_settings(), process="beat")


@worker_init.connect
def _refuse_the_public_key(**_: object) -> None:
    """The worker signs the links in emails: never with the public development key."""
    refusal = public_key_refusal(get_settings())
    if refusal:
        raise SystemExit(f"error: {refusal}")


@worker_init.connect
def _refuse_an_unreachable_broker(**_: object) -> None:
    """Without Redis a worker would retry forever in its log: one line and exit 1 instead."""
    problem = redis_problem(get_settings().redis_url)
    if problem:
        print(f"digest: {problem}", file=sys.stderr, flush=True)
        raise SystemExit(1)


@worker_init.connect
@worker_process_init.connect
def _one_blas_thread_per_process(**_: object) -> None:
    limit_blas_threads(get_settings().worker_blas_threads)


@worker_init.connect
@beat_init.connect
def _refuse_a_database_behind_the_code(**_: object) -> None:
    """The worker and beat start only on a database at the code's revision: one line and
    exit 1 otherwise (an empty database is created)."""
    from digest.db import DatabaseError, make_engine, require_current_schema

    engine = make_engine(get_settings().database_url)
    try:
        require_current_schema(engine)
    except DatabaseError as exc:
        print(f"digest: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from exc
    finally:
        engine.dispose()


def _settings_or_exit() -> Settings:
    """A bad setting stops the worker and beat with one line naming it, not a traceback."""
    try:
        return get_settings()
    except ValidationError as exc:
        problem = describe_settings_error(exc)
    except ValueError as exc:  # the kept secret key (with_kept_secret_key)
        problem = str(exc)
    print(f"digest: bad settings: {problem}", file=sys.stderr, flush=True)
    raise SystemExit(1)


app = make_celery(_settings_or_exit())
