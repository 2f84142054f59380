"""End to end in headless Chromium: the real app served by `digest serve`, mail through a real
SMTP server. Subscribe, confirm from the received email, change preferences, 👍 from a received
digest, unsubscribe through the page, the RFC 8058 one-click POST, and the form without
JavaScript. Screenshots go to test-artifacts/ (phone and desktop).

Needs Debian's chromium (/usr/bin/chromium) and Playwright for Python (the `test` extra); never
`playwright install`. Missing either is a skip locally and a failure when
DIGEST_TEST_REQUIRE_SERVICES=1 (CI).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from digest import delivery, paperstore, subscribers
from digest.config import Settings
from digest.db import create_schema, make_engine
from digest.mailer import SMTPConfig, SMTPMailer
from digest.models import Feedback, Subscriber
from tests.conftest import ROOT, SMTPSink, free_port, make_settings, service_missing

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
DIGEST = str(Path(sys.executable).parent / "digest")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        service_missing(f"Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        service_missing("Playwright for Python (pip install -e '.[test]')")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Live:
    url: str
    settings: Settings
    engine: Engine
    smtp: SMTPSink

    def subscriber(self, email: str) -> Subscriber:
        with Session(self.engine) as session:
            found = session.exec(select(Subscriber).where(Subscriber.email == email)).first()
        assert found is not None, f"no subscriber {email}"
        return found

    def send_digests(self) -> delivery.SendSummary:
        now = dt.datetime.now(dt.UTC)
        mailer = SMTPMailer(SMTPConfig(host=self.smtp.host, port=self.smtp.port))
        with Session(self.engine) as session:
            return delivery.send_due_digests(
                session=session,
                mailer=mailer,
                settings=self.settings,
                now=now,
                digest_date=now.date(),
            )


@pytest.fixture
def live(tmp_path: Path, smtp_server: SMTPSink) -> Iterator[Live]:
    """`digest serve` on a free loopback port, the seed papers stored, mail to `smtp_server`."""
    port = free_port()
    settings = make_settings(
        tmp_path,
        mailer="smtp",
        smtp_url=smtp_server.url,
        base_url=f"http://127.0.0.1:{port}",
        default_timezone="Europe/Lisbon",
    )
    engine = make_engine(settings.database_url)
    create_schema(engine)
    with Session(engine) as session:
        paperstore.load_seeds(session=session, settings=settings, now=dt.datetime.now(dt.UTC))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    env.update(
        {
            "DIGEST_ENV": "test",
            "DIGEST_SECRET_KEY": settings.secret_key,
            "DIGEST_DATABASE_URL": settings.database_url,
            "DIGEST_MAILER": "smtp",
            "DIGEST_SMTP_URL": smtp_server.url,
            "DIGEST_BASE_URL": settings.base_url,
            "DIGEST_FROM_ADDRESS": settings.from_address,
            "DIGEST_UNSUBSCRIBE_MAILTO": settings.unsubscribe_mailto,
            "DIGEST_DEFAULT_TIMEZONE": settings.default_timezone,
        }
    )
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        [DIGEST, "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if server.poll() is not None:
                raise AssertionError(f"digest serve exited: {(tmp_path / 'serve.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{settings.base_url}/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield Live(settings.base_url, settings, engine, smtp_server)
    finally:
        server.terminate()
        server.wait(timeout=20)
        log.close()
        engine.dispose()


def link(message: Any, path: str) -> str:
    text = message.get_body(("plain",)).get_content()
    match = re.search(rf"(http://127\.0\.0\.1:\d+/{path}/\S+)", text)
    assert match, f"no /{path}/ link in:\n{text}"
    return match.group(1)


def fits_the_viewport(page: Any) -> bool:
    """No horizontal scrolling: the page is readable at this width."""
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


def shoot(page: Any, name: str) -> Path:
    """The whole page, and the first screen as a person sees it on opening (`-screen.png`)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    page.screenshot(path=str(path.with_name(path.stem + "-screen.png")))
    assert path.stat().st_size > 5000  # a real picture, not an empty page
    return path


