"""Entry point of the node's container images: Orthanc with the plugin, a Celery worker, health.

Natively, ``ainode up`` (``ainode.node.supervisor``) prepares every part and starts it. In
containers each part runs alone, so this script does for one part what the supervisor does before
starting it: build the settings (``AINODE_*`` variables, ``configs/settings.yaml``), render
Orthanc's configuration with the same ``render_orthanc_config``, then replace itself with the
part's process, which becomes PID 1 and receives Docker's stop signal directly.

Usage (the images' commands)::

    python docker/entrypoint.py orthanc   # render <data_dir>/orthanc/orthanc.json, exec Orthanc
    python docker/entrypoint.py worker    # exec the Celery worker with the settings' queues
    python docker/entrypoint.py health    # exit 0 when Orthanc answers /ai/health
    python docker/entrypoint.py door      # write nginx.conf (and a certificate), exec nginx
    python docker/entrypoint.py door-health  # exit 0 when /ai/health answers through the door
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic import ValidationError

from ainode.credentials import orthanc_auth
from ainode.node.commands import orthanc_argv, worker_argv
from ainode.node.door import door_verify, nginx_argv, trust_node_certificate, write_door_files
from ainode.node.health import probe_http
from ainode.node.orthanc_config import render_orthanc_config, write_orthanc_config
from ainode.settings import PostgresIndex, Settings

log = logging.getLogger("ainode.entrypoint")


class DeploymentError(RuntimeError):
    """The container's environment cannot run this part; the message says what to set."""


def postgres_index(environ: Mapping[str, str]) -> PostgresIndex | None:
    """Read ``POSTGRES_HOST``/``_PORT``/``_DB``/``_USER``/``_PASSWORD``; no host: SQLite.

    These are the names the official ``postgres`` image reads, so one ``.env`` feeds both; they
    become the node's ``postgresql`` settings, rendered by the same code as ``ainode up``'s.
    """
    host = environ.get("POSTGRES_HOST", "").strip()
    if not host:
        return None
    password = environ.get("POSTGRES_PASSWORD", "")
    if not password:
        raise DeploymentError(
            f"POSTGRES_HOST is {host!r} but POSTGRES_PASSWORD is empty: set it in .env"
        )
    port_text = environ.get("POSTGRES_PORT", "5432")
    try:
        port = int(port_text)
    except ValueError as error:
        raise DeploymentError(f"POSTGRES_PORT must be a number, not {port_text!r}") from error
    return PostgresIndex(
        host=host,
        port=port,
        database=environ.get("POSTGRES_DB", "orthanc"),
        username=environ.get("POSTGRES_USER", "orthanc"),
        password=password,
    )


def orthanc_credentials(settings: Settings) -> tuple[str, str] | None:
    """The HTTP user Orthanc registers; in containers it must be given, never generated.

    Natively the node generates credentials into its data directory, but workers in other
    containers (or on other machines) cannot read that file: they get the same pair from the
    environment, so Orthanc must use exactly that pair.
    """
    if not settings.auth_enabled:
        return None
    if not (settings.orthanc_username and settings.orthanc_password):
        raise DeploymentError(
            "authentication is on but AINODE_ORTHANC_USERNAME and AINODE_ORTHANC_PASSWORD are "
            "not both set (docker-compose.yml takes them from ORTHANC_USERNAME and "
            "ORTHANC_PASSWORD in .env)"
        )
    return settings.orthanc_username, settings.orthanc_password


def prepare_orthanc(settings: Settings, environ: Mapping[str, str]) -> Path:
    """Write the plugin's settings file and Orthanc's configuration; return the latter's path."""
    index = postgres_index(environ)
    if index is not None:
        settings = settings.model_copy(update={"orthanc_index": "postgresql", "postgresql": index})
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    settings_file = settings.run_dir / "settings.json"
    settings_file.touch(mode=0o600)  # it holds the Orthanc password
    settings_file.write_text(settings.model_dump_json(indent=2))
    config = render_orthanc_config(
        settings,
        credentials=orthanc_credentials(settings),
        settings_file=settings_file,
        site_packages=[sysconfig.get_paths()["purelib"]],
    )
    return write_orthanc_config(settings, config)


def check_orthanc(settings: Settings) -> str | None:
    """None when Orthanc answers the plugin's health route, else the reason."""
    return probe_http(f"{settings.http_url}/ai/health", orthanc_auth(settings), timeout_s=5.0)


def check_door(settings: Settings) -> str | None:
    """None when Orthanc's health route answers through the door, else the reason."""
    return probe_http(
        f"{settings.door_url}/ai/health",
        orthanc_auth(settings),
        timeout_s=5.0,
        verify=door_verify(settings),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start one part of the AI node in a container.")
    parser.add_argument("part", choices=["orthanc", "worker", "health", "door", "door-health"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings()
        if args.part in ("health", "door-health"):
            reason = check_orthanc(settings) if args.part == "health" else check_door(settings)
            if reason is not None:
                log.error("%s", reason)
                return 1
            return 0
        if args.part == "orthanc":
            command = orthanc_argv(settings, prepare_orthanc(settings, os.environ))
        elif args.part == "door":
            config = write_door_files(settings, orthanc_credentials(settings))
            command = nginx_argv(settings, config)
        else:
            trust_node_certificate(settings)  # orthanc_ca_file: a node's door over HTTPS
            command = worker_argv(settings, socket.gethostname())
        log.info("starting the %s: %s", args.part, " ".join(command))
        os.execv(command[0], command)  # noqa: S606 - the part replaces this process (PID 1)
    except (DeploymentError, ValidationError, OSError) as error:
        log.error("cannot start the %s: %s", args.part, error)
        return 2


if __name__ == "__main__":
    sys.exit(main())
