"""Signed links in emails and pages: one place that turns a purpose and a payload into a URL."""

from __future__ import annotations

from digest.config import Settings
from digest.tokens import Purpose, make_token


def signed_link(settings: Settings, path: str, purpose: Purpose, payload: dict[str, object]) -> str:
    """`{base_url}/{path}/{token}`: a link that only does `purpose` for `payload`."""
    return f"{settings.base_url}/{path}/{make_token(settings.secret_key, purpose, payload)}"
