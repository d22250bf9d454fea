"""docker/entrypoint.py: what each container runs, from the node's own settings.

The script is loaded from its file (it is not a package); nothing here execs a process: the
functions that build the configuration and the commands are called directly, and ``main`` is
driven only down the paths that stop before ``exec`` (bad environment, health checks).
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import socket
import stat
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from ainode.node.orthanc_config import PLUGIN_ENTRY, PLUGIN_LIBRARIES
from ainode.settings import REPO_ROOT, Settings

from .deployfiles import load_compose

PLUGINS_DIR = Path("/usr/share/orthanc/plugins-available")


def _load_entrypoint() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "ainode_docker_entrypoint", REPO_ROOT / "docker" / "entrypoint.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


entrypoint = _load_entrypoint()


def node_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "orthanc_username": "ainode",
        "orthanc_password": "pw-for-tests",
        "orthanc_plugins_dir": PLUGINS_DIR,
        "orthanc_binary": Path("/usr/local/bin/Orthanc"),
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for key in [k for k in os.environ if k.startswith(("AINODE_", "POSTGRES_"))]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AINODE_DATA_DIR", str(tmp_path / "data"))
    return monkeypatch


# ---------------------------------------------------------------------------- orthanc


def test_orthanc_config_uses_postgres_index_and_the_node_overlay(tmp_path: Path) -> None:
    settings = node_settings(tmp_path)
    environ = {
        "POSTGRES_HOST": "postgres",
        "POSTGRES_PORT": "5433",
        "POSTGRES_DB": "pacsindex",
        "POSTGRES_USER": "orthanc",
        "POSTGRES_PASSWORD": "pg-secret",
    }
    path = entrypoint.prepare_orthanc(settings, environ)

    config = json.loads(path.read_text())
    assert config["PostgreSQL"] == {
        "EnableIndex": True,
        "EnableStorage": False,
        "Host": "postgres",
        "Port": 5433,
        "Database": "pacsindex",
        "Username": "orthanc",
        "Lock": True,
        "Password": "pg-secret",
    }
    assert config["Plugins"] == [
        *(str(PLUGINS_DIR / lib) for lib in PLUGIN_LIBRARIES),
        str(PLUGINS_DIR / "libOrthancPostgreSQLIndex.so"),
    ]
    assert config["AuthenticationEnabled"] is True
    assert config["RegisteredUsers"] == {"ainode": "pw-for-tests"}
    assert config["PythonScript"] == str(PLUGIN_ENTRY)
    assert config["StorageDirectory"] == str(settings.data_dir / "orthanc" / "storage")
    # The base file's tuning survives the overlay.
    assert config["MaximumPduLength"] == 131072

    # The plugin reads back the same settings from the file the configuration names.
    settings_file = Path(config["AINode"]["SettingsFile"])
    effective = settings.model_copy(
        update={"orthanc_index": "postgresql", "postgresql": entrypoint.postgres_index(environ)}
    )
    assert Settings(**json.loads(settings_file.read_text())) == effective
    for secret_file in (path, settings_file):
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600, secret_file
    assert config["AINode"]["SitePackages"] and all(
        Path(p).is_dir() for p in config["AINode"]["SitePackages"]
    )


def test_without_postgres_host_orthanc_keeps_its_sqlite_index(tmp_path: Path) -> None:
    path = entrypoint.prepare_orthanc(node_settings(tmp_path), {})
    config = json.loads(path.read_text())
    assert "PostgreSQL" not in config
    assert not any("PostgreSQL" in plugin for plugin in config["Plugins"])


def test_postgres_host_without_password_is_refused(tmp_path: Path) -> None:
    with pytest.raises(entrypoint.DeploymentError, match="POSTGRES_PASSWORD"):
        entrypoint.prepare_orthanc(node_settings(tmp_path), {"POSTGRES_HOST": "postgres"})
    with pytest.raises(entrypoint.DeploymentError, match="POSTGRES_PORT"):
        entrypoint.postgres_index(
            {"POSTGRES_HOST": "db", "POSTGRES_PASSWORD": "x", "POSTGRES_PORT": "five"}
        )


def test_auth_without_given_credentials_is_refused(tmp_path: Path) -> None:
    settings = node_settings(tmp_path, orthanc_username=None, orthanc_password=None)
    with pytest.raises(entrypoint.DeploymentError, match="AINODE_ORTHANC_PASSWORD"):
        entrypoint.prepare_orthanc(settings, {})
    assert not (settings.data_dir / "orthanc" / "orthanc.json").exists()


def test_auth_off_registers_no_user(tmp_path: Path) -> None:
    settings = node_settings(
        tmp_path, auth_enabled=False, orthanc_username=None, orthanc_password=None
    )
    config = json.loads(entrypoint.prepare_orthanc(settings, {}).read_text())
    assert config["AuthenticationEnabled"] is False and config["RegisteredUsers"] == {}


def test_main_reports_a_bad_environment_instead_of_starting(
    clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert entrypoint.main(["orthanc"]) == 2  # auth on, no credentials given
    assert "AINODE_ORTHANC_USERNAME" in caplog.text
    clean_env.setenv("AINODE_HTTP_PORT", "not-a-port")
    assert entrypoint.main(["worker"]) == 2
    assert "http_port" in caplog.text


def test_orthanc_command_runs_the_settings_binary_on_the_written_config(tmp_path: Path) -> None:
    settings = node_settings(tmp_path, orthanc_verbose=True)
    config = tmp_path / "orthanc.json"
    assert entrypoint.orthanc_argv(settings, config) == [
        "/usr/local/bin/Orthanc",
        "--verbose",
        str(config),
    ]


# ---------------------------------------------------------------------------- worker


def test_worker_command_follows_the_settings(tmp_path: Path) -> None:
    settings = node_settings(
        tmp_path, worker_queues=["ainode.gpu.high", "ainode.high"], worker_concurrency=2
    )
    argv = entrypoint.worker_argv(settings, "c0ffee")
    assert argv[1:6] == ["-m", "celery", "-A", "ainode_worker.celery_app", "worker"]
    options = dict(zip(argv[6::2], argv[7::2], strict=False))
    assert options["--queues"] == "ainode.gpu.high,ainode.high"
    assert options["--concurrency"] == "2"
    assert options["--hostname"] == "worker@c0ffee"


def test_a_delivery_worker_reserves_deliveries_ahead_and_an_inference_worker_does_not(
    tmp_path: Path,
) -> None:
    """Reserved deliveries are the ones whose leases the delivery worker keeps alive."""
    delivery = node_settings(tmp_path, worker_queues=["ainode.cpu.delivery"])
    options = entrypoint.worker_argv(delivery, "c0ffee")
    assert options[options.index("--prefetch-multiplier") + 1] == "50"
    assert "--prefetch-multiplier" not in entrypoint.worker_argv(node_settings(tmp_path), "c0ffee")


def test_compose_health_check_pings_the_name_the_worker_takes(tmp_path: Path) -> None:
    hostname_option = entrypoint.worker_argv(node_settings(tmp_path), "$HOSTNAME")
    name = hostname_option[hostname_option.index("--hostname") + 1]
    compose = load_compose()
    check = " ".join(compose["services"]["worker"]["healthcheck"]["test"])
    assert f"--destination {name.replace('$', '$$')} " in check


# ---------------------------------------------------------------------------- health


class _FakeOrthanc(BaseHTTPRequestHandler):
    """Answers GET /ai/health like the plugin, behind HTTP Basic auth."""

    expected = "Basic " + base64.b64encode(b"ainode:pw-for-tests").decode()

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != self.expected:
            self.send_response(401)
        elif self.path == "/ai/health":
            self.send_response(200)
        else:
            self.send_response(404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    server = HTTPServer(("127.0.0.1", 0), _FakeOrthanc)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_health_passes_when_orthanc_answers_with_the_credentials(
    tmp_path: Path, http_port: int
) -> None:
    assert entrypoint.check_orthanc(node_settings(tmp_path, http_port=http_port)) is None
    wrong = node_settings(tmp_path, http_port=http_port, orthanc_password="wrong")
    assert "401" in (entrypoint.check_orthanc(wrong) or "")


def test_health_fails_when_orthanc_is_down(
    clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clean_env.setenv("AINODE_HTTP_PORT", str(_closed_port()))
    clean_env.setenv("AINODE_ORTHANC_USERNAME", "ainode")
    clean_env.setenv("AINODE_ORTHANC_PASSWORD", "pw-for-tests")
    assert entrypoint.main(["health"]) == 1
    assert "does not answer" in caplog.text
