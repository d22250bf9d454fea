"""``ainode up`` with Orthanc's index in a real PostgreSQL (``orthanc_index: postgresql``).

A throwaway PostgreSQL cluster is made with ``initdb`` in a temporary folder and started with
``pg_ctl`` on a free port, as the ``postgres`` user (PostgreSQL refuses to run as root), with
password (SCRAM) authentication over TCP. The node is started by the ``ainode`` command, a series
is pushed and routed, and the index is read back from PostgreSQL itself.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nodeharness import ONNX_RULES, Node, node_settings, settings_env, write_phantom, write_rules

from ainode.credentials import orthanc_auth
from ainode.node.orthanc_config import POSTGRES_INDEX_LIBRARY
from ainode.node.supervisor import Supervisor

AINODE = [sys.executable, "-m", "ainode.cli"]
PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
PG_USER = "postgres"  # the system account of Debian's postgresql package
DB_USER, DB_NAME, DB_PASSWORD = "orthanc", "orthancindex", "pg-Secret-4411-xyz"


@dataclass(frozen=True)
class Cluster:
    folder: Path
    bin_dir: Path
    port: int

    def as_postgres(
        self, *argv: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        command = ["runuser", "-u", PG_USER, "--", *argv]
        return subprocess.run(command, check=True, capture_output=True, text=True, env=env)

    def psql(self, sql: str) -> str:
        env = {**os.environ, "PGPASSWORD": DB_PASSWORD}
        return self.as_postgres(
            str(self.bin_dir / "psql"),
            "-h", "127.0.0.1", "-p", str(self.port), "-U", DB_USER, "-d", DB_NAME,
            "-At", "-c", sql,
            env=env,
        ).stdout.strip()  # fmt: skip


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    assert PG_BIN, "PostgreSQL is not installed (scripts/bootstrap.sh, AINODE_WITH_TEST_TOOLS=1)"
    bin_dir = PG_BIN[-1].parent
    user = pwd.getpwnam(PG_USER)
    folder = Path(tempfile.mkdtemp(prefix="ainode-pg-"))  # /tmp: the postgres user can reach it
    os.chown(folder, user.pw_uid, user.pw_gid)
    (folder / "pw").write_text(DB_PASSWORD + "\n")
    os.chown(folder / "pw", user.pw_uid, user.pw_gid)
    port = node_settings(folder / "unused").redis_port  # a free port from the harness
    data = folder / "data"
    result = Cluster(folder, bin_dir, port)
    result.as_postgres(
        str(bin_dir / "initdb"), "-D", str(data), "-U", DB_USER,
        "--auth=scram-sha-256", f"--pwfile={folder / 'pw'}", "-E", "UTF8",
    )  # fmt: skip
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
    result.as_postgres(
        str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "pg.log"),
        "-w", "start",
    )  # fmt: skip
    try:
        result.as_postgres(
            str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", DB_USER, DB_NAME,
            env={**os.environ, "PGPASSWORD": DB_PASSWORD},
        )  # fmt: skip
        yield result
    finally:
        subprocess.run(
            ["runuser", "-u", PG_USER, "--", str(bin_dir / "pg_ctl"), "-D", str(data),
             "-m", "fast", "-w", "stop"],
            check=False, capture_output=True,
        )  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)


def test_ainode_up_keeps_orthancs_index_in_postgresql(cluster: Cluster, tmp_path: Path) -> None:
    password_file = tmp_path / "pg-password"
    password_file.write_text(DB_PASSWORD + "\n")
    password_file.chmod(0o600)
    settings = node_settings(
        tmp_path / "node",
        routing_rules=write_rules(tmp_path / "rules.yaml", ONNX_RULES),
        auth_enabled=True,
        interactive_enabled=False,
        orthanc_index="postgresql",
        postgresql={
            "host": "127.0.0.1",
            "port": cluster.port,
            "database": DB_NAME,
            "username": DB_USER,
            "password_file": password_file,
        },
    )
    env = settings_env(settings)
    up = subprocess.run(
        [*AINODE, "up", "--detach"], env=env, capture_output=True, text=True, check=False
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        node = Node(settings, Supervisor(settings))  # only for its HTTP helpers
        paths, ids = write_phantom(tmp_path / "series", slices=12, size=32)
        node.storescu(paths)
        job = node.wait_for_run(ids.series_uid, timeout_s=180)
        assert job["state"] == "done", job

        # The index is PostgreSQL's: Orthanc's tables hold the series and its results there,
        # and there is no SQLite index in the data directory.
        series_in_pg = cluster.psql(
            "SELECT count(*) FROM Resources WHERE resourceType = 2"  # 2: series
        )
        assert int(series_in_pg) == len(node.json("/series")) >= 2  # the phantom and its SEG
        assert cluster.psql(
            f"SELECT count(*) FROM MainDicomTags WHERE value = '{ids.series_uid}'"
        ) == "1"  # fmt: skip
        storage = settings.data_dir / "orthanc" / "storage"
        assert not (storage / "index").exists()
        assert node.count_instances() > len(paths)  # the phantom plus the stored results

        config = (settings.data_dir / "orthanc" / "orthanc.json").read_text()
        assert DB_PASSWORD in config and POSTGRES_INDEX_LIBRARY in config
        auth = orthanc_auth(settings)
        assert auth is not None
        assert f"{auth[0]}:{auth[1]}" in up.stdout  # shown once on the terminal, not in a log
        for log in settings.logs_dir.iterdir():
            text = log.read_text(errors="replace")
            assert DB_PASSWORD not in text, log
            assert auth[1] not in text, log
    finally:
        subprocess.run([*AINODE, "down"], env=env, capture_output=True, check=False, timeout=120)


def test_a_missing_postgresql_plugin_stops_ainode_up_with_what_to_install(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    for name in ("libOrthancPython.so", "libOrthancDicomWeb.so"):
        (plugins / name).symlink_to(Path("/usr/share/orthanc/plugins") / name)
    settings = node_settings(
        tmp_path / "node", orthanc_index="postgresql", orthanc_plugins_dir=plugins
    )
    result = subprocess.run(
        [*AINODE, "up"], env=settings_env(settings), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "orthanc-postgresql" in result.stderr, result.stderr
