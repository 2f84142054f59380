"""Subscription bombing through address variants (issue 17, item 4): the per-target limit counts
inboxes, the way the big providers deliver, while the address stored and mailed stays as typed."""

import pytest

from digest.addresses import inbox_key
from tests.test_subscriptions import post_subscribe, smtp_app
from tests.test_web import subscribers


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("Bomb@Example.com", "bomb@example.com"),
        (" bomb+1@example.com ", "bomb@example.com"),
        ("bomb+a+b@example.com", "bomb@example.com"),
        ("b.o.m.b@gmail.com", "bomb@gmail.com"),
        ("B.O.M.B+x@GoogleMail.com", "bomb@gmail.com"),
        ("b.o.m.b@example.com", "b.o.m.b@example.com"),  # dots matter elsewhere
        ("bomb@gmail.com.", "bomb@gmail.com"),
        ("not an address", "notanaddress"),
    ],
)
def test_inbox_key_merges_the_variants_providers_deliver_to_one_inbox(address, key):
    assert inbox_key(address) == key


@pytest.mark.integration
def test_plus_and_dot_variants_from_many_clients_get_only_the_allowed_mails(
    engine, db_settings, smtp_server
):
    client = smtp_app(
        db_settings, engine, smtp_server, subscribe_limit_per_address="2/hour"
    ).test_client()
    variants = ["bomb+1@gmail.com", "bomb+2@gmail.com", "b.o.m.b@gmail.com", "BOMB+3@gmail.com"]
    codes = [
        post_subscribe(client, ip=f"203.0.113.{n}", email=address).status_code
        for n, address in enumerate(variants)
    ]
    assert codes == [200, 200, 429, 429]
    assert len(smtp_server.messages) == 2
    # The addresses stored and mailed are the ones typed, not the inbox key.
    assert sorted(subscribers(engine)) == ["bomb+1@gmail.com", "bomb+2@gmail.com"]
    assert sorted(r for m in smtp_server.messages for r in m.rcpt_tos) == [
        "bomb+1@gmail.com",
        "bomb+2@gmail.com",
    ]
    # Another inbox is not affected.
    assert post_subscribe(client, ip="203.0.113.9", email="other@gmail.com").status_code == 200
