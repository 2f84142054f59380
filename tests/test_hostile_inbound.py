"""Hostile unsubscribe mail (issue 17, item 3): each message is handled on its own (a malformed
one is reported and skipped, the valid request after it is honoured), a mailbox read twice
changes nothing (not even for someone who subscribed again since), and every scan is bounded."""

import base64
import mailbox
import time
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from sqlmodel import Session

from digest import subscribers
from digest.inbound import (
    MAX_HEADER_CHARS,
    TOKEN_PATTERN,
    candidate_tokens,
    parse_message,
    process_unsubscribe_requests,
    read_mailbox,
)
from digest.tokens import Purpose, make_token
from tests import test_inbound
from tests.conftest import SECRET
from tests.factories import NOW, link_token
from tests.test_cli import run
from tests.test_inbound import cli_env, mailto_of, statuses

store = test_inbound.store  # three subscribers who each got a digest


def token_of(settings, address):
    """The token of the List-Unsubscribe mailto: of the digest `address` received."""
    query = urlsplit(mailto_of(settings, address)).query
    return unquote(parse_qs(query)["subject"][0]).split()[-1]


def raw_mail(headers: dict[str, str] | str, body: bytes = b"please remove me\r\n") -> bytes:
    if isinstance(headers, str):
        head = headers.encode()
    else:
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode()
    return head + b"\r\n" + body


def b64_word(text: str) -> str:
    return f"=?utf-8?b?{base64.b64encode(text.encode()).decode()}?="


def hostile_messages(carl_token: str) -> list[bytes]:
    """What an attacker (or a broken mail client) could drop into the unsubscribe mailbox."""
    adjacent = "=?utf-8?q?a?=" * 7000  # ~90k characters of adjacent encoded words
    return [
        # From: decodes to CR/LF (the one that stopped every run).
        raw_mail(
            {
                "From": b64_word("evil\r\nBcc: victim@example.com") + " <x@evil.test>",
                "Subject": b64_word("unsub\r\nX-Injected: 1"),
                "Message-ID": "<h1@evil.test>",
            }
        ),
        # Headers in an unknown charset and raw 8-bit bytes, a broken encoded word.
        raw_mail("From: =?x-unknown?q?abc?= <x@evil.test>\r\nSubject: =?utf-8?b?!!!?=\r\n")
        + b"\xff\xfe\x00 body",
        b"From: \xe9vil@evil.test\r\nSubject: \xff\xfe\r\n\r\nbody\r\n",
        # A body that claims a charset nobody knows, and one in broken base64.
        raw_mail(
            {
                "From": "x@evil.test",
                "Content-Type": "text/plain; charset=x-no-such-charset",
                "Subject": "hi",
            },
            f"unsubscribe {carl_token[:-4]}AAAA\r\n".encode(),
        ),
        raw_mail(
            {
                "From": "x@evil.test",
                "Content-Transfer-Encoding": "base64",
                "Subject": "hi",
            },
            b"!!!not base64 at all===\r\n",
        ),
        # A quadratic Subject, and a huge run of token characters in the body.
        raw_mail({"From": "x@evil.test", "Subject": adjacent}, b"a" * 19_000 + b"\r\n"),
        # Multipart with no closing boundary, and a message far larger than any request.
        raw_mail(
            {"From": "x@evil.test", "Content-Type": 'multipart/mixed; boundary="b"'},
            b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b\r\n",
        ),
        raw_mail({"From": "x@evil.test", "Subject": "big"}, b"x" * 1_200_000),
        # No headers at all, and noise.
        b"\x00\x01\x02 not a mail \xff",
    ]


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["mbox", "maildir"])
def test_a_hostile_mailbox_is_reported_message_by_message_and_the_valid_request_honoured(
    tmp_path, store, kind
):
    settings, engine = store
    with Session(engine) as session:
        carl = subscribers.get_subscriber(session=session, email="carl@example.com")
    carl_token = link_token(SECRET, Purpose.UNSUBSCRIBE, carl)
    hostile = hostile_messages(carl_token)
    valid = raw_mail(
        {
            "From": "Bob <bob@example.com>",
            "Subject": f"unsubscribe {token_of(settings, 'bob@example.com')}",
            "Message-ID": "<bob-1@example.com>",
        }
    )
    path = tmp_path / ("requests.mbox" if kind == "mbox" else "Maildir")
    box = mailbox.mbox(path) if kind == "mbox" else mailbox.Maildir(path)
    for message in [*hostile, valid]:
        box.add(message)
    box.close()

    result = run(["unsubscribes", "process", str(path)], cwd=tmp_path, env_extra=cli_env(settings))
    out = result.stdout
    total = len(hostile) + 1
    assert f"processed {total}, unsubscribed 1, already unsubscribed 0, refused {total - 1}" in out
    assert "Traceback" not in result.stderr
    assert "over 1,000,000" in out  # the large one, with its reason
    assert "no unsubscribe token" in out and "token not valid" in out
    # No line of the report is broken by a decoded CR/LF.
    assert not any(line.startswith(("Bcc:", "X-Injected:")) for line in out.splitlines())
    assert statuses(engine) == {
        "ada@example.com": "active",
        "bob@example.com": "unsubscribed",
        "carl@example.com": "active",
    }


