"""compose.yaml cannot be run here (no Docker engine): check its structure instead."""

import yaml

from tests.conftest import ROOT


def test_compose_file_runs_every_part_of_the_service():
    spec = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = spec["services"]
    assert set(services) >= {"redis", "postgres", "web", "worker", "beat", "mailpit"}
    assert services["worker"]["command"][:4] == ["celery", "-A", "workers", "worker"]
    assert services["beat"]["command"][:4] == ["celery", "-A", "workers", "beat"]
    assert services["web"]["command"][:2] == ["digest", "serve"]
    assert "8025:8025" in services["mailpit"]["ports"]
    for name in ("web", "worker", "beat"):
        env = services[name]["environment"]
        assert env["DIGEST_REDIS_URL"] == "redis://redis:6379/0"
        assert env["DIGEST_DATABASE_URL"].startswith("postgresql://")
        assert env["DIGEST_SMTP_URL"] == "smtp://mailpit:1025"
        assert env["DIGEST_ENV"] == "production"
        assert services[name]["build"] == "."
    assert (ROOT / "Dockerfile").exists()
