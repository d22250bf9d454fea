"""Orthanc's configuration: the base file in ``orthanc/`` overlaid with the node's settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ainode.settings import REPO_ROOT, Settings

BASE_CONFIG = REPO_ROOT / "orthanc" / "orthanc.json"
PLUGIN_ENTRY = REPO_ROOT / "plugin" / "entry.py"
PLUGIN_LIBRARIES = ("libOrthancPython.so", "libOrthancDicomWeb.so")


def render_orthanc_config(
    settings: Settings,
    *,
    credentials: tuple[str, str] | None,
    settings_file: Path,
    site_packages: list[str],
) -> dict[str, Any]:
    """The JSON Orthanc reads; ``settings_file`` is the effective settings the plugin loads."""
    config: dict[str, Any] = json.loads(BASE_CONFIG.read_text())
    storage = settings.data_dir / "orthanc" / "storage"
    config.update(
        {
            "Name": settings.node_name,
            "HttpPort": settings.http_port,
            "DicomPort": settings.dicom_port,
            "DicomAet": settings.dicom_aet,
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "RemoteAccessAllowed": settings.http_bind_all,
            "AuthenticationEnabled": credentials is not None,
            "RegisteredUsers": dict([credentials]) if credentials else {},
            "StableAge": settings.stable_age_s,
            "Plugins": [str(settings.orthanc_plugins_dir / lib) for lib in PLUGIN_LIBRARIES],
            "PythonScript": str(PLUGIN_ENTRY),
            "PythonVerbose": settings.orthanc_verbose,
            "DicomModalities": {
                name: [m.aet, m.host, m.port] for name, m in settings.remote_modalities.items()
            },
            "AINode": {"SettingsFile": str(settings_file), "SitePackages": site_packages},
        }
    )
    return config


def write_orthanc_config(settings: Settings, config: dict[str, Any]) -> Path:
    folder = settings.data_dir / "orthanc"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "orthanc.json"
    path.touch(mode=0o600)  # it holds the credentials
    path.write_text(json.dumps(config, indent=2))
    return path
