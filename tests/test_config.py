import pytest
from pydantic import ValidationError

from digest.config import DEV_SECRET_KEY, Settings


def test_production_refuses_the_default_or_a_short_secret_key(monkeypatch):
    monkeypatch.delenv("DIGEST_SECRET_KEY", raising=False)
    with pytest.raises(ValidationError, match="DIGEST_SECRET_KEY must be set"):
        Settings(env="production")
    with pytest.raises(ValidationError, match="DIGEST_SECRET_KEY must be set"):
        Settings(env="production", secret_key="short")
    assert Settings(env="production", secret_key="x" * 32).secret_key == "x" * 32
    # Unset, the key is never the public one: random, and another in every Settings.
    unset = Settings(env="development")
    assert not unset.secret_key_is_set and len(unset.secret_key) >= 32
    assert unset.secret_key not in (DEV_SECRET_KEY, Settings().secret_key)


def test_settings_come_from_digest_environment_variables(monkeypatch):
    monkeypatch.setenv("DIGEST_DATABASE_URL", "postgresql://u@h/db")
    monkeypatch.setenv("DIGEST_DIGEST_SIZE", "5")
    s = Settings()
    assert (s.database_url, s.digest_size) == ("postgresql://u@h/db", 5)
