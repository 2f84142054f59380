"""Each digest's envelope sender (MAIL FROM, the Return-Path the receiving server writes) is a
VERP bounce address with a signed per-delivery token when DIGEST_BOUNCE_DOMAIN is set, and
the From address as before when it is not."""

from contextlib import contextmanager

import pytest
from pydantic import ValidationError
from sqlmodel import select

from digest import delivery
from digest.envelope import bounce_address
from digest.mailer import SMTPConfig, SMTPMailer
from digest.models import Delivery
from digest.tokens import InvalidToken, make_bounce_token, read_bounce_token
from tests.conftest import SECRET, make_settings
from tests.factories import NOW, make_subscriber

OTHER_SECRET = "another-secret-key-0123456789abcdef"


class CollectingMailer:
    """A mailer that keeps what it is given (the Mailer and Connection interfaces)."""

    def __init__(self):
        self.sent = []

    @contextmanager
    def connect(self):
        yield self

    def send(self, message):
        self.sent.append(message)


def test_a_bounce_token_names_its_delivery_in_any_letter_case_and_cannot_be_forged():
    token = make_bounce_token(SECRET, 4711)
    assert token.startswith("4711-") and token == token.lower()
    assert read_bounce_token(SECRET, token) == 4711
    assert read_bounce_token(SECRET, token.upper()) == 4711  # a server changed the case
    signature = token.split("-")[1]
    altered = token[:-1] + ("a" if token[-1] != "a" else "b")
    for forged in (
        altered,
        f"4712-{signature}",  # another delivery with this one's signature
        make_bounce_token(OTHER_SECRET, 4711),  # signed with another key
        "4711",
        "",
        "0-" + signature,
        "4711-" + signature + "a",
    ):
        with pytest.raises(InvalidToken):
            read_bounce_token(SECRET, forged)


def test_the_bounce_address_fits_an_smtp_local_part(tmp_path):
    settings = make_settings(tmp_path, bounce_domain="Bounces.Digest.Test.")
    assert settings.bounce_domain == "bounces.digest.test"
    address = bounce_address(settings, 10**17)
    local, domain = address.split("@")
    assert local.startswith("bounces+") and len(local) <= 64 and domain == "bounces.digest.test"
    assert bounce_address(make_settings(tmp_path), 1) is None  # no bounce domain, no VERP


@pytest.mark.parametrize(
    "overrides",
    [
        {"bounce_domain": "bounces@digest.test"},
        {"bounce_domain": "-bad.digest.test"},
        {"bounce_domain": "b\u00f6unces.test"},
        {"bounce_local_part": "bounces+x"},
        {"bounce_local_part": "a..b"},
        {"bounce_local_part": "x" * 21},
    ],
)
def test_a_bad_bounce_setting_is_refused_with_its_name(tmp_path, overrides):
    with pytest.raises(ValidationError) as error:
        make_settings(tmp_path, **overrides)
    assert next(iter(overrides)) in str(error.value)


def test_each_digest_carries_its_own_signed_bounce_address(seeded_store, db_settings):
    settings = db_settings.model_copy(update={"bounce_domain": "bounces.digest.test"})
    for name in ("ada", "bob"):
        make_subscriber(seeded_store, email=f"{name}@example.com")
    mailer = CollectingMailer()
    summary = delivery.send_due_digests(
        session=seeded_store, mailer=mailer, settings=settings, now=NOW, digest_date=NOW.date()
    )
    assert len(summary.sent) == 2
    ids = {d.subscriber_id: d.id for d in seeded_store.exec(select(Delivery))}
    for mail in mailer.sent:
        local, domain = mail.sender.split("@")
        assert domain == "bounces.digest.test" and local.startswith("bounces+")
        delivery_id = read_bounce_token(SECRET, local.split("+", 1)[1])
        assert delivery_id in ids.values()
        # The From header stays the sender people see; no Return-Path header is written
        # (the receiving server writes it from MAIL FROM, RFC 5321 4.4).
        assert mail["From"] == "Paper digest <digest@digest.test>"
        assert mail["Return-Path"] is None
    assert len({m.sender for m in mailer.sent}) == 2


def test_without_a_bounce_domain_the_envelope_sender_is_the_from_address(seeded_store, db_settings):
    make_subscriber(seeded_store, email="ada@example.com")
    mailer = CollectingMailer()
    delivery.send_due_digests(
        session=seeded_store, mailer=mailer, settings=db_settings, now=NOW, digest_date=NOW.date()
    )
    assert [m.sender for m in mailer.sent] == ["digest@digest.test"]


@pytest.mark.parametrize("pipelining", ["never", "always"])
def test_the_smtp_server_gets_the_bounce_address_as_mail_from(
    seeded_store, db_settings, smtp_server, pipelining
):
    settings = db_settings.model_copy(update={"bounce_domain": "bounces.digest.test"})
    subscriber = make_subscriber(seeded_store, email="ada@example.com")
    mailer = SMTPMailer(
        SMTPConfig(host=smtp_server.host, port=smtp_server.port, pipelining=pipelining)
    )
    delivery.send_due_digests(
        session=seeded_store, mailer=mailer, settings=settings, now=NOW, digest_date=NOW.date()
    )
    (received,) = smtp_server.messages
    (row,) = seeded_store.exec(select(Delivery).where(Delivery.subscriber_id == subscriber.id))
    assert received.mail_from == bounce_address(settings, row.id)
    assert received.message["From"] == "Paper digest <digest@digest.test>"
