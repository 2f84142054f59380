"""The code stays as clean as the tooling in pyproject.toml says: ruff and mypy pass."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing():
    result = run(str(BIN / "ruff"), "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_nothing_in_digest_and_workers():
    result = run(str(BIN / "mypy"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_finds_nothing_in_digest():
    # Issue 14's measure: the package is typed all the way (workers' Celery decorators are not).
    result = run(str(BIN / "mypy"), "--strict", "digest")
    assert result.returncode == 0, result.stdout + result.stderr
