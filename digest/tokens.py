"""Signed, purpose-bound tokens for the links in emails (itsdangerous)."""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer


class Purpose(StrEnum):
    CONFIRM = "confirm"
    UNSUBSCRIBE = "unsubscribe"
    PREFERENCES = "preferences"
    FEEDBACK = "feedback"
    VIEW = "view"


class InvalidToken(Exception):
    """The token is forged, altered, expired, or made for another purpose."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


class _KeyCachingSigner(TimestampSigner):
    """itsdangerous derives the HMAC key from secret and salt on every call; a digest signs a
    dozen links, so derive it once per signer (same keys, same tokens)."""

    def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
        cache = self.__dict__.setdefault("_derived", {})
        if secret_key not in cache:
            cache[secret_key] = super().derive_key(secret_key)
        return cache[secret_key]  # type: ignore[no-any-return]


@lru_cache(maxsize=64)
def _serializer(secret_key: str, purpose: Purpose) -> URLSafeTimedSerializer:
    # The salt binds a token to its purpose: an unsubscribe token never confirms anything.
    return URLSafeTimedSerializer(
        secret_key, salt=f"digest.{purpose.value}", signer=_KeyCachingSigner
    )


def make_token(secret_key: str, purpose: Purpose, payload: dict[str, Any]) -> str:
    return _serializer(secret_key, purpose).dumps(payload)


def read_token(
    secret_key: str, purpose: Purpose, token: str, *, max_age: int | None = None
) -> dict[str, Any]:
    try:
        payload = _serializer(secret_key, purpose).loads(token, max_age=max_age)
    except SignatureExpired as exc:
        raise InvalidToken("This link has expired.", expired=True) from exc
    except BadSignature as exc:
        raise InvalidToken("This link is not valid: it may be incomplete or altered.") from exc
    if not isinstance(payload, dict):
        raise InvalidToken("This link is not valid.")
    return payload
