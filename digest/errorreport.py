"""Optional error reports to Sentry (or a server speaking its protocol) when DIGEST_SENTRY_DSN is
set: the web app, the workers, beat and the CLI report unhandled errors and ERROR log lines,
each event scrubbed of signed links and tokens before it leaves the process."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from digest.config import Settings
from digest.logs import redact

DISTRIBUTION = "digest-papers-selfhosted"


def scrub(value: Any) -> Any:
    """`value` (an event, or any part of one) with every string redacted, keys included."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {scrub(key): scrub(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(scrub(item) for item in value)
    return value


def before_send(event: Any, hint: Any) -> Any:
    return scrub(event)


def before_breadcrumb(crumb: Any, hint: Any) -> Any:
    return scrub(crumb)


def _release() -> str | None:
    try:
        return f"{DISTRIBUTION}@{version(DISTRIBUTION)}"
    except PackageNotFoundError:
        return None


def init_error_reporting(settings: Settings, *, process: str) -> bool:
    """Start reporting errors to DIGEST_SENTRY_DSN, if set (True); `process` (web, worker, beat,
    cli) tags each event. Frames are sent without their local variables (they hold addresses
    and the settings, secret key included), requests without body or cookies."""
    if not settings.sentry_dsn:
        return False
    import sentry_sdk

    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        environment=settings.env,
        release=_release(),
        send_default_pii=False,
        include_local_variables=False,
        max_request_body_size="never",
        before_send=before_send,
        before_breadcrumb=before_breadcrumb,
    )
    sentry_sdk.set_tag("process", process)
    return True
