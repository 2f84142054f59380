"""The pure parsers on the real recorded responses, and on each kind of bad input."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest

from digest.sources import BadResponse
from digest.sources.arxiv import arxiv_query, parse_arxiv_atom, parse_arxiv_rss
from digest.sources.hf import parse_hf_daily
from tests.fake_sources import fixture_bytes

HF_JUNE = "api-daily-papers-2026-06-12.json"
HF_JULY = "api-daily-papers-2026-07-31.json"
ATOM_OLD = "api-query-cs.RO-2025-10-17.xml"
ATOM_NEW = "api-query-transformer-cs.LG-2026-06-14.xml"
ATOM_MIXED = "api-query-all-nicotine-2026-07-17.xml"
RSS_EMPTY = "rss-cs.CL-weekend-empty-2026-08-01.xml"
RSS_ITEMS = "rss-cs.CL-2026-07-01-constructed.xml"
DOT = re.DOTALL


# --- Hugging Face Daily Papers ----------------------------------------------------------------


def test_hf_response_keeps_votes_comments_repo_stars_ai_fields_and_listing_day():
    result = parse_hf_daily(fixture_bytes(HF_JUNE))
    assert (len(result.papers), result.errors, result.notes) == (30, [], [])
    first = result.papers[0]
    assert first.id == "2606.00467"
    assert first.title.startswith("On the Limits of LLM Adaptability")
    assert first.authors == ["Etienne Casanova", "Rafal Kocielnik", "R. Michael Alvarez"]
    assert first.abstract.startswith("Large Language Models (LLMs) are increasingly used")
    assert (first.upvotes, first.comments) == (0, 2)  # upvotes on `paper`, numComments on item
    assert first.published == dt.datetime(2026, 5, 30, tzinfo=dt.UTC)
    assert first.first_seen == dt.datetime(2026, 6, 12, tzinfo=dt.UTC)  # submittedOnDailyAt
    assert first.ai_summary and first.ai_summary.startswith("Large language models exhibit")
    assert "LLM-as-a-judge" in first.ai_keywords
    assert first.source == "hf" and first.url == "https://arxiv.org/abs/2606.00467"
    raw = json.loads(fixture_bytes(HF_JUNE))
    with_repo = {i["paper"]["id"]: i["paper"] for i in raw if i["paper"].get("githubRepo")}
    parsed = {p.id: p for p in result.papers}
    assert len(with_repo) == 16
    for paper_id, paper in with_repo.items():
        assert parsed[paper_id].github_repo == paper["githubRepo"]
        assert parsed[paper_id].github_stars == paper.get("githubStars")
    assert sum(1 for p in result.papers if p.github_repo) == 16


def test_hf_response_without_ai_fields_parses_too():
    result = parse_hf_daily(fixture_bytes(HF_JULY))
    assert len(result.papers) == 5 and not result.errors
    paper = result.papers[0]
    assert paper.id == "2607.23193"
    assert (paper.ai_summary, paper.ai_keywords) == (None, [])
    assert (paper.github_repo, paper.github_stars) == ("https://github.com/MAC-AutoML/OmniScope", 3)
    assert paper.upvotes == 3


def test_hf_truncated_json_is_a_clear_error():
    body = fixture_bytes(HF_JULY)
    with pytest.raises(BadResponse, match="truncated JSON"):
        parse_hf_daily(body[: len(body) // 2])


def test_hf_html_error_page_instead_of_json_is_a_clear_error():
    page = (
        b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>oops</body></html>"
    )
    with pytest.raises(BadResponse, match="HTML page instead of JSON.*502 Bad Gateway"):
        parse_hf_daily(page)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty body"),
        (b'{"error": "Invalid date"}', "got an object \\(Invalid date\\)"),
        (b'"just a string"', "got str"),
        (b"[1, 2", "truncated JSON"),
        (b"[1, 2]]", "not valid JSON"),
    ],
)
def test_hf_unreadable_bodies_say_why(body, message):
    with pytest.raises(BadResponse, match=message):
        parse_hf_daily(body)


def test_hf_partly_bad_response_keeps_the_good_items_and_reports_the_bad_ones():
    items = json.loads(fixture_bytes(HF_JULY))
    items[1]["paper"]["title"] = "   "
    items[2]["paper"]["upvotes"] = -4
    del items[3]["paper"]["id"]
    items.append("not an item")
    result = parse_hf_daily(json.dumps(items))
    assert [p.id for p in result.papers] == [items[0]["paper"]["id"], items[4]["paper"]["id"]]
    assert len(result.errors) == 4
    assert result.errors[0].startswith(f"item 2 ({items[1]['paper']['id']}): title")
    assert "upvotes" in result.errors[1] and "greater than or equal to 0" in result.errors[1]
    assert result.errors[2] == "item 4: no paper id"
    assert result.errors[3] == "item 6: not an object"


def test_hf_title_with_markup_and_odd_unicode_is_cleaned():
    items = json.loads(fixture_bytes(HF_JULY))
    items[0]["paper"]["title"] = (
        "<b>Omni</b>Scope:\u200b Token\u00a0Compression &amp; the ｆｕｌｌｗｉｄｔｈ\u0007 case\n\n"
    )
    paper = parse_hf_daily(json.dumps(items)).papers[0]
    assert paper.title == "Omni Scope: Token Compression & the fullwidth case"


def test_hf_duplicate_id_in_one_response_is_one_paper_with_the_richer_fields():
    items = json.loads(fixture_bytes(HF_JULY))
    duplicate = json.loads(json.dumps(items[0]))
    duplicate["paper"]["upvotes"] = 9
    duplicate["paper"]["ai_keywords"] = ["token compression"]
    duplicate["paper"]["summary"] = ""
    items.append(duplicate)
    result = parse_hf_daily(json.dumps(items))
    ids = [p.id for p in result.papers]
    assert len(ids) == len(set(ids)) == 5
    paper = result.papers[0]
    assert paper.upvotes == 9 and paper.ai_keywords == ["token compression"]
    assert paper.abstract  # the empty duplicate does not erase the abstract
    assert result.notes == [
        f"item 6 ({paper.id}): duplicate id {paper.id} in the same response, merged into one"
    ]


def test_hf_empty_listing_says_so():
    result = parse_hf_daily(b"[]")
    assert result.papers == [] and result.errors == []
    assert "listing is empty" in result.notes[0]


# --- arXiv API (Atom) -------------------------------------------------------------------------


def test_atom_old_format_keeps_primary_and_cross_listed_categories_comment_and_dates():
    result = parse_arxiv_atom(fixture_bytes(ATOM_OLD))
    assert len(result.papers) == 2 and not result.errors
    paper = result.papers[0]
    assert paper.id == "2510.14968"  # version-free
    assert paper.title == (
        "RDD: Retrieval-Based Demonstration Decomposer for Planner Alignment in Long-Horizon Tasks"
    )
    assert paper.categories == ["cs.RO", "cs.AI", "cs.CV", "cs.LG", "cs.SY", "eess.SY"]
    assert paper.authors == ["Mingxuan Yan", "Yuping Wang", "Zechun Liu", "Jiachen Li"]
    assert paper.comment and paper.comment.startswith("39th Conference on Neural Information")
    assert "\n" not in paper.comment
    assert paper.published == dt.datetime(2025, 10, 16, 17, 59, 37, tzinfo=dt.UTC)
    assert paper.abstract.startswith("To tackle long-horizon tasks")
    assert paper.source == "arxiv" and paper.url == "https://arxiv.org/abs/2510.14968"
    assert paper.first_seen is None  # the API says when it was submitted, not listed


def test_atom_new_format_puts_the_primary_category_first():
    result = parse_arxiv_atom(fixture_bytes(ATOM_NEW))
    assert len(result.papers) == 5 and not result.errors
    mana = result.papers[0]
    assert mana.id == "2606.13677"
    assert mana.categories[0] == "cs.RO" and "cs.LG" in mana.categories
    assert mana.comment == "Project Page: https://zhaohengyin.github.io/mana"
    # "&lt;1 minute" in the XML is text, not markup
    assert "(<1 minute per tool)" in mana.abstract


def test_atom_with_mixed_optional_fields_reads_every_entry():
    result = parse_arxiv_atom(fixture_bytes(ATOM_MIXED))
    assert len(result.papers) == 10 and not result.errors
    assert result.papers[0].id == "1509.01687"
    assert result.papers[0].categories == ["cond-mat.mes-hall", "physics.comp-ph"]
    assert sum(1 for p in result.papers if p.comment) == 4
    assert all(p.authors and p.abstract and p.published for p in result.papers)


def _atom_with(entry_edit):
    text = fixture_bytes(ATOM_OLD).decode()
    head, first, second = text.split("<entry>")
    return head + "<entry>" + entry_edit(first) + "<entry>" + second


def test_atom_entry_without_abstract_is_kept_and_reported():
    body = _atom_with(lambda e: re.sub(r"<summary>.*?</summary>", "", e, flags=re.DOTALL))
    result = parse_arxiv_atom(body)
    assert [p.id for p in result.papers] == ["2510.14968", "2510.14827"]
    assert result.papers[0].abstract == ""
    assert result.notes == ["entry 1 (2510.14968v1): no abstract, kept without one"]


def test_atom_entry_without_title_or_id_is_dropped_and_reported_the_rest_kept():
    body = _atom_with(
        lambda e: re.sub(r"<title>.*?</title>", "<title> </title>", e, flags=re.DOTALL)
    )
    result = parse_arxiv_atom(body)
    assert [p.id for p in result.papers] == ["2510.14827"]
    assert result.errors == ["entry 1 (2510.14968v1): title: Value error, title is empty"]
    body = _atom_with(lambda e: re.sub(r"<id>.*?</id>", "<id>oops</id>", e))
    result = parse_arxiv_atom(body)
    assert [p.id for p in result.papers] == ["2510.14827"]
    assert result.errors == ["entry 1 (oops): no arXiv id in 'oops'"]


def test_atom_title_with_markup_and_odd_unicode_is_cleaned():
    title = "<title>Deep &lt;i&gt;Neural&lt;/i&gt;\u2028 Fields\u200d for\tMo\u0301tion</title>"
    body = _atom_with(lambda e: re.sub(r"<title>.*?</title>", title, e, flags=re.DOTALL))
    paper = parse_arxiv_atom(body).papers[0]
    assert paper.title == "Deep Neural Fields for Mótion"


def test_atom_duplicate_id_in_one_response_is_one_paper():
    text = fixture_bytes(ATOM_OLD).decode()
    first = text[text.index("<entry>") : text.index("</entry>") + len("</entry>")]
    again = first.replace("v1</id>", "v2</id>")  # a newer version of the same paper
    result = parse_arxiv_atom(text.replace("</feed>", again + "</feed>"))
    assert [p.id for p in result.papers] == ["2510.14968", "2510.14827"]
    assert result.notes == [
        "entry 3 (2510.14968v2): duplicate id 2510.14968 in the same response, merged into one"
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (fixture_bytes(ATOM_OLD)[:3000], "not well-formed XML"),
        (b"<html><body>Rate exceeded.</body></html>", "HTML page instead of Atom"),
        (b"", "empty body"),
        (b"<?xml version='1.0'?><rss version='2.0'><channel/></rss>", "expected an Atom <feed>"),
    ],
)
def test_atom_unreadable_bodies_say_why(body, message):
    with pytest.raises(BadResponse, match=message):
        parse_arxiv_atom(body)


def test_atom_api_error_feed_is_a_clear_error():
    body = """<?xml version="1.0" encoding="UTF-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>arXiv Query</title>
