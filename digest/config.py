"""The one Settings object: every tunable of the service, read from DIGEST_* variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEV_SECRET_KEY = "dev-insecure-secret-key-change-me"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DIGEST_", extra="ignore")

    env: Literal["development", "test", "production"] = "development"
    secret_key: str = DEV_SECRET_KEY

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
    base_url: str = "http://127.0.0.1:8000"

    seeds_dir: Path = PROJECT_ROOT / "seeds"
    templates_dir: Path = PROJECT_ROOT / "templates"

    # Ranking.
    digest_size: int = Field(default=10, ge=1, le=100)
    candidate_days: int = Field(default=7, ge=1)
    half_life_days: float = Field(default=3.0, gt=0)
    min_relevance: float = Field(default=0.05, ge=0)
    weight_topic: float = Field(default=0.6, ge=0)
    weight_recency: float = Field(default=0.25, ge=0)
    weight_trending: float = Field(default=0.15, ge=0)

    # Schedule.
    default_send_hour: int = Field(default=7, ge=0, le=23)
    default_timezone: str = "UTC"
    send_batch_size: int = Field(default=500, ge=1)
    ingest_hour_utc: int = Field(default=5, ge=0, le=23)
    plan_every_minutes: int = Field(default=10, ge=1, le=60)

    # Token lifetimes (seconds).
    confirm_max_age: int = 3 * 24 * 3600

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
        if self.env == "production" and (
            self.secret_key == DEV_SECRET_KEY or len(self.secret_key) < 16
        ):
            raise ValueError(
                "DIGEST_SECRET_KEY must be set to a long random value when DIGEST_ENV=production"
            )
        return self

    @property
    def uses_default_secret(self) -> bool:
        return self.secret_key == DEV_SECRET_KEY


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once at the edges (CLI, web app, Celery app)."""
    return Settings()
