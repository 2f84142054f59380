"""Signed, purpose-bound tokens for the links in emails (itsdangerous), and the short token of
each digest's bounce address (VERP)."""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import json
import re
import time
import zlib
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
    BOUNCE = "bounce"


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


@lru_cache(maxsize=64)
def _signing_key(secret_key: str, purpose: Purpose) -> bytes:
    signer = _serializer(secret_key, purpose).make_signer()
    # itsdangerous' HMAC-SHA1 over the key it derives from the secret and the salt.
    if signer.digest_method().name != "sha1":
        raise RuntimeError("itsdangerous no longer signs with HMAC-SHA1: tokens need a review")
    return signer.derive_key()


# Payloads longer than this are compressed when that makes them shorter, as itsdangerous does.
COMPRESS_OVER = 64


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def make_token(secret_key: str, purpose: Purpose, payload: dict[str, Any]) -> str:
    """The token itsdangerous' `URLSafeTimedSerializer.dumps` makes (byte for byte, short
    payloads aside that it would compress), read back by `read_token` through itsdangerous.

    Written out because each digest signs four and itsdangerous' layers of calls, and zlib
    set up for every payload, cost several times the hashing (tests check the two agree).
    """
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    value = _b64(data)
    # itsdangerous compresses when that is shorter; a digest's short payloads (an id, a date)
    # hardly ever are, and setting zlib up costs more than all the rest. itsdangerous reads
    # both forms.
    if len(data) > COMPRESS_OVER:
        compressed = zlib.compress(data)
        if len(compressed) < len(data) - 1:
            value = b"." + _b64(compressed)
    stamp = int(time.time())
    value += b"." + _b64(stamp.to_bytes(8, "big").lstrip(b"\x00"))
    signature = hmac.digest(_signing_key(secret_key, purpose), value, "sha1")
    return (value + b"." + _b64(signature)).decode("ascii")


def read_token(
    secret_key: str, purpose: Purpose, token: str, *, max_age: int | None = None
) -> dict[str, Any]:
    return read_token_issued(secret_key, purpose, token, max_age=max_age)[0]


def read_token_issued(
    secret_key: str, purpose: Purpose, token: str, *, max_age: int | None = None
) -> tuple[dict[str, Any], dt.datetime]:
    """The payload and when the token was made (to the second, UTC)."""
    try:
        payload, issued = _serializer(secret_key, purpose).loads(
            token, max_age=max_age, return_timestamp=True
        )
    except SignatureExpired as exc:
        raise InvalidToken("This link has expired.", expired=True) from exc
    except BadSignature as exc:
        raise InvalidToken("This link is not valid: it may be incomplete or altered.") from exc
    if not isinstance(payload, dict) or not isinstance(issued, dt.datetime):
        raise InvalidToken("This link is not valid.")
    return payload, issued


# A bounce token: the delivery id and 80 bits of HMAC-SHA256, lower-case base32. It lives in
# the local part of an envelope sender, which must stay short (64 characters) and which some
# servers change to lower case on the way back: so no itsdangerous token (case-sensitive
# base64, ~50 characters). No time stamp: a bounce may come back days later, and a delivery
# is only ever marked failed once.
BOUNCE_SIGNATURE_BYTES = 10
BOUNCE_TOKEN = re.compile(r"^([1-9][0-9]{0,17})-([a-z2-7]{16})$")


def _bounce_signature(secret_key: str, delivery_id: int) -> str:
    key = _signing_key(secret_key, Purpose.BOUNCE)
    mac = hmac.digest(key, f"delivery:{delivery_id}".encode(), "sha256")
    return base64.b32encode(mac[:BOUNCE_SIGNATURE_BYTES]).decode("ascii").lower()


def make_bounce_token(secret_key: str, delivery_id: int) -> str:
    """`<delivery id>-<signature>`, for the bounce address of that delivery's digest."""
    return f"{delivery_id}-{_bounce_signature(secret_key, delivery_id)}"


def read_bounce_token(secret_key: str, token: str) -> int:
    """The delivery id a bounce token names, in any letter case; InvalidToken when it is not
    one of ours (forged, altered, or signed with another key)."""
    match = BOUNCE_TOKEN.match(token.strip().lower())
    if match is None:
        raise InvalidToken("not a bounce token")
    delivery_id = int(match.group(1))
    if not hmac.compare_digest(match.group(2), _bounce_signature(secret_key, delivery_id)):
        raise InvalidToken("bounce token not valid: forged, altered or signed with another key")
    return delivery_id
