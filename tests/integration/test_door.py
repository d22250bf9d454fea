"""The node's front door (nginx), on a real node with authentication on, over HTTPS.

What a client sees at the door: one origin for Orthanc, the plugin and the interactive service;
the node's login on every route (and the interactive service refusing calls that skip the door);
query strings and bodies reaching the interactive service intact; 413 for oversize bodies; slow
clients that cannot starve the node; MONAI Label's own Python client working unchanged.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import requests
import SimpleITK as sitk
from ainode_worker.interactive import create_app
from ainode_worker.interactive.auth import TOKEN_PATHS
from ainode_worker.interactive.config import InteractiveConfig
from nodeharness import Node, settings_env, start_node, wait_for, write_rules
from prometheus_client.parser import text_string_to_metric_families
from pydicom import dcmread
from scipy import ndimage as ndi
from test_security import registered_routes

from ainode.node.door import fingerprint
from ainode.phantoms import Geometry, Phantom, SeriesIds, Sphere, make_phantom, write_series
from ainode.settings import REPO_ROOT

pytestmark = pytest.mark.integration

AINODE = [sys.executable, "-m", "ainode.cli"]
MONAILABEL_WHEELS = sorted((REPO_ROOT / "build" / "monailabel").glob("monailabel-0.8.5-*.whl"))
METHODS = ("GET", "POST", "PUT", "DELETE")

# A sample of Orthanc's own REST API, Explorer, DICOMweb and the viewer: Orthanc checks the
# login before it routes, so these stand for the rest of its API.
ORTHANC_ROUTES = (
    ("GET", "/system"),
    ("GET", "/statistics"),
    ("GET", "/patients"),
    ("GET", "/studies"),
    ("GET", "/series"),
    ("GET", "/instances"),
    ("POST", "/instances"),
    ("GET", "/changes"),
    ("GET", "/jobs"),
    ("GET", "/modalities"),
    ("GET", "/peers"),
    ("GET", "/plugins"),
    ("POST", "/tools/find"),
    ("POST", "/tools/lookup"),
    ("GET", "/app/explorer.html"),
    ("GET", "/dicom-web/studies"),
    ("POST", "/dicom-web/studies"),
    ("GET", "/wado"),
    ("GET", "/ohif/"),
)


@dataclass
class StoredSeries:
    phantom: Phantom
    uid: str

    def click(self) -> tuple[int, int, int]:
        """(x, y, z) of the sphere's voxel farthest from its border: where a user clicks."""
        depth = ndi.distance_transform_edt(self.phantom.labels == 1)
        z, y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
        return int(x), int(y), int(z)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return float(2.0 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.fixture(scope="module")
def door_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    folder = tmp_path_factory.mktemp("door")
    rules = write_rules(folder / "rules.yaml", "version: 1\nmode: first-match\nrules: []\n")
    node = start_node(folder / "node", auth_enabled=True, worker_enabled=False, routing_rules=rules)
    yield node
    node.stop()


@pytest.fixture(scope="module")
def sphere(door_node: Node, tmp_path_factory: pytest.TempPathFactory) -> StoredSeries:
    """One bright sphere in a CT phantom, stored in the node by C-STORE."""
    geometry = Geometry(shape=(32, 64, 64), spacing=(2.0, 1.0, 1.0))
    phantom = make_phantom(
        geometry, seed=5, shapes=[Sphere((32.0, 30.0, 34.0), 14.0, 250.0)], noise_hu=20.0
    )
    ids = SeriesIds()
    paths = write_series(phantom, tmp_path_factory.mktemp("sphere"), ids)
    door_node.storescu(paths)
    return StoredSeries(phantom, ids.series_uid)


# --- one origin, HTTPS, the node's certificate ----------------------------------------------


def test_one_https_origin_serves_orthanc_the_plugin_and_the_interactive_service(
    door_node: Node,
) -> None:
    assert door_node.door_url.startswith("https://")
    door = door_node.door_session()
    for path, expect in (
        ("/app/explorer.html", "text/html"),
        ("/dicom-web/studies", "application/dicom+json"),
        ("/ai/health", "application/json"),
        ("/ai/jobs", "application/json"),
        ("/ai/interactive/health", "application/json"),
        ("/ai/monailabel/info/", "application/json"),
    ):
        answer = door.get(door_node.door_url + path, timeout=30)
        assert answer.status_code == 200, (path, answer.status_code, answer.text[:200])
        assert answer.headers["content-type"].startswith(expect), (path, answer.headers)
    assert door.get(door_node.door_url + "/ai/interactive/health", timeout=30).json()["models"]


def test_the_door_presents_the_node_certificate_and_refuses_plain_http(door_node: Node) -> None:
    settings = door_node.settings
    presented = ssl.get_server_certificate(("127.0.0.1", settings.door_port))
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(presented)).hexdigest().upper()
    assert ":".join(digest[i : i + 2] for i in range(0, 64, 2)) == fingerprint(
        settings.door_cert_path
    )
    assert (settings.door_key_path.stat().st_mode & 0o077) == 0
    # The system's CAs do not vouch for a self-signed certificate: only the node's file does.
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(door_node.door_url + "/ai/health", timeout=30, verify=True)
    plain = requests.get(f"http://127.0.0.1:{settings.door_port}/ai/health", timeout=30)
    assert plain.status_code == 400  # nginx: "plain HTTP request was sent to HTTPS port"


