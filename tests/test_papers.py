import datetime as dt
import io
import json

from digest.config import PROJECT_ROOT
from digest.papers import BadLine, PaperIn, normalize_arxiv_id, read_papers, title_id, write_papers


def test_seeds_hold_the_119_papers_of_the_seed_page_with_stable_unique_ids():
    lines = (PROJECT_ROOT / "seeds" / "papers.jsonl").read_text(encoding="utf-8").splitlines()
    papers = list(read_papers(lines))
    assert len(papers) == 119
    assert all(isinstance(p, PaperIn) for p in papers)
    ids = [p.id for p in papers if isinstance(p, PaperIn)]
    assert len(set(ids)) == 119
    first = papers[0]
    assert isinstance(first, PaperIn)
    # The page glued the first title to its "Subscribe" button: the seed must not keep that.
    assert first.title.startswith("Brain-Semantoks")
    assert first.id == title_id(first.title)
    assert all(p.abstract for p in papers if isinstance(p, PaperIn))


def test_id_from_title_is_stable_across_spacing_case_and_markup():
    assert title_id("Diffusion  Models <i>Beat</i> GANs") == title_id("diffusion models beat gans")
    assert title_id("Diffusion models beat GANs") != title_id("Diffusion models beat VAEs")


def test_arxiv_ids_lose_their_version_and_prefixes():
    assert normalize_arxiv_id("2606.00467v3") == "2606.00467"
    assert normalize_arxiv_id("arXiv:2606.00467") == "2606.00467"
    assert normalize_arxiv_id("https://arxiv.org/abs/2606.00467v1") == "2606.00467"
    assert normalize_arxiv_id("http://arxiv.org/pdf/cs/0101001v2") == "cs/0101001"
    assert normalize_arxiv_id("not an id") is None


def test_reading_keeps_good_lines_and_reports_bad_ones_with_line_numbers():
    lines = [
        json.dumps(
            {
                "id": "2601.00001v2",
                "title": "Good <b>one</b>",
                "abstract": "x",
                "authors": ["A B"],
                "published": "2026-01-02T03:04:05Z",
                "extra": 1,
            }
        ),
        "{not json",
        json.dumps({"abstract": "no title"}),
        "",
        json.dumps(["a", "list"]),
        json.dumps({"title": "No id, no date", "upvotes": 3}),
        json.dumps({"title": "Negative votes", "upvotes": -1}),
    ]
    items = list(read_papers(lines))
    good = [i for i in items if isinstance(i, PaperIn)]
    bad = [i for i in items if isinstance(i, BadLine)]
    assert [p.title for p in good] == ["Good one", "No id, no date"]
    assert good[0].id == "2601.00001"
    assert good[0].published == dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert good[1].id.startswith("t-") and good[1].published is None
    assert [b.line_number for b in bad] == [2, 3, 5, 7]
    assert "title" in bad[1].error


def test_summary_and_abs_are_accepted_as_abstract_and_url():
    paper = PaperIn.model_validate(
        {"id": "2503.11677", "title": "T", "summary": "S", "abs": "https://arxiv.org/abs/x"}
    )
    assert (paper.abstract, paper.url) == ("S", "https://arxiv.org/abs/x")


def test_write_then_read_round_trips():
    paper = PaperIn(
        id="2601.00001",
        title="T",
        abstract="A",
        authors=["X"],
        upvotes=4,
        categories=["cs.LG"],
        published=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    )
    out = io.StringIO()
    assert write_papers([paper], out) == 1
    (back,) = list(read_papers(out.getvalue().splitlines()))
    assert back == paper