def test_subscribe_confirm_preferences_feedback_and_unsubscribe_in_a_browser(browser, live):
    # A phone in Tokyo: the time zone comes from the browser.
    context = browser.new_context(
        viewport=PHONE, timezone_id="Asia/Tokyo", is_mobile=True, has_touch=True
    )
    page = context.new_page()
    try:
        page.goto(live.url + "/")
        assert page.locator("#timezone").input_value() == "Asia/Tokyo"
        assert fits_the_viewport(page)
        # A suggestion from the stored papers, picked with a tap, lands in the topics.
        chip = page.locator('.chip[data-topic="diffusion models"]')
        chip.click()
        chip.click()  # a second tap does not add it twice
        assert page.locator("#topics").input_value() == "diffusion models"
        assert "added" in (chip.get_attribute("class") or "")
        page.fill("#topics", page.locator("#topics").input_value() + "\nlanguage models")
        page.fill("#email", "Ada@Example.com")
        page.select_option("#send_hour", "6")
        shoot(page, "subscribe-phone.png")
        page.click("button[type=submit]")
        assert page.locator("h1").inner_text() == "Check your inbox"
        assert live.subscriber("ada@example.com").status == "pending"

        live.smtp.wait_for(1)
        (confirmation,) = live.smtp.to("ada@example.com")
        page.goto(link(confirmation, "confirm"))
        assert live.subscriber("ada@example.com").status == "pending"  # opening is not confirming
        page.click("text=Confirm subscription")
        assert page.locator("h1").inner_text() == "Subscribed"
        ada = live.subscriber("ada@example.com")
        assert (ada.status, ada.timezone, ada.send_hour) == ("active", "Asia/Tokyo", 6)
        assert ada.topics == ["diffusion models", "language models"]

        # A digest reaches the SMTP server; the browser shows it and 👍 records feedback.
        summary = live.send_digests()
        assert [email for email, _ in summary.sent] == ["ada@example.com"], summary
        live.smtp.wait_for(2)
        digest = live.smtp.to("ada@example.com")[1]
        html = digest.get_body(("html",)).get_content()
        page.set_content(html)
        assert fits_the_viewport(page)
        shoot(page, "digest-phone.png")
        first_title = page.locator("h2").first.inner_text()
        page.locator("a", has_text="👍").first.click()
        page.wait_for_url(re.compile(r".*/feedback/.*"))
        # Opening the link votes nothing (link scanners open them all); the button does.
        assert page.locator("h1").inner_text() == "Rate a paper"
        assert first_title in page.content()
        with Session(live.engine) as session:
            assert session.exec(select(Feedback)).all() == []
        page.click("text=More papers like this")
        assert page.locator("h1").inner_text() == "Thank you"
        with Session(live.engine) as session:
            (vote,) = session.exec(select(Feedback)).all()
        assert (vote.subscriber_id, vote.value) == (ada.id, 1)

        # The web copy from "View in a browser" shows the same papers.
        page.goto(link(digest, "digest"))
        assert first_title in page.content()

        # Preferences from the link in the digest.
        page.goto(link(digest, "preferences"))
        page.fill("#topics", "robot learning\nlegged robots")
        page.select_option("#frequency", "weekly")
        page.select_option("#weekly_day", "4")
        page.select_option("#send_hour", "18")
        page.fill("#timezone", "Europe/Paris")
        page.click("text=Save preferences")
        assert "Saved." in page.locator(".ok").inner_text()
        ada = live.subscriber("ada@example.com")
        assert (ada.topics, ada.frequency, ada.weekly_day, ada.send_hour, ada.timezone) == (
            ["robot learning", "legged robots"],
            "weekly",
            4,
            18,
            "Europe/Paris",
        )

        # Unsubscribe through the page: opening it changes nothing, the button does.
        page.goto(link(digest, "unsubscribe"))
        assert live.subscriber("ada@example.com").status == "active"
        page.click("button:has-text('Unsubscribe')")
        assert page.locator("h1").inner_text() == "Unsubscribed"
        assert live.subscriber("ada@example.com").status == "unsubscribed"
    finally:
        context.close()


