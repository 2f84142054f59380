"""`digest rank` as a user runs it: the installed command, real papers, JSON Lines in and out."""

import json
import os
import subprocess
import sys
from pathlib import Path

FIXTURE = Path(__file__).parent / "fixtures" / "arxiv-2026-06-10_11-slice.jsonl"
DIGEST = str(Path(sys.executable).parent / "digest")
NOW = "2026-06-12T08:00:00Z"


def rank(tmp_path, profiles, *extra, papers=FIXTURE):
    profiles_file = tmp_path / "profiles.jsonl"
    profiles_file.write_text(
        "".join(p if isinstance(p, str) else json.dumps(p) + "\n" for p in profiles)
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    args = ["rank", "--papers", str(papers), "--profiles", str(profiles_file), "--now", NOW]
    return subprocess.run(
        [DIGEST, *args, *extra], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )


def real_papers():
    return [json.loads(line) for line in FIXTURE.read_text().splitlines()]


def test_one_json_line_per_profile_best_first_and_nothing_else(tmp_path):
    papers = real_papers()
    liked = {**papers[0], "id": "liked-elsewhere"}
    profiles = [
        {"id": "games", "topics": ["game theory", "mechanism design"], "exclude": ["auction"]},
        {"id": "fan", "liked": [liked]},
        {"id": 42, "topics": ["zzqx frobnication"]},
    ]
    result = rank(tmp_path, profiles, "--top", "4")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    out = [json.loads(line) for line in lines]
    assert [o["profile"] for o in out] == ["games", "fan", "42"]
    by_id = {p["id"]: p for p in papers}
    for o in out:
        assert set(o) == {"profile", "results"}
        assert len(o["results"]) <= 4
        for r in o["results"]:
            assert set(r) == {"id", "score", "why"} and r["id"] in by_id
            assert isinstance(r["score"], float) and r["why"]
        scores = [r["score"] for r in o["results"]]
        assert scores == sorted(scores, reverse=True)
    games, fan, nothing = out
    assert 2 <= len(games["results"]) <= 4
    for r in games["results"]:
        text = (by_id[r["id"]]["title"] + " " + by_id[r["id"]]["abstract"]).lower()
        assert "auction" not in text
        # The reason names the topic the paper is for.
        assert "'game theory'" in r["why"] or "'mechanism design'" in r["why"]
    assert "cs.GT" in by_id[games["results"][0]["id"]]["categories"]
    assert sum("cs.GT" in by_id[r["id"]]["categories"] for r in games["results"]) >= 2
    # The liked paper is among the candidates under its own id: its twin comes first.
    assert fan["results"][0]["id"] == papers[0]["id"]
    assert "you liked" in fan["results"][0]["why"]
    assert nothing["results"] == []
    assert "Ranked 260 papers for 3 profiles" in result.stderr


def test_same_input_gives_the_same_output(tmp_path):
    profiles = [{"id": "a", "topics": ["language model reasoning"]}]
    first, second = rank(tmp_path, profiles), rank(tmp_path, profiles)
    assert first.returncode == 0 and first.stdout == second.stdout and first.stdout


def test_bad_lines_are_reported_on_stderr_and_the_good_ones_ranked(tmp_path):
    papers = tmp_path / "papers.jsonl"
    lines = FIXTURE.read_text().splitlines()[:30]
    papers.write_text("\n".join([*lines[:10], "{broken", json.dumps({"title": ""}), *lines[10:]]))
    profiles = [
        {"id": "ok", "topics": ["agents"]},
        "not json\n",
        {"topics": ["no id"]},
        {"id": "typo", "topic": ["agents"]},
    ]
    result = rank(tmp_path, profiles, papers=papers)
    assert result.returncode == 1
    assert [json.loads(line)["profile"] for line in result.stdout.splitlines()] == ["ok"]
    err = result.stderr
    assert "papers.jsonl line 11:" in err and "papers.jsonl line 12: title" in err
    assert "profiles.jsonl line 2:" in err and "profiles.jsonl line 3: id: Field required" in err
    assert "profiles.jsonl line 4: topic: Extra inputs are not permitted" in err
    assert "Ranked 30 papers for 1 profiles" in err and "Traceback" not in err


def test_a_bad_now_is_a_clear_error(tmp_path):
    result = subprocess.run(
        [DIGEST, "rank", "--papers", str(FIXTURE), "--profiles", str(FIXTURE), "--now", "noon"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert "--now" in result.stderr and "Traceback" not in result.stderr
