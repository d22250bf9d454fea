"""The door's files: nginx's configuration (checked by nginx itself), logins, certificate."""

from __future__ import annotations

import base64
import hashlib
import os
import ssl
import stat
import subprocess
from pathlib import Path

import pytest

from ainode.node.door import (
    door_dir,
    ensure_certificate,
    fingerprint,
    htpasswd_line,
    nginx_argv,
    trust_node_certificate,
    write_door_files,
)
from ainode.settings import Settings


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"data_dir": tmp_path / "var", "door_port": 18443}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def _nginx_accepts(settings: Settings, config: Path) -> subprocess.CompletedProcess[str]:
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [*nginx_argv(settings, config), "-t"], capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize(
    ("tls", "login"), [(True, True), (False, False), (True, False), (False, True)]
)
def test_nginx_accepts_the_configuration_in_every_mode(
    tmp_path: Path, tls: bool, login: bool
) -> None:
    settings = _settings(tmp_path, door_tls=tls)
    config = write_door_files(settings, ("ainode", "s3cret") if login else None)
    checked = _nginx_accepts(settings, config)
    assert checked.returncode == 0, checked.stderr
    text = config.read_text()
    assert ("ssl_certificate " in text) is tls
    assert ("auth_basic_user_file" in text) is login
    assert "s3cret" not in text
    assert f"listen {settings.door_port}" in text  # door_bind_all: every interface


def test_the_door_on_loopback_only_when_asked(tmp_path: Path) -> None:
    settings = _settings(tmp_path, door_bind_all=False)
    text = write_door_files(settings, None).read_text()
    assert f"listen 127.0.0.1:{settings.door_port} ssl;" in text


def test_the_password_file_holds_a_salted_hash_only(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    write_door_files(settings, ("ainode", "s3cret"))
    path = door_dir(settings) / "htpasswd"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    user, _, hashed = path.read_text().strip().partition(":")
    assert user == "ainode" and hashed.startswith("{SSHA}") and "s3cret" not in hashed
    raw = base64.b64decode(hashed.removeprefix("{SSHA}"))
    digest, salt = raw[:20], raw[20:]
    assert digest == hashlib.sha1(b"s3cret" + salt, usedforsecurity=False).digest()
    assert htpasswd_line("u", "p", salt=b"12345678") != htpasswd_line("u", "p", salt=b"87654321")


def test_a_self_signed_certificate_is_made_once(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    first = ensure_certificate(settings)
    assert first.created and stat.S_IMODE(first.key.stat().st_mode) == 0o600
    again = ensure_certificate(settings)
    assert not again.created and fingerprint(again.cert) == fingerprint(first.cert)
    text = subprocess.run(
        ["openssl", "x509", "-in", str(first.cert), "-noout", "-text"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "DNS:localhost" in text and "IP Address:127.0.0.1" in text
    # Clients trust it by its file: Python's TLS accepts it as its own anchor.
    context = ssl.create_default_context(cafile=str(first.cert))
    assert context.cert_store_stats()["x509_ca"] == 1


def test_a_configured_certificate_is_used_as_is(tmp_path: Path) -> None:
    made = ensure_certificate(_settings(tmp_path / "made"))
    settings = _settings(tmp_path, door_cert_file=made.cert, door_key_file=made.key)
    used = ensure_certificate(settings)
    assert (used.cert, used.key, used.created) == (made.cert, made.key, False)
    assert not (settings.data_dir / "door").exists()
    with pytest.raises(ValueError, match="both"):
        ensure_certificate(_settings(tmp_path, door_cert_file=made.cert))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ensure_certificate(
            _settings(tmp_path, door_cert_file=tmp_path / "no.pem", door_key_file=made.key)
        )


def test_orthanc_ca_file_joins_the_usual_cas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    made = ensure_certificate(_settings(tmp_path / "node"))
    settings = _settings(tmp_path, orthanc_ca_file=made.cert)
    bundle = trust_node_certificate(settings)
    assert bundle is not None and os.environ["REQUESTS_CA_BUNDLE"] == str(bundle)
    context = ssl.create_default_context(cafile=str(bundle))
    assert context.cert_store_stats()["x509_ca"] > 100  # the usual CAs and the node's own
    assert made.cert.read_text() in bundle.read_text()
    assert trust_node_certificate(_settings(tmp_path)) is None
