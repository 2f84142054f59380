"""Tokens: our signer writes exactly what itsdangerous writes, and reads back only its own."""

from __future__ import annotations

import pytest
from freezegun import freeze_time
from itsdangerous import URLSafeTimedSerializer

from digest.tokens import InvalidToken, Purpose, make_token, read_token

SECRET = "test-secret-key-0123456789abcdef"

PAYLOADS = [
    {"s": 1},
    {"s": 123456789, "d": "2026-12-02"},
    {"e": "ünïcode@example.org", "t": ["legged robots", "diffusion"]},
    # Long and repetitive: itsdangerous compresses it, so must we.
    {"s": 7, "t": ["diffusion models"] * 20},
    # Short and not compressible: the form of every digest link.
    {"s": 98765, "d": "2026-12-02", "p": "2606.01234"},
]


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("purpose", list(Purpose))
def test_tokens_are_byte_for_byte_those_of_itsdangerous(payload, purpose):
    reference = URLSafeTimedSerializer(SECRET, salt=f"digest.{purpose.value}")
    with freeze_time("2026-12-02 08:00:00"):
        ours = make_token(SECRET, purpose, payload)
        assert ours == reference.dumps(payload)
    assert reference.loads(ours) == payload
    assert read_token(SECRET, purpose, ours) == payload


def test_a_compressed_payload_is_marked_and_read_back():
    token = make_token(SECRET, Purpose.VIEW, PAYLOADS[3])
    assert token.startswith(".")
    assert read_token(SECRET, Purpose.VIEW, token) == PAYLOADS[3]


def test_a_short_payload_itsdangerous_would_compress_is_left_as_it_is_and_still_reads():
    payload = {"s": 11111111111111111111}
    reference = URLSafeTimedSerializer(SECRET, salt="digest.feedback")
    assert reference.dumps(payload).startswith(".")  # zlib shortens it by a few bytes
    token = make_token(SECRET, Purpose.FEEDBACK, payload)
    assert not token.startswith(".")
    assert reference.loads(token) == payload
    assert read_token(SECRET, Purpose.FEEDBACK, token) == payload


def test_a_token_is_refused_for_another_purpose_another_key_or_when_altered():
    token = make_token(SECRET, Purpose.UNSUBSCRIBE, {"s": 5})
    with pytest.raises(InvalidToken):
        read_token(SECRET, Purpose.PREFERENCES, token)
    with pytest.raises(InvalidToken):
        read_token(SECRET + "x", Purpose.UNSUBSCRIBE, token)
    payload, stamp, signature = token.split(".")
    forged = make_token(SECRET, Purpose.UNSUBSCRIBE, {"s": 6}).split(".")[0]
    with pytest.raises(InvalidToken):
        read_token(SECRET, Purpose.UNSUBSCRIBE, f"{forged}.{stamp}.{signature}")


def test_tokens_expire_by_their_timestamp():
    with freeze_time("2026-12-01 08:00:00"):
        token = make_token(SECRET, Purpose.CONFIRM, {"e": "a@example.org"})
    with freeze_time("2026-12-02 08:00:00"):
        assert read_token(SECRET, Purpose.CONFIRM, token, max_age=86400) == {"e": "a@example.org"}
    with freeze_time("2026-12-02 08:00:01"), pytest.raises(InvalidToken) as error:
        read_token(SECRET, Purpose.CONFIRM, token, max_age=86400)
    assert error.value.expired