def mbox_with(tmp_path, messages):
    path = tmp_path / "requests.mbox"
    box = mailbox.mbox(path)
    for message in messages:
        box.add(message)
    box.close()
    return path


def process(engine, path, now=NOW):
    with Session(engine) as session:
        return process_unsubscribe_requests(
            session=session, secret_key=SECRET, messages=read_mailbox(path), now=now
        )


def test_reading_the_mailbox_again_after_a_resubscribe_changes_nothing(tmp_path, store):
    settings, engine = store
    ada = token_of(settings, "ada@example.com")
    path = mbox_with(
        tmp_path,
        [
            raw_mail({"From": "ada@example.com", "Subject": f"unsubscribe {ada}"}),
            # The same request again from her mail client, with a Message-ID this time.
            raw_mail(
                {
                    "From": "ada@example.com",
                    "Subject": f"Re: unsubscribe {ada}",
                    "Message-ID": "<r>",
                }
            ),
        ],
    )
    first = process(engine, path)
    assert [o.result for o in first.outcomes] == ["unsubscribed", "already unsubscribed"]
    assert statuses(engine)["ada@example.com"] == "unsubscribed"

    # Ada changes her mind and subscribes again; the old mailbox is processed again.
    with Session(engine) as session:
        subscribers.add_subscriber(
            session=session, email="ada@example.com", topics=["diffusion models"], now=NOW
        )
    again = process(engine, path)
    assert [o.result for o in again.outcomes] == ["seen before", "seen before"]
    assert statuses(engine)["ada@example.com"] == "active"

    # A new message carrying the token she already used does not act on her new subscription.
    path.unlink()
    replay = process(
        engine,
        mbox_with(
            tmp_path,
            [
                raw_mail(
                    {"From": "x@evil.test", "Subject": f"unsubscribe {ada}", "Message-ID": "<n>"}
                )
            ],
        ),
    )
    assert [(o.result, o.reason) for o in replay.outcomes] == [
        ("refused", "token of an earlier subscription: unsubscribed and subscribed again since")
    ]
    assert statuses(engine)["ada@example.com"] == "active"


def test_a_copied_message_id_does_not_hide_a_real_request(tmp_path, store):
    settings, engine = store
    bob = token_of(settings, "bob@example.com")
    path = mbox_with(
        tmp_path,
        [
            raw_mail({"From": "x@evil.test", "Subject": "hello", "Message-ID": "<same@x>"}),
            raw_mail(
                {
                    "From": "bob@example.com",
                    "Subject": f"unsubscribe {bob}",
                    "Message-ID": "<same@x>",
                }
            ),
        ],
    )
    assert [o.result for o in process(engine, path).outcomes] == ["refused", "unsubscribed"]


def test_scans_are_bounded_on_long_subjects_and_long_runs_of_token_characters():
    token = make_token(SECRET, Purpose.UNSUBSCRIBE, {"s": 1})
    adjacent = "=?utf-8?q?a?=" * 7000  # 91,000 characters: 14.7 s for 80k before
    raw = raw_mail({"From": "x@evil.test", "Subject": f"unsubscribe {token} {adjacent}"})
    started = time.process_time()
    tokens = candidate_tokens(parse_message(raw + b"a" * 19_000))
    spent = time.process_time() - started
    assert tokens == [token]
    assert spent < 2.0, f"{spent:.2f} s of CPU"
    # The work done is bounded by the caps, whatever the input: the token regex is linear.
    started = time.process_time()
    assert TOKEN_PATTERN.findall("a" * 200_000) == []
    assert TOKEN_PATTERN.findall("a" * 100_000 + ".") == []
    assert time.process_time() - started < 1.0
    assert MAX_HEADER_CHARS < len(adjacent)


def test_tokens_are_found_at_word_boundaries_only():
    token = make_token(SECRET, Purpose.UNSUBSCRIBE, {"s": 42})
    assert TOKEN_PATTERN.findall(f"unsubscribe {token}.") == [token]
    assert TOKEN_PATTERN.findall(f"Token:{token}\n") == [token]
