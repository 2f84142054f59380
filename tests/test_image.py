"""The Docker image's recipe: the lock files cover pyproject.toml (so they cannot drift
silently), the Dockerfile keeps its dependency layer apart from the code and runs as a user of
its own, and its install steps, rehearsed in fresh venvs, work: every locked package has a
wheel whose hash matches, nothing is missing from the lock, and `pip check` passes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import ROOT

LOCK = ROOT / "requirements.lock"
BUILD_LOCK = ROOT / "requirements-build.lock"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)
# The extras the image installs (scripts/lock: --extra flower).
IMAGE_EXTRAS = ("flower",)


def pins(lock_text: str) -> dict[str, Version]:
    return {canonicalize_name(name): Version(version) for name, version in PIN.findall(lock_text)}


def extra_requirements(requirement: Requirement) -> list[Requirement]:
    """What `requirement`'s extras add (celery[redis] -> kombu[redis] -> redis), read from the
    installed metadata, with markers evaluated for this platform (Linux, as the image)."""
    found: list[Requirement] = []
    for extra in sorted(requirement.extras):
        try:
            declared = requires(requirement.name) or []
        except PackageNotFoundError:
            continue
        for line in declared:
            dependency = Requirement(line)
            marker = dependency.marker
            if marker and "extra" in str(marker) and marker.evaluate({"extra": extra}):
                found.append(dependency)
                found.extend(extra_requirements(dependency))
    return found


def uncovered(pyproject_text: str, lock_text: str) -> list[str]:
    """Each runtime requirement (and what its extras add) that the lock does not pin at a
    version it allows, in words; empty when the lock covers pyproject.toml."""
    project = tomllib.loads(pyproject_text)["project"]
    wanted = [Requirement(line) for line in project["dependencies"]]
    for extra in IMAGE_EXTRAS:
        wanted += [Requirement(line) for line in project["optional-dependencies"][extra]]
    # What extras add is checked by name only: its versions follow the locked parent's, which
    # this venv may not have.
    added = [r for requirement in wanted for r in extra_requirements(requirement)]
    locked = pins(lock_text)
    problems = []
    for requirement, check_version in [(r, True) for r in wanted] + [(r, False) for r in added]:
        name = canonicalize_name(requirement.name)
        if name not in locked:
            problems.append(f"{requirement} is not in the lock")
        elif check_version and not requirement.specifier.contains(locked[name], prereleases=True):
            problems.append(f"{requirement} but the lock has {locked[name]}")
    return problems


def test_the_lock_pins_every_runtime_dependency_of_pyproject():
    assert uncovered((ROOT / "pyproject.toml").read_text(), LOCK.read_text()) == []


def test_the_drift_check_fails_when_pyproject_moves_ahead_of_the_lock():
    pyproject = (ROOT / "pyproject.toml").read_text()
    lock = LOCK.read_text()
    added = pyproject.replace('"tzdata>=2024.1",', '"tzdata>=2024.1",\n    "rich>=13",', 1)
    assert uncovered(added, lock) == ["rich>=13 is not in the lock"]
    raised = pyproject.replace('"waitress>=3.0"', '"waitress>=99"', 1)
    assert uncovered(raised, lock) == [f"waitress>=99 but the lock has {pins(lock)['waitress']}"]
    assert any(
        "psycopg-binary" in p
        for p in uncovered(pyproject, re.sub(r"^psycopg-binary==.*$", "", lock, flags=re.MULTILINE))
    )


def test_the_build_lock_pins_the_build_backend_and_every_pin_has_hashes():
    build_system = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]
    locked = pins(BUILD_LOCK.read_text())
    for line in build_system["requires"]:
        requirement = Requirement(line)
        assert requirement.specifier.contains(locked[canonicalize_name(requirement.name)])
    for path in (LOCK, BUILD_LOCK):
        blocks = re.split(r"\n(?=[A-Za-z0-9])", path.read_text().split("\n", 2)[2])
        assert all("--hash=sha256:" in block for block in blocks if PIN.match(block)), path


# --- the Dockerfile ---------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def dockerfile_stages(text: str) -> tuple[dict[str, str], list[Stage]]:
    """The global ARGs and the stages, each a list of (INSTRUCTION, arguments)."""
    joined = re.sub(r"\\\n", " ", text)
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            stages.append(Stage(base, parts[2] if len(parts) > 2 else None))
        elif not stages and keyword == "ARG":
            name, _, value = rest.partition("=")
            args[name] = value
        elif stages:
            stages[-1].instructions.append((keyword, " ".join(rest.split())))
    return args, stages


def test_the_dockerfile_installs_the_lock_apart_from_the_code_and_runs_as_a_user():
    args, stages = dockerfile_stages((ROOT / "Dockerfile").read_text())
    by_name = {stage.name: stage for stage in stages}
    # The stage that installs the dependencies sees the lock file and nothing else of ours.
    (deps,) = [
        s for s in stages if any("-r /tmp/requirements.lock" in a for _, a in s.instructions)
    ]
    copies = [a for k, a in deps.instructions if k == "COPY"]
    assert copies == ["requirements.lock /tmp/requirements.lock"]
    (install,) = [a for k, a in deps.instructions if k == "RUN"]
    assert "--require-hashes" in install and "--only-binary :all:" in install
    # The final image takes that venv as a layer before anything built from the code.
    final = stages[-1]
    froms = [a for k, a in final.instructions if k == "COPY" and a.startswith("--from=")]
    assert froms[0] == f"--from={deps.name} /opt/digest /opt/digest"
    assert froms[1].startswith(f"--from={by_name['wheel'].name} ")
    users = [a for k, a in final.instructions if k == "USER"]
    assert users and users[-1] not in ("root", "0"), users
    # The lock is made for the image's Python.
    python = re.search(r"python:(\d+\.\d+)\.\d+-", args["PYTHON_IMAGE"])
    assert python, args["PYTHON_IMAGE"]
    assert f"--python-version {python.group(1)} " in (ROOT / "scripts" / "lock").read_text()


def test_the_build_context_leaves_out_env_and_everything_not_copied():
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    assert not any(line.startswith("!") and ".env" in line for line in lines)


# --- the install steps, rehearsed ---------------------------------------------------------------


def pip_env() -> dict[str, str]:
    """The package registry only, as in the image: no config files and no local wheel folders
    of this machine (a local wheel's hash would not be the registry's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIGEST_", "PIP_FIND"))}
    env.pop("PYTHONPATH", None)
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def run(args: list[str], timeout: int = 1200) -> str:
    result = subprocess.run(args, env=pip_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.mark.integration
def test_the_dockerfile_install_steps_work_from_the_locks(tmp_path: Path):
    """The Dockerfile's RUN steps in venvs: the deps stage, the wheel stage, the final one."""
    venv, build = tmp_path / "opt-digest", tmp_path / "build"
    for folder, lock in ((venv, LOCK), (build, BUILD_LOCK)):
        run([sys.executable, "-m", "venv", str(folder)])
        run(
            [
                str(folder / "bin" / "pip"),
                "install",
                "-q",
                "--require-hashes",
                "--only-binary",
                ":all:",
                "-r",
                str(lock),
            ]
        )
    dist = tmp_path / "dist"
    run(
        [
            str(build / "bin" / "pip"),
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(dist),
            str(ROOT),
        ]
    )
    (wheel,) = dist.glob("*.whl")
    run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "--no-index", str(wheel)])
    assert "No broken requirements found" in run([str(venv / "bin" / "pip"), "check"])
    version = run([str(venv / "bin" / "digest"), "--version"])
    assert "0.1.0" in version
    # Flower and the encoder's packages are in the image.
    run([str(venv / "bin" / "python"), "-c", "import flower, onnxruntime, tokenizers"])