def test_the_door_logs_no_query_strings(door_node: Node) -> None:
    """QIDO-RS searches carry patient names, IDs and birth dates: none of it reaches a log."""
    door = door_node.door_session()
    search = {"PatientName": "DOORLOG^SECRET", "PatientID": "DOORLOG-4711"}
    answer = door.get(door_node.door_url + "/dicom-web/studies", params=search, timeout=60)
    assert answer.status_code in (200, 204)
    access_log = door_node.settings.logs_dir / "door-access.log"
    logged = wait_for(
        lambda: "/dicom-web/studies" in access_log.read_text() and access_log.read_text(),
        30,
        0.2,
        "the request in the door's access log",
    )
    assert "DOORLOG" not in logged


def test_status_reports_the_door_url_and_its_health(door_node: Node) -> None:
    result = subprocess.run(
        [*AINODE, "status", "--json"],
        env=settings_env(door_node.settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    status = json.loads(result.stdout)
    assert status["url"] == door_node.door_url
    assert status["parts"]["door"]["healthy"], status["parts"]["door"]
    assert door_node.door_url in status["parts"]["door"]["detail"]


def test_only_the_door_listens_beyond_loopback_when_asked(door_node: Node) -> None:
    """The interactive service binds loopback; Orthanc refuses other hosts (it cannot bind one)."""
    listening = subprocess.run(
        ["ss", "-ltnH"], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    local = [line.split()[3] for line in listening if line.strip()]
    interactive = [a for a in local if a.endswith(f":{door_node.settings.interactive_port}")]
    assert interactive == [f"127.0.0.1:{door_node.settings.interactive_port}"]
    door = [a for a in local if a.endswith(f":{door_node.settings.door_port}")]
    assert door == [f"127.0.0.1:{door_node.settings.door_port}"]  # the harness: door_bind_all off
    config = json.loads((door_node.settings.data_dir / "orthanc" / "orthanc.json").read_text())
    assert config["RemoteAccessAllowed"] is False


# --- one login ------------------------------------------------------------------------------


def _interactive_routes() -> list[tuple[str, str]]:
    """Every (method, path) the interactive service's app declares, parameters filled in.

    Its API from its OpenAPI document (routers included), plus the documentation pages.
    """
    app = create_app(InteractiveConfig(store_accepted=False))
    found = [
        (method.upper(), re.sub(r"\{[^}]+\}", "s1", path))
        for path, operations in app.openapi()["paths"].items()
        for method in operations
        if method.upper() in METHODS
    ]
    pages = [getattr(route, "path", "") for route in app.routes]
    found += [("GET", path) for path in pages if path in ("/docs", "/redoc", "/openapi.json")]
    return found


def test_every_route_behind_the_door_refuses_calls_without_the_login(
    door_node: Node, tmp_path: Path
) -> None:
    plugin = [
        (method, case.path)
        for case in registered_routes(door_node, tmp_path / "plugin")
        for method in case.methods
    ]
    interactive = _interactive_routes()
    assert {("POST", "/segment"), ("POST", "/monailabel/infer/s1")} <= set(interactive)
    assert len(plugin) >= 20 and len(interactive) >= 8
    door_url, orthanc_url = door_node.door_url, door_node.url
    service_url = door_node.settings.interactive_url
    # MONAI Label's login routes are open by design (tested below); everything else is not.
    logins = [(m, p) for m, p in interactive if p in TOKEN_PATHS]
    assert {p for _, p in logins} == set(TOKEN_PATHS)
    guarded = [(m, p) for m, p in interactive if p not in TOKEN_PATHS]
    calls = [
        *((m, door_url + p) for m, p in (*ORTHANC_ROUTES, *plugin)),
        *((m, orthanc_url + p) for m, p in (*ORTHANC_ROUTES, *plugin)),
        *((m, door_url + "/ai/interactive" + p) for m, p in interactive),
        *((m, door_url + "/ai" + p) for m, p in guarded if p.startswith("/monailabel")),
        *((m, service_url + p) for m, p in guarded),
    ]
    anonymous = door_node.door_session(authenticated=False)
    wrong = door_node.door_session(authenticated=False)
    wrong.auth = ("ainode", "not-the-password")
    opened = []
    for method, url in calls:
        for session in (anonymous, wrong):
            answer = session.request(method, url, timeout=60)
            if answer.status_code != 401:
                opened.append(f"{method} {url}: {answer.status_code}")
    assert not opened, "answered without the login:\n" + "\n".join(opened)
    # The same calls with the login get past it (so a 401 above means "no login").
    door = door_node.door_session()
    for method, url in calls:
        if method == "GET":
            assert door.get(url, timeout=60).status_code != 401, url


# --- the interactive service through the door -----------------------------------------------


def test_segment_and_accept_with_their_query_options_through_the_door(
    door_node: Node, sphere: StoredSeries, tmp_path: Path
) -> None:
    door = door_node.door_session()
    x, y, z = sphere.click()
    answer = door.post(
        door_node.door_url + "/ai/interactive/segment?format=nifti",
        json={"series": sphere.uid, "points": [{"x": x, "y": y, "z": z, "label": 1}]},
        timeout=300,
    )
    assert answer.status_code == 200, answer.text[:300]
    assert answer.headers["content-type"] == "application/gzip"
    session = answer.headers["x-session"]
    assert json.loads(answer.headers["x-timings"])["total_ms"] >= 0
    path = tmp_path / "mask.nii.gz"
    path.write_bytes(answer.content)
    image: Any = nib.load(path)
    mask = np.asarray(image.dataobj).transpose(2, 1, 0)
    assert mask.shape == sphere.phantom.labels.shape
    assert dice(mask > 0, sphere.phantom.labels == 1) >= 0.85

    seg = door.post(
        door_node.door_url + f"/ai/interactive/sessions/{session}/accept?format=dicom",
        json={"store": True},
        timeout=300,
    )
    assert seg.status_code == 200, seg.text[:300]
    assert seg.headers["content-type"] == "application/dicom"
    dataset = dcmread(io.BytesIO(seg.content))
    assert dataset.Modality == "SEG"
    assert dataset.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    stored = door.post(
        door_node.door_url + "/tools/lookup", data=str(dataset.SOPInstanceUID), timeout=60
    )
    assert [r["Type"] for r in stored.json()] == ["Instance"]  # stored into Orthanc as well


_Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _scrape(door: requests.Session, url: str) -> _Samples:
    answer = door.get(url, timeout=60)
    assert answer.status_code == 200, answer.text[:300]
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def test_clicks_through_the_door_are_counted_by_the_service(
    door_node: Node, sphere: StoredSeries
) -> None:
    """Clicks through the door never pass the plugin: the service counts them itself, at a
    route behind the node's login like its others (the login test above enumerates it)."""
    door = door_node.door_session()
    metrics_url = door_node.door_url + "/ai/interactive/metrics"
    plugin_url = door_node.door_url + "/ai/metrics"

    before = _scrape(door, metrics_url)
    plugin_before = _scrape(door, plugin_url)
    x, y, z = sphere.click()
    click = {"x": x, "y": y, "z": z, "label": 1}
    first = door.post(
        door_node.door_url + "/ai/interactive/segment",
        json={"series": sphere.uid, "model": "regiongrow", "points": [click]},
        timeout=300,
    )
    assert first.status_code == 200, first.text[:300]
    session = first.json()["session"]
    assert first.json()["voxels"] > 0
    for _ in range(2):
        nxt = door.post(
            door_node.door_url + "/ai/interactive/segment",
            json={"session": session, "model": "regiongrow", "points": [click]},
            timeout=300,
        )
        assert nxt.status_code == 200, nxt.text[:300]
    refused = door.post(
        door_node.door_url + "/ai/interactive/segment",
        json={"series": sphere.uid, "model": "no-such-model", "points": [click]},
        timeout=60,
    )
    assert refused.status_code == 404, refused.text[:300]
    after = _scrape(door, metrics_url)

    def added(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    clicks = "ainode_interactive_click_seconds_count"
    assert added(clicks, model="regiongrow", click="first") == 1
    assert added(clicks, model="regiongrow", click="next") == 2
    assert added("ainode_interactive_click_seconds_sum", model="regiongrow", click="next") > 0
    inf = {"model": "regiongrow", "click": "next", "le": "+Inf"}
    assert added("ainode_interactive_click_seconds_bucket", **inf) == 2
    errors = "ainode_interactive_click_errors_total"
    assert added(errors, model="unknown", error="UnknownModelError") == 1
    assert added(errors, model="regiongrow", error="UnknownModelError") == 0

    assert after[("ainode_interactive_sessions", ())] >= 1
    assert after[("ainode_interactive_series", (("state", "ready"),))] >= 1
    voxels = int(np.prod(sphere.phantom.labels.shape))
    assert after[("ainode_interactive_series_bytes", ())] >= voxels  # the volume, at least
    assert after[("ainode_interactive_segmentations_in_flight", ())] == 0

    # The session closed, the gauge follows at the next scrape.
    assert door.delete(door_node.door_url + f"/ai/interactive/sessions/{session}", timeout=60).ok
    closed = _scrape(door, metrics_url)
    sessions = "ainode_interactive_sessions", ()
    assert closed[sessions] <= after[sessions] - 1

    # None of these clicks passed the plugin: its histogram of forwarded requests is unchanged.
    plugin_after = _scrape(door, plugin_url)
    forwarded = {
        key: value
        for key, value in plugin_after.items()
        if key[0] == "ainode_interactive_request_seconds_count"
    }
    assert forwarded == {
        key: value
        for key, value in plugin_before.items()
        if key[0] == "ainode_interactive_request_seconds_count"
    }


def test_oversize_bodies_get_413_never_503(door_node: Node) -> None:
    door = door_node.door_session()
    big = b"{" + b" " * (20 << 20) + b"}"  # 20 MiB: over the door's limit for the service
    medium = b"{" + b" " * (2 << 20) + b"}"  # 2 MiB: the door passes it, the service refuses
    for path in ("/ai/interactive/segment", "/ai/monailabel/infer/regiongrow?image=x"):
        for body in (big, medium):
            answer = door.post(
                door_node.door_url + path,
                data=body,
                headers={"content-type": "application/json"},
                timeout=300,
            )
            assert answer.status_code == 413, (path, len(body), answer.status_code)
            assert "larger than" in answer.json()["error"]


# --- slow clients ---------------------------------------------------------------------------


@dataclass
class SlowClients:
    """``count`` connections that send a request's header one line every ``interval_s``.

    A connection the door cuts is replaced at once, so ``count`` stay open all along; each cut
    is counted. Everything is loopback, and :meth:`stop` ends it.
    """

    port: int
    count: int
    interval_s: float = 3.0
    cut: int = 0
    opened: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> SlowClients:
        self._context = ssl.create_default_context()
        self._context.check_hostname = False
        self._context.verify_mode = ssl.CERT_NONE
        self._sockets = [self._open() for _ in range(self.count)]
        self._thread = threading.Thread(target=self._trickle, daemon=True)
        self._thread.start()
        return self

    def _open(self) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        conn = self._context.wrap_socket(raw, server_hostname="localhost")
        conn.sendall(b"GET /ai/health HTTP/1.1\r\nHost: localhost\r\n")
        self.opened += 1
        return conn

    def _trickle(self) -> None:
        line = 0
        while not self._stop.wait(self.interval_s):
            line += 1
            for index, conn in enumerate(self._sockets):
                closed = bool(select.select([conn], [], [], 0)[0])  # EOF or the door's 408
                if not closed:
                    try:
                        conn.sendall(b"X-Slow-%d: %d\r\n" % (line, index))
                    except OSError:
                        closed = True
                if closed:
                    self.cut += 1
                    conn.close()
                    if not self._stop.is_set():
                        self._sockets[index] = self._open()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
        for conn in self._sockets:
            conn.close()


def test_slow_clients_cannot_starve_the_node(door_node: Node) -> None:
    """60 slow, unauthenticated connections: more than Orthanc's 50 HTTP threads.

    Through the door, /ai/health and DICOMweb keep answering, and the door itself cuts the
    slow connections (its header time-out), so they cannot hold anything for long.
    """
    door = door_node.door_session()
    latencies = []
    with SlowClients(door_node.settings.door_port, count=60) as slow:
        for _ in range(5):
            for path in ("/ai/health", "/dicom-web/studies"):
                started = time.monotonic()
                answer = door.get(door_node.door_url + path, timeout=10)
                latencies.append(time.monotonic() - started)
                assert answer.status_code == 200, (path, answer.status_code)
        wait_for(lambda: slow.cut >= slow.count, 120, 1.0, "the door to cut the slow clients")
    print(f"door latencies with 60 slow clients: max {max(latencies) * 1000:.0f} ms")


# --- MONAI Label's own client ---------------------------------------------------------------


@pytest.fixture(scope="module")
def monailabel_client() -> Any:
    # A missing client is a broken test setup, not a reason to test less: fail, never skip.
    assert MONAILABEL_WHEELS, "the MONAI Label client wheel is missing: run `make setup-test`"
    sys.path.insert(0, str(MONAILABEL_WHEELS[-1]))  # the pure-Python wheel, imported as a zip
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "'cgi' is deprecated", DeprecationWarning)
        import monailabel.client.client as client_module

    return client_module


def _client(module: Any, node: Node, suffix: str, tmp: Path, login: bool = True) -> Any:
    client = module.MONAILabelClient(node.door_url + "/ai/monailabel" + suffix, tmpdir=str(tmp))
    if login:
        assert node.auth is not None
        token = base64.b64encode(":".join(node.auth).encode()).decode()
        client.update_auth({"token_type": "Basic", "access_token": token})
    return client


@pytest.mark.parametrize("suffix", ["", "/"])
def test_monailabel_client_info_with_or_without_trailing_slash(
    door_node: Node, monailabel_client: Any, suffix: str, tmp_path: Path
) -> None:
    info = _client(monailabel_client, door_node, suffix, tmp_path).info()
    assert "regiongrow" in info["models"]
    assert info["labels"][0] == "background"
    with pytest.raises(monailabel_client.MONAILabelClientException) as refused:
        _client(monailabel_client, door_node, suffix, tmp_path, login=False).info()
    assert "401" in refused.value.msg


def test_monailabel_client_logs_in_through_the_token_routes(
    door_node: Node, monailabel_client: Any, tmp_path: Path
) -> None:
    """As 3D Slicer's module does: ask whether a login is needed, get a token, use it."""
    assert door_node.auth is not None
    user, password = door_node.auth
    client = _client(monailabel_client, door_node, "/", tmp_path, login=False)
    assert client.auth_enabled()
    with pytest.raises(monailabel_client.MONAILabelClientException) as refused:
        client.auth_token(user, "not-the-password")
    assert refused.value.status_code == 401
    token = client.auth_token(user, password)
    assert token["token_type"] == "Basic"
    client.update_auth(token)
    assert "regiongrow" in client.info()["models"]
    # The token is the login itself: the door and the service accept it as Basic credentials.
    direct = requests.get(
        door_node.settings.interactive_url + "/monailabel/info/",
        headers={"Authorization": f"Basic {token['access_token']}"},
        timeout=60,
    )
    assert direct.status_code == 200


def test_the_ohif_panel_without_the_trailing_slash_still_reaches_the_service(
    door_node: Node, sphere: StoredSeries
) -> None:
    """A browser resolves ``info/`` and ``infer/m`` against ``.../ai/monailabel`` as /ai/..."""
    base = door_node.door_url + "/ai/monailabel"
    door = door_node.door_session()
    info = door.get(urllib.parse.urljoin(base, "info/"), timeout=60)
    assert info.status_code == 200 and "regiongrow" in info.json()["models"]
    infer = door.post(
        urllib.parse.urljoin(base, "infer/regiongrow"),
        params={"image": sphere.uid, "output": "json"},
        files={"params": (None, json.dumps({"foreground": [list(sphere.click())]}))},
        timeout=300,
    )
    assert infer.status_code == 200, infer.text[:300]
    assert infer.json()["label_names"]["segment"] == 1
    refused = door_node.door_session(authenticated=False).get(
        urllib.parse.urljoin(base, "info/"), timeout=60
    )
    assert refused.status_code == 401


def _read_label(path: Path, extension: str, tmp: Path) -> np.ndarray:
    """A result file read back as [slice, row, column] by an independent reader."""
    named = tmp / f"result{extension}"
    named.write_bytes(path.read_bytes())
    if extension == ".nrrd":
        return np.asarray(sitk.GetArrayFromImage(sitk.ReadImage(str(named))))
    image: Any = nib.load(named)
    return np.asarray(image.dataobj).transpose(2, 1, 0)


@pytest.mark.parametrize(
    ("style", "extension"),
    [("deepgrow", ".nii.gz"), ("deepedit", ".nrrd"), ("vista", ".nii.gz")],
)
def test_monailabel_client_infer_through_the_door(
    door_node: Node,
    sphere: StoredSeries,
    monailabel_client: Any,
    style: str,
    extension: str,
    tmp_path: Path,
) -> None:
    click = list(sphere.click())
    model = next(iter(_client(monailabel_client, door_node, "", tmp_path).info()["models"]))
    prompts: dict[str, Any] = {
        "deepgrow": {"foreground": [click], "background": []},
        "deepedit": {"segment": [click], "background": []},  # the node's one label name
        "vista": {"points": [click], "point_labels": [1]},
    }[style]
    client = _client(monailabel_client, door_node, "/", tmp_path)
    result, params = client.infer(model, sphere.uid, {**prompts, "result_extension": extension})
    assert result is not None, params
    assert params["label_names"]["segment"] == 1
    labels = _read_label(Path(result), extension, tmp_path)
    assert dice(labels == 1, sphere.phantom.labels == 1) >= 0.85


@pytest.mark.parametrize("output", ["image", "json", "all"])
def test_monailabel_infer_output_choices(
    door_node: Node, sphere: StoredSeries, output: str
) -> None:
    """``output=`` as OHIF's panel sends it: a multipart form POST with a query string."""
    door = door_node.door_session()
    answer = door.post(
        door_node.door_url + "/ai/monailabel/infer/regiongrow",
        params={"image": sphere.uid, "output": output},
        files={"params": (None, json.dumps({"foreground": [list(sphere.click())]}))},
        timeout=300,
    )
    assert answer.status_code == 200, answer.text[:300]
    kind = answer.headers["content-type"]
    if output == "json":
        assert kind.startswith("application/json")
        assert answer.json()["label_names"]["segment"] == 1
    elif output == "image":
        assert kind == "application/octet-stream"
        assert gzip.decompress(answer.content)[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c")
    else:
        assert kind.startswith("multipart/form-data; boundary=")
        assert b'name="params"' in answer.content and b'name="image"' in answer.content


# --- the door without TLS and without a login, supervised -----------------------------------


@pytest.fixture(scope="module")
def plain_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """The harness's usual node (auth off), asking for a plain-HTTP door, supervised."""
    folder = tmp_path_factory.mktemp("plain")
    rules = write_rules(folder / "rules.yaml", "version: 1\nmode: first-match\nrules: []\n")
    node = start_node(
        folder / "node",
        supervised=True,
        door_tls=False,
        worker_enabled=False,
        routing_rules=rules,
    )
    yield node
    node.stop()


def test_a_plain_http_door_without_login_when_settings_ask(plain_node: Node) -> None:
    assert plain_node.door_url.startswith("http://")
    assert not (plain_node.settings.data_dir / "door").exists()  # no certificate made
    for path in ("/ai/health", "/dicom-web/studies", "/ai/interactive/health", "/ai/monailabel"):
        answer = requests.get(plain_node.door_url + path, timeout=30)
        assert answer.status_code == 200, (path, answer.status_code)


def test_a_killed_door_is_restarted_by_the_supervisor(plain_node: Node) -> None:
    door = plain_node.service("door")
    assert door.process is not None
    killed = door.process.pid
    os.kill(killed, signal.SIGKILL)  # the master only: its worker keeps the port if left
    wait_for(
        lambda: door.process is not None and door.process.pid != killed and door.running,
        120,
        0.5,
        "a new door process",
    )
    answer = wait_for(
        lambda: _answer(plain_node.door_url + "/ai/health"), 120, 0.5, "the door again"
    )
    assert answer.status_code == 200
    # The new nginx serves (its pid file names it), and nothing of the killed one is left.
    pid_file = plain_node.settings.run_dir / "door" / "nginx.pid"
    wait_for(
        lambda: pid_file.is_file() and pid_file.read_text().strip() == str(door.process.pid),
        60,
        0.5,
        "the new nginx to write its pid",
    )
    assert door.running
    assert _living_members(killed) == []


def _living_members(group: int) -> list[str]:
    """Processes of a process group that still run (zombies awaiting their reaper do not)."""
    found = subprocess.run(["ps", "-o", "pid=,stat=", "-g", str(group)], capture_output=True)
    rows = [line.split() for line in found.stdout.decode().splitlines() if line.strip()]
    return [pid for pid, stat in rows if not stat.startswith("Z")]


def _answer(url: str) -> requests.Response | None:
    try:
        answer = requests.get(url, timeout=10)
    except requests.RequestException:
        return None
    return answer if answer.status_code == 200 else None


def test_a_cli_elsewhere_trusts_the_node_certificate_through_orthanc_ca_file(
    door_node: Node, tmp_path: Path
) -> None:
    """``ainode jobs`` as on another machine: Orthanc only through the door, over HTTPS."""
    assert door_node.auth is not None
    remote = {
        "AINODE_DATA_DIR": str(tmp_path / "elsewhere"),
        "AINODE_ORTHANC_URL": door_node.door_url,
        "AINODE_ORTHANC_USERNAME": door_node.auth[0],
        "AINODE_ORTHANC_PASSWORD": door_node.auth[1],
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("AINODE_")} | remote
    without = subprocess.run(
        [*AINODE, "jobs", "--json"], env=env, capture_output=True, text=True, timeout=120
    )
    assert without.returncode == 1 and "SSL" in without.stderr
    trusted = env | {"AINODE_ORTHANC_CA_FILE": str(door_node.settings.door_cert_path)}
    result = subprocess.run(
        [*AINODE, "jobs", "--json"], env=trusted, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-500:]
    assert isinstance(json.loads(result.stdout), list)
