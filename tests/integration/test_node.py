"""The foundation: a real node starts, reports its health, ingests DICOM and stops cleanly."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from nodeharness import Node, node_settings, settings_env, start_node, wait_for
from pydicom import dcmread

from ainode.node.door import fingerprint
from ainode.node.health import collect_status
from ainode.phantoms import Geometry, SeriesIds, make_phantom, write_series

pytestmark = pytest.mark.integration

AINODE = [sys.executable, "-m", "ainode.cli"]


def test_every_part_reports_healthy(node: Node) -> None:
    status = collect_status(node.settings)
    assert status.healthy, status.to_json()
    assert set(status.parts) == {"redis", "orthanc", "plugin", "worker", "interactive", "door"}
    health = node.json("/ai/health")
    assert health["orthanc"]["healthy"] and health["broker"]["healthy"]
    assert health["worker"]["healthy"], health
    assert health["worker"]["workers"], "the worker must be seen through Celery"


def test_plugin_runs_inside_orthanc_without_torch(node: Node) -> None:
    maps = Path(f"/proc/{node.pid('orthanc')}/maps").read_text()
    assert "libOrthancPython" in maps, "the Python plugin is loaded in Orthanc"
    assert "libtorch" not in maps, "the plugin must not import torch"
    log = (node.settings.logs_dir / "orthanc.log").read_text()
    assert "AI node plugin" in log and "auth=OFF" in log


def test_storescu_series_arrives_complete(node: Node, phantom_series: list[Path]) -> None:
    before = node.count_instances()
    node.storescu(phantom_series)
    assert node.count_instances() == before + len(phantom_series)


def test_stow_rs_series_arrives_complete(node: Node, tmp_path: Path) -> None:
    ids = SeriesIds()
    paths = write_series(make_phantom(Geometry(shape=(12, 32, 32)), seed=5), tmp_path / "s", ids)
    node.stow(paths)
    series = node.dicomweb().search_for_series(search_filters={"SeriesInstanceUID": ids.series_uid})
    assert len(series) == 1
    assert series[0]["00201209"]["Value"] == [len(paths)]  # NumberOfSeriesRelatedInstances


def test_ainode_push_sends_a_folder_and_skips_non_dicom(
    node: Node, phantom_series: list[Path]
) -> None:
    folder = phantom_series[0].parent
    (folder / "README.txt").write_text("not DICOM")
    before = node.count_instances()
    result = subprocess.run(
        [*AINODE, "push", str(folder)],
        env=settings_env(node.settings),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"sent {len(phantom_series)}, failed 0, skipped 1" in result.stdout
    assert "pushing 24/24" in result.stderr  # progress
    assert node.count_instances() == before + len(phantom_series)


def test_ainode_push_reports_a_missing_path(node: Node, tmp_path: Path) -> None:
    result = subprocess.run(
        [*AINODE, "push", str(tmp_path / "nothing-here")],
        env=settings_env(node.settings),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "does not exist" in result.stderr


def test_cli_up_detach_status_down(tmp_path: Path) -> None:
    settings = node_settings(tmp_path / "var")
    env = settings_env(settings)
    up = subprocess.run(
        [*AINODE, "up", "--detach"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        status = subprocess.run(
            [*AINODE, "status", "--json"], env=env, capture_output=True, text=True, check=False
        )
        data = json.loads(status.stdout)
        assert status.returncode == 0 and data["healthy"], status.stdout
        assert data["http_url"] == settings.http_url
        assert data["url"] == settings.door_url and data["url"].startswith("https://")
        fingerprint_line = f"SHA-256 fingerprint {fingerprint(settings.door_cert_path)}"
        assert fingerprint_line in up.stdout, up.stdout
        assert data["dicom_port"] == settings.dicom_port and data["dicom_aet"] == "AINODE"
        assert {p: v["healthy"] for p, v in data["parts"].items()} == {
            "redis": True,
            "orthanc": True,
            "plugin": True,
            "worker": True,
            "interactive": True,
            "door": True,
        }
    finally:
        down = subprocess.run(
            [*AINODE, "down"], env=env, capture_output=True, text=True, timeout=120, check=False
        )
    assert down.returncode == 0 and "stopped" in down.stdout
    after = subprocess.run(
        [*AINODE, "status", "--json"], env=env, capture_output=True, text=True, check=False
    )
    data = json.loads(after.stdout)
    assert after.returncode == 1 and not data["healthy"]
    assert "does not answer" in data["parts"]["orthanc"]["detail"]


def test_foreground_up_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    settings = node_settings(tmp_path / "var")
    process = subprocess.Popen(
        [*AINODE, "up"],
        env=settings_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: collect_status(settings).healthy, 180, 0.5, "the node to be healthy")
        pids = [int(p) for p in (settings.run_dir / "supervisor.pid").read_text().split()]
        children = subprocess.run(
            ["pgrep", "-P", str(pids[0])], capture_output=True, text=True, check=False
        ).stdout.split()
        assert len(children) == 6  # redis, orthanc, worker, delivery, interactive, door
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    for child in children:
        assert not Path(f"/proc/{child}").exists(), f"process {child} outlived the node"
    assert not (settings.run_dir / "supervisor.pid").exists()


def test_auth_is_on_by_default_with_generated_credentials(tmp_path: Path) -> None:
    node = start_node(tmp_path / "var", auth_enabled=True)
    try:
        credentials = node.settings.credentials_file
        assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
        user, password = credentials.read_text().strip().split(":")
        anonymous = requests.get(f"{node.url}/ai/health", timeout=10)
        assert anonymous.status_code == 401
        assert (
            requests.get(f"{node.url}/ai/health", auth=(user, "wrong"), timeout=10).status_code
            == 401
        )
        assert requests.get(f"{node.url}/ai/health", auth=(user, password), timeout=10).ok
        creds = subprocess.run(
            [*AINODE, "creds"],
            env=settings_env(node.settings),
            capture_output=True,
            text=True,
            check=True,
        )
        assert creds.stdout.strip() == f"{user}:{password}"
        assert password not in (node.settings.logs_dir / "orthanc.log").read_text()
    finally:
        node.stop()


def test_settings_file_and_environment_override_defaults(tmp_path: Path) -> None:
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text("dicom_aet: FROMFILE\nhttp_port: 9001\n")
    code = (
        "from ainode.settings import Settings; s = Settings(); "
        "print(s.dicom_aet, s.http_port, s.dicom_port)"
    )
    env = {**os.environ, "AINODE_SETTINGS": str(settings_file), "AINODE_HTTP_PORT": "9002"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["FROMFILE", "9002", "4242"]


def test_a_second_node_on_the_same_data_directory_is_refused(node: Node) -> None:
    result = subprocess.run(
        [*AINODE, "up"],
        env=settings_env(node.settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "already running" in result.stderr


@pytest.mark.parametrize(
    ("environment", "settings_text", "expected"),
    [
        ({"AINODE_HTTP_PORT": "99999"}, None, "invalid setting http_port (AINODE_HTTP_PORT"),
        ({"AINODE_DICOM_AET": "lower case"}, None, "invalid setting dicom_aet"),
        ({}, "http_port: [\n", "is not valid YAML"),
        ({}, "- just\n- a list\n", "must map setting: value"),
        ({"AINODE_SETTINGS": "/nonexistent/settings.yaml"}, None, "which does not exist"),
    ],
)
def test_wrong_settings_stop_up_with_one_line_naming_them(
    tmp_path: Path, environment: dict[str, str], settings_text: str | None, expected: str
) -> None:
    env = {**os.environ, "AINODE_DATA_DIR": str(tmp_path / "var"), **environment}
    if settings_text is not None:
        (tmp_path / "settings.yaml").write_text(settings_text)
        env["AINODE_SETTINGS"] = str(tmp_path / "settings.yaml")
    result = subprocess.run(
        [*AINODE, "up"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert not (tmp_path / "var").exists(), "nothing may start on wrong settings"


def test_node_starts_and_stops_cleanly_twice_on_one_data_directory(
    tmp_path: Path, phantom_series: list[Path]
) -> None:
    data_dir = tmp_path / "var"
    first = start_node(data_dir)
    first.storescu(phantom_series)
    settings = first.settings
    first.stop()
    second = start_node(
        data_dir,
        http_port=settings.http_port,
        dicom_port=settings.dicom_port,
        redis_port=settings.redis_port,
    )
    try:
        assert collect_status(second.settings).healthy
        # The series survives the restart whole (the node may meanwhile have added its results).
        series_uid = dcmread(phantom_series[0]).SeriesInstanceUID
        series = second.json(f"/series/{second.lookup(series_uid)}")
        assert len(series["Instances"]) == len(phantom_series), "storage survives a restart"
    finally:
        second.stop()
    for name in ("orthanc", "redis", "worker", "delivery", "interactive"):
        assert not Path(f"/proc/{second.pid(name)}").exists()


def test_health_reflects_a_stopped_worker_and_a_stopped_redis(fresh_node: Node) -> None:
    services = {s.name: s for s in fresh_node.supervisor.services}
    services["worker"].stop()
    health = wait_for(
        lambda: (h := fresh_node.json("/ai/health")) and not h["worker"]["healthy"] and h,
        15,
        0.5,
        "the worker to be seen down",
    )
    assert health["broker"]["healthy"]
    # The delivery worker still answers, but runs no job.
    assert health["worker"]["detail"].startswith("no worker answered"), health["worker"]
    services["redis"].stop()
    health = fresh_node.json("/ai/health")
    assert not health["broker"]["healthy"]
    assert "does not answer" in health["broker"]["detail"]
    assert not health["worker"]["healthy"]
    assert health["orthanc"]["healthy"], "Orthanc keeps serving without broker and worker"


def test_ainode_sample_writes_a_series_the_node_accepts(node: Node, tmp_path: Path) -> None:
    folder = tmp_path / "sample"
    env = settings_env(node.settings)
    made = subprocess.run(
        [*AINODE, "sample", str(folder), "--shape", "12", "32", "32"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "12 files" in made.stdout
    before = node.count_instances()
    node.storescu([folder])
    assert node.count_instances() == before + 12