<entry><id>http://arxiv.org/api/errors#incorrect_id_format_for_1234</id><title>Error</title>
<summary>incorrect id format for 1234</summary></entry></feed>"""
    with pytest.raises(BadResponse, match="arXiv API error: incorrect id format for 1234"):
        parse_arxiv_atom(body)


def test_xml_entity_bomb_is_refused():
    bomb = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<feed xmlns="http://www.w3.org/2005/Atom"><title>&lol2;</title></feed>"""
    with pytest.raises(BadResponse, match="refused unsafe XML"):
        parse_arxiv_atom(bomb)


def test_api_query_covers_one_category_and_one_submission_day():
    assert arxiv_query("cs.LG", dt.date(2026, 6, 12)) == (
        "cat:cs.LG AND submittedDate:[202606120000 TO 202606122359]"
    )


# --- arXiv RSS --------------------------------------------------------------------------------


def test_rss_weekend_feed_is_empty_and_says_why():
    result = parse_arxiv_rss(fixture_bytes(RSS_EMPTY))
    assert result.papers == [] and result.errors == []
    assert result.notes == [
        "cs.CL updates on arXiv.org: no announcements on Saturday 2026-08-01 "
        "(arXiv announces nothing on Sunday and Saturday)"
    ]


def test_rss_lists_new_and_cross_listed_papers_and_skips_replacements():
    result = parse_arxiv_rss(fixture_bytes(RSS_ITEMS))
    assert [p.id for p in result.papers] == [
        "2606.30775",
        "2606.30790",
        "2606.30801",
        "2606.30852",  # cross-listed from cs.AI
    ]
    assert result.notes == ["1 replace announcement(s) of older papers not listed as new"]
    cross = result.papers[3]
    assert cross.categories == ["cs.AI", "cs.CL", "cs.LG"]
    first = result.papers[0]
    assert first.authors[:2] == ["Yangqiaoyu Zhou", "Mohammad Alqudah"]
    assert not first.abstract.startswith(("arXiv:", "Abstract")) and len(first.abstract) > 200
    # Announced on 2026-07-01 (00:00 US Eastern): that is when it was first listed.
    assert first.first_seen == dt.datetime(2026, 7, 1, 4, 0, tzinfo=dt.UTC)


def test_rss_truncated_and_html_bodies_say_why():
    with pytest.raises(BadResponse, match="not well-formed XML"):
        parse_arxiv_rss(fixture_bytes(RSS_ITEMS)[:2500])
    with pytest.raises(BadResponse, match="HTML page instead of RSS"):
        parse_arxiv_rss(b"<!doctype html><title>Service Unavailable</title>")
    with pytest.raises(BadResponse, match="expected an RSS"):
        parse_arxiv_rss(fixture_bytes(ATOM_OLD))
