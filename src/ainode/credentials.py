"""The node's generated Orthanc credentials: made once, kept in the data directory (mode 0600)."""

from __future__ import annotations

import secrets
from pathlib import Path

from ainode.settings import Settings

DEFAULT_USER = "ainode"


def ensure_credentials(path: Path) -> tuple[str, str, bool]:
    """Return ``(user, password, created)``; generate them the first time only."""
    if path.exists():
        user, password = read_credentials(path)
        return user, password, False
    path.parent.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(18)
    path.touch(mode=0o600)
    path.write_text(f"{DEFAULT_USER}:{password}\n")
    return DEFAULT_USER, password, True


def read_credentials(path: Path) -> tuple[str, str]:
    user, sep, password = path.read_text().strip().partition(":")
    if not sep or not user or not password:
        raise ValueError(f"{path} does not hold 'user:password'")
    return user, password


def orthanc_auth(settings: Settings) -> tuple[str, str] | None:
    """Credentials for talking to Orthanc: explicit settings first, then the generated file."""
    if settings.orthanc_username and settings.orthanc_password:
        return settings.orthanc_username, settings.orthanc_password
    if not settings.auth_enabled:
        return None
    if settings.credentials_file.exists():
        return read_credentials(settings.credentials_file)
    return None
