"""Digests through a real SMTP server (aiosmtpd on loopback)."""

import pytest
from sqlmodel import Session

from digest import delivery, paperstore, subscribers
from digest.errors import UserError
from digest.mailer import DeliveryError, SMTPConfig, SMTPMailer
from tests.factories import NOW, make_paper


def test_smtp_url_parsing():
    cfg = SMTPConfig.from_url("smtps://user%40x:p%3Ass@mail.example.com")
    assert (cfg.host, cfg.port, cfg.username, cfg.password, cfg.implicit_tls) == (
        "mail.example.com",
        465,
        "user@x",
        "p:ss",
        True,
    )
    cfg = SMTPConfig.from_url("smtp://relay:2525?starttls=1")
    assert (cfg.port, cfg.starttls, cfg.username) == (2525, True, None)


@pytest.mark.parametrize("pipelining", ["never", "always"])
def test_a_batch_of_digests_arrives_over_one_connection(
    engine, db_settings, smtp_server, pipelining
):
    mailer = SMTPMailer(
        SMTPConfig(host=smtp_server.host, port=smtp_server.port, pipelining=pipelining)
    )
    with Session(engine) as session:
        paperstore.upsert_papers(
            session=session,
            now=NOW,
            papers=[
                make_paper(
                    title="Diffusion models for audio", abstract="Diffusion models for audio."
                ),
                make_paper(title="Legged robots on ice", abstract="Legged robots walk on ice."),
            ],
        )
        for i in range(5):
            subscribers.add_subscriber(
                session=session, email=f"r{i}@example.com", topics=["diffusion models"], now=NOW
            )
        subscribers.add_subscriber(
            session=session, email="robots@example.com", topics=["legged robots"], now=NOW
        )
        summary = delivery.send_due_digests(
            session=session, mailer=mailer, settings=db_settings, now=NOW, digest_date=NOW.date()
        )
    assert len(summary.sent) == 6 and summary.failed == []
    assert smtp_server.connections == 1
    assert sorted(r for m in smtp_server.messages for r in m.rcpt_tos) == sorted(
        [f"r{i}@example.com" for i in range(5)] + ["robots@example.com"]
    )
    (robots,) = smtp_server.to("robots@example.com")
    assert "Legged robots on ice" in robots["Subject"]
    text = robots.get_body(("plain",)).get_content()
    assert "Legged robots on ice" in text and "Diffusion models for audio" not in text
    assert robots["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "<https://digest.test/unsubscribe/" in robots["List-Unsubscribe"]
    assert "<mailto:unsubscribe@digest.test?subject=unsubscribe" in robots["List-Unsubscribe"]
    ids = {m.message["Message-ID"] for m in smtp_server.messages}
    assert len(ids) == 6


@pytest.mark.parametrize("pipelining", ["never", "always"])
def test_refused_recipient_is_a_permanent_failure_and_the_rest_arrive(
    engine, db_settings, smtp_server, pipelining
):
    smtp_server.refuse_rcpt = lambda a: "550 5.1.1 no such user" if a.startswith("bad") else None
    mailer = SMTPMailer(
        SMTPConfig(host=smtp_server.host, port=smtp_server.port, pipelining=pipelining)
    )
    with Session(engine) as session:
        paperstore.upsert_papers(
            session=session,
            now=NOW,
            papers=[
                make_paper(
                    title="Diffusion models for audio", abstract="Diffusion models for audio."
                )
            ],
        )
        for email in ("bad@example.com", "good@example.com"):
            subscribers.add_subscriber(
                session=session, email=email, topics=["diffusion models"], now=NOW
            )
        summary = delivery.send_due_digests(
            session=session, mailer=mailer, settings=db_settings, now=NOW, digest_date=NOW.date()
        )
        bad = subscribers.get_subscriber(session=session, email="bad@example.com")
        assert bad.bounce_count == 1
    assert [e for e, _ in summary.sent] == ["good@example.com"]
    ((email, reason),) = summary.failed
    assert email == "bad@example.com" and "550" in reason
    assert [r.rcpt_tos for r in smtp_server.messages] == [["good@example.com"]]


def test_connection_refused_is_a_temporary_delivery_error():
    from tests.conftest import free_port

    mailer = SMTPMailer(SMTPConfig(host="127.0.0.1", port=free_port(), timeout=2))
    try:
        with mailer.connect():
            raise AssertionError("connected to a closed port")
    except DeliveryError as exc:
        assert not exc.permanent and "cannot reach" in str(exc)


@pytest.mark.integration
@pytest.mark.parametrize("extensions", ["chunking", "pipelining"])
def test_speed_trick_pipelined_one_round_trip_transactions_deliver_whole_messages_in_step(
    tmp_path, extensions
):
    """The benchmark sink (a separate process) offers PIPELINING and CHUNKING, as Postfix does:
    messages go out as MAIL+RCPT+BDAT in one write (or MAIL+RCPT+DATA, then the message, when
    BDAT is turned off), arrive byte for byte, and a refused recipient neither stops the
    connection nor shifts the replies of the next messages."""
    import json
    import subprocess
    import sys

    from digest.render import Envelope, Mail, _message
    from tests.conftest import ROOT, free_port

    port = free_port()
    stats, saved = tmp_path / "stats.json", tmp_path / "saved"
    saved.mkdir()
    sink = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench/smtp_sink.py"),
            "--port",
            str(port),
            "--stats",
            str(stats),
            "--refuse",
            "nobody",
            "--save",
            str(saved),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    sent, errors = [], []
    try:
        assert sink.stdout.readline().strip() == "ready"
        mailer = SMTPMailer(SMTPConfig(host="127.0.0.1", port=port))
        with mailer.connect() as connection:
            if extensions == "pipelining":
                connection._chunking = False
            assert connection._pipelining and connection._chunking == (extensions == "chunking")
            for i, name in enumerate(["r0", "nobody", "r2", "r3"]):
                envelope = Envelope(
                    sender_name="D",
                    sender_address="d@x.test",
                    recipient=f"{name}@x.test",
                    message_id=f"<{i}@x.test>",
                    now=NOW,
                )
                message = _message(envelope, "S", f".leading dot\n.\nend {i}", "<p>h</p>")
                try:
                    connection.send(message)
                    sent.append(message.data)
                except DeliveryError as exc:
                    errors.append(exc)
            # A message from elsewhere, with bare LF line ends: made canonical on the way.
            raw = b"From: d@x.test\nTo: r4@x.test\nMessage-ID: <4@x.test>\n\n.dot\nend\n"
            connection.send(Mail(sender="d@x.test", recipient="r4@x.test", data=raw))
            sent.append(raw.replace(b"\n", b"\r\n"))
    finally:
        sink.terminate()
        sink.wait(10)
        sink.stdout.close()
    assert [(e.permanent, e.code) for e in errors] == [(True, 550)]
    assert [p.read_bytes() for p in sorted(saved.iterdir())] == sent and len(sent) == 4
    assert json.loads(stats.read_text()) == {
        "messages": 4,
        "connections": 1,
        "recipients": 4,
        "duplicates": 0,
    }


def test_addresses_are_stored_in_the_form_plain_smtp_can_send():
    """Internationalised domains in their ASCII (IDNA) form; a non-ASCII local part, which
    would need SMTPUTF8 end to end, refused with the reason."""
    assert subscribers.normalize_email(" Ana@Exämple.COM ") == "ana@xn--exmple-cua.com"
    with pytest.raises(UserError, match="Internationalized characters before the @"):
        subscribers.normalize_email("jürgen@example.com")


@pytest.mark.parametrize("pipelining", ["never", "always"])
def test_a_non_ascii_address_fails_permanently_and_the_connection_goes_on(smtp_server, pipelining):
    """An address stored before addresses were checked for SMTPUTF8 fails clearly, without
    breaking the batch (it used to raise UnicodeEncodeError mid-connection)."""
    from digest.render import Envelope, _message

    def mail(recipient):
        envelope = Envelope(
            sender_name="Digest",
            sender_address="digest@example.com",
            recipient=recipient,
            now=NOW,
            message_id=f"<{len(recipient)}@example.com>",
        )
        return _message(envelope, "Papers", "text", "<p>html</p>")

    mailer = SMTPMailer(
        SMTPConfig(host=smtp_server.host, port=smtp_server.port, pipelining=pipelining)
    )
    with mailer.connect() as connection:
        with pytest.raises(DeliveryError, match="needs SMTPUTF8") as failure:
            connection.send(mail("jürgen@example.com"))
        assert failure.value.permanent
        connection.send(mail("ok@example.com"))
    assert [m.rcpt_tos for m in smtp_server.messages] == [["ok@example.com"]]
