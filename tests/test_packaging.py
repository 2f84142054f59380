"""The built wheel, installed in a fresh virtual environment, works from an empty folder:
templates, seeds, migrations and every subpackage come with it."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from email import message_from_bytes, policy
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Installed:
    wheel: Path
    bin: Path

    def run(self, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
        # Nothing of the checkout or of the test settings leaks in: no DIGEST_* variables,
        # no PYTHONPATH, and the working folder is empty.
        env = {
            k: v for k, v in os.environ.items() if not k.startswith("DIGEST_") and k != "PYTHONPATH"
        }
        result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
        return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """`pip wheel .` from the checkout, then a fresh venv (not --system-site-packages: a
    dependency missing from pyproject.toml fails here) with the wheel and its dependencies."""
    folder = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(folder), str(ROOT)],
        check=True,
        timeout=600,
    )
    (wheel,) = folder.glob("digest_papers_selfhosted-*.whl")
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
        check=True,
        timeout=900,
    )
    return Installed(wheel=wheel, bin=venv / "bin")


def test_the_wheel_holds_every_subpackage_the_templates_seeds_and_migrations(installed):
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    for name in (
        "digest/sources/arxiv.py",
        "digest/migrations/env.py",
        "digest/migrations/script.py.mako",
        "digest/_data/seeds/papers.jsonl",
        "digest/_data/templates/email/digest/body.html",
        "digest/web/static/subscribe.js",
        "digest/web/static/web.css",
        "workers/tasks.py",
    ):
        assert name in names, name
    revisions = {n for n in names if n.startswith("digest/migrations/versions/")}
    shipped = {
        f"digest/migrations/versions/{p.name}"
        for p in (ROOT / "digest" / "migrations" / "versions").glob("*.py")
    }
    assert revisions == shipped
    assert not any(n.startswith(("tests/", "bench/", "templates/", "seeds/")) for n in names)


def test_demo_and_ingest_work_from_an_empty_folder(installed, tmp_path):
    out = installed.run([str(installed.bin / "digest"), "demo"], cwd=tmp_path).stdout
    (eml,) = (tmp_path / "outbox").glob("*.eml")
    assert f"Your digest is in {eml.resolve()}" in out
    message = message_from_bytes(eml.read_bytes(), policy=policy.default)
    text = message.get_body(("plain",)).get_content()
    assert text.count("Why: matches '") + text.count("Why: related to '") >= 5
    current = installed.run([str(installed.bin / "digest"), "db", "current"], cwd=tmp_path)
    assert current.stdout.strip().endswith("(head)")
    ingest = installed.run(
        [str(installed.bin / "digest"), "ingest", "--source", "seeds"], cwd=tmp_path
    )
    assert ingest.stdout.startswith("ok: seeds")


def test_the_installed_package_finds_its_data_and_registers_every_task(installed, tmp_path):
    import workers.tasks  # noqa: F401  (registers the tasks of the checkout, to compare)
    from workers.app import app

    expected = sorted(name for name in app.tasks if name.startswith("workers."))
    script = (
        "import importlib, pkgutil, digest, workers.tasks\n"
        "from digest.resources import data_dir\n"
        "from workers.app import app\n"
        "for module in pkgutil.walk_packages(digest.__path__, 'digest.'):\n"
        # Alembic runs migrations.env and `python -m` runs a __main__: nobody imports them.
        "    if module.name != 'digest.migrations.env' and not module.name.endswith('__main__'):\n"
        "        importlib.import_module(module.name)\n"
        "print(data_dir('templates'))\n"
        "print(data_dir('seeds'))\n"
        "print(','.join(sorted(n for n in app.tasks if n.startswith('workers.'))))\n"
    )
    lines = installed.run(
        [str(installed.bin / "python"), "-c", script], cwd=tmp_path
    ).stdout.splitlines()
    templates, seeds, tasks = lines[-3:]
    site = "site-packages/digest/_data/"
    assert site + "templates" in templates and site + "seeds" in seeds
    assert tasks.split(",") == expected