def test_one_click_unsubscribe_post_from_the_list_unsubscribe_header(browser, live):
    with Session(live.engine) as session:
        subscribers.add_subscriber(
            session=session,
            email="bo@example.com",
            topics=["diffusion models"],
            now=dt.datetime.now(dt.UTC),
        )
    assert live.send_digests().sent
    live.smtp.wait_for(1)
    (digest,) = live.smtp.to("bo@example.com")
    assert digest["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    https_url = re.search(r"<(http[^>]+)>", str(digest["List-Unsubscribe"])).group(1)
    # What a mailbox provider does (RFC 8058): a bare POST, no cookie, no CSRF token.
    context = browser.new_context()
    try:
        response = context.request.post(
            https_url,
            data="List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert response.status == 200 and "Unsubscribed" in response.text()
    finally:
        context.close()
    assert live.subscriber("bo@example.com").status == "unsubscribed"
    assert live.send_digests().sent == []


def test_subscribing_works_without_javascript_with_the_server_default_zone(browser, live):
    context = browser.new_context(viewport=DESKTOP, java_script_enabled=False)
    page = context.new_page()
    try:
        page.goto(live.url + "/")
        shoot(page, "subscribe-desktop-nojs.png")
        page.fill("#email", "nojs@example.com")
        page.fill("#topics", "scaling laws")
        page.select_option("#frequency", "weekly")
        page.select_option("#weekly_day", "0")
        page.click("button[type=submit]")
        assert page.locator("h1").inner_text() == "Check your inbox"
        live.smtp.wait_for(1)
        page.goto(link(live.smtp.to("nojs@example.com")[0], "confirm"))
        page.click("text=Confirm subscription")
        assert page.locator("h1").inner_text() == "Subscribed"
        sub = live.subscriber("nojs@example.com")
        assert (sub.status, sub.timezone, sub.frequency, sub.weekly_day) == (
            "active",
            "Europe/Lisbon",
            "weekly",
            0,
        )
    finally:
        context.close()


def test_pages_read_well_on_a_desktop(browser, live):
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    try:
        page.goto(live.url + "/")
        assert fits_the_viewport(page)
        shoot(page, "subscribe-desktop.png")
        with Session(live.engine) as session:
            subscribers.add_subscriber(
                session=session,
                email="desk@example.com",
                topics=["language models", "scaling laws"],
                now=dt.datetime.now(dt.UTC),
            )
        assert live.send_digests().sent
        live.smtp.wait_for(1)
        page.set_content(live.smtp.to("desk@example.com")[0].get_body(("html",)).get_content())
        assert fits_the_viewport(page) and page.locator("a", has_text="👍").count() >= 1
        shoot(page, "digest-desktop.png")
    finally:
        context.close()


def test_a_script_url_never_runs_on_our_pages(browser, live):
    """Issue 17, item 1, in a real browser: a paper stored with a `javascript:` URL (as an older
    store or a careless source would have kept it) gets no link on its page, and the page's
    policy stops such a URL even if one were put into the page."""
    from digest.models import Paper

    with Session(live.engine) as session:
        paper = session.exec(select(Paper)).first()
        assert paper is not None
        paper.url = "javascript:document.title='pwned'"
        session.add(paper)
        session.commit()
        paper_id = paper.id
    page = browser.new_page()
    try:
        response = page.goto(f"{live.url}/papers/{paper_id}")
        assert response is not None and response.status == 200
        policy = response.headers.get("content-security-policy", "")
        assert "script-src 'self'" in policy or "default-src 'self'" in policy, policy
        assert page.locator("a[href^='javascript:']").count() == 0
        title = page.title()
        # Put one in, as an injection would, and click it: the policy refuses to run it.
        page.evaluate(
            "() => { const a = document.createElement('a'); a.id = 'x';"
            " a.href = \"javascript:document.title='pwned'\"; a.textContent = 'x';"
            " document.body.appendChild(a); }"
        )
        page.click("#x")
        page.wait_for_timeout(300)
        assert page.title() == title != "pwned"
    finally:
        page.close()
