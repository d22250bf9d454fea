"""Secrets in the settings: read from where the operator put them, never shown back."""

from __future__ import annotations

from pathlib import Path

import pytest
from ainode_plugin.main import config_summary

from ainode.node.orthanc_config import postgres_section
from ainode.settings import PostgresIndex, Settings, redact_url


def test_redact_url_hides_only_the_password() -> None:
    assert redact_url("redis://:s3cret@redis:6379/0") == "redis://:***@redis:6379/0"
    assert redact_url("redis://user:s3cret@host/1") == "redis://user:***@host/1"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_no_password_reaches_the_plugin_log_line_or_a_repr(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        redis_url="redis://:broker-pw-981@redis:6379/0",
        orthanc_password="orthanc-pw-982",
        orthanc_index="postgresql",
        postgresql=PostgresIndex(password="pg-pw-983"),
    )
    shown = config_summary(settings) + repr(settings) + settings.broker_url_redacted
    for secret in ("broker-pw-981", "orthanc-pw-982", "pg-pw-983"):
        assert secret not in shown
    assert "redis://:***@redis:6379/0" in config_summary(settings)


def test_postgres_password_comes_from_its_file(tmp_path: Path) -> None:
    secret = tmp_path / "pg-password"
    secret.write_text("from-the-file\n")
    settings = Settings(data_dir=tmp_path, postgresql={"password_file": secret, "port": 5544})
    section = postgres_section(settings)
    assert section["Password"] == "from-the-file"
    assert section["Port"] == 5544
    assert section["EnableIndex"] is True and section["EnableStorage"] is False


def test_postgres_password_file_that_is_missing_names_the_file(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, postgresql={"password_file": tmp_path / "nope"})
    with pytest.raises(OSError, match=r"password_file .*nope"):
        postgres_section(settings)


def test_postgres_settings_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AINODE_ORTHANC_INDEX", "postgresql")
    monkeypatch.setenv("AINODE_POSTGRESQL__HOST", "/run/postgresql")
    monkeypatch.setenv("AINODE_POSTGRESQL__PASSWORD", "env-pw")
    settings = Settings(data_dir=tmp_path)
    assert settings.orthanc_index == "postgresql"
    assert postgres_section(settings)["Host"] == "/run/postgresql"
    assert postgres_section(settings)["Password"] == "env-pw"
