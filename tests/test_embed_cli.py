"""Paper embeddings through the installed `digest` command: `papers embed` resumes and repeats
nothing, `papers import` encodes nothing, `status` names the encoder, `rank` reuses its cache."""

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

DIGEST = str(Path(sys.executable).parent / "digest")
FIXTURE = Path(__file__).parent / "fixtures" / "arxiv-2026-06-10_11-slice.jsonl"


def run(args, cwd, **env_extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    env.update({"DIGEST_CACHE_DIR": str(cwd / "cache"), **env_extra})
    return subprocess.run(
        [DIGEST, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def small_papers(tmp_path: Path, n: int = 12) -> Path:
    path = tmp_path / "papers.jsonl"
    path.write_text("".join(FIXTURE.read_text().splitlines(keepends=True)[:n]))
    return path


def embedding_rows(tmp_path: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(tmp_path / "digest.db") as db:
        return db.execute("SELECT model, count(*) FROM paper_embedding GROUP BY model").fetchall()


def test_import_does_not_encode_and_embed_does_each_paper_once(tmp_path):
    imported = run(["papers", "import", str(small_papers(tmp_path))], tmp_path)
    assert imported.returncode == 0, imported.stderr
    assert embedding_rows(tmp_path) == []

    first = run(["papers", "embed"], tmp_path)
    assert first.returncode == 0, first.stderr
    assert "Embedded 12 papers with all-MiniLM-L6-v2-onnx-int8@" in first.stdout
    [(model, count)] = embedding_rows(tmp_path)
    assert count == 12 and model.startswith("all-MiniLM-L6-v2-onnx-int8@1.0.0-")

    again = run(["papers", "embed", "--since", "2026-01-01"], tmp_path)
    assert again.returncode == 0, again.stderr
    assert "Embedded 0 papers" in again.stdout
    assert embedding_rows(tmp_path) == [(model, 12)]

    status = run(["status"], tmp_path)
    assert f"encoder: {model} (loads ok; ranking is hybrid: embeddings + BM25)" in status.stdout


def test_tfidf_setting_has_no_encoder(tmp_path):
    status = run(["status"], tmp_path, DIGEST_ENCODER="tfidf")
    assert "encoder: tfidf" in status.stdout
    embed = run(["papers", "embed"], tmp_path, DIGEST_ENCODER="tfidf")
    assert embed.returncode == 1 and "no encoder" in embed.stderr


def test_rank_encodes_a_paper_once_across_runs(tmp_path):
    papers = small_papers(tmp_path, 8)
    profiles = tmp_path / "profiles.jsonl"
    profiles.write_text(json.dumps({"id": "p", "topics": ["robot learning"]}) + "\n")
    args = ["rank", "--papers", str(papers), "--profiles", str(profiles)]
    args += ["--now", "2026-06-12T08:00:00Z"]
    first = run(args, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "Embeddings: 0 cached, 8 encoded" in first.stderr
    second = run(args, tmp_path)
    assert second.returncode == 0, second.stderr
    assert "Embeddings: 8 cached, 0 encoded" in second.stderr
    assert second.stdout == first.stdout
