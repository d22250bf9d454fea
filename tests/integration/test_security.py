"""Security of a real node with authentication on: every route needs credentials, logs stay clean.

The routes are not listed here by hand: the plugin is started, exactly as Orthanc's
``PythonScript`` starts it, against a recording stand-in for Orthanc's module, and every REST
callback it registers is tried on the real node. A route added later, anywhere in the plugin, is
tried too. Orthanc checks HTTP Basic auth before any plugin callback runs; these tests make sure
it stays so for each route and each method.

Then phantom studies with distinctive patient names, IDs and birth dates are pushed (C-STORE and
STOW-RS), their jobs run (one fails), the interactive service segments one of them, and every log
file of the node is searched for those values in every spelling, and for the password.
"""

from __future__ import annotations

import logging
import re
import re._constants as sre_constants
import re._parser as sre_parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import requests
from ainode_plugin.main import start_plugin
from nodeharness import ONNX_RULES, Node, start_node, wait_for, write_rules
from pydicom import Dataset, dcmread

from ainode.credentials import read_credentials
from ainode.phantoms import Geometry, SeriesIds, centre_voxel, make_phantom, phantom_datasets

METHODS = ("GET", "POST", "PUT", "DELETE")


@dataclass(frozen=True)
class Patient:
    """Identifiers that appear nowhere else, so any hit in a log is a leak."""

    name: str
    patient_id: str
    birth_date: str

    def spellings(self) -> set[str]:
        """Every form a log line could carry: each name part, ``^`` and space forms, dates."""
        parts = [p for p in re.split(r"[\^=]", self.name) if p]
        date = self.birth_date
        return {
            self.name,
            self.name.replace("^", " "),
            " ".join(reversed(parts)),
            *parts,
            self.patient_id,
            date,
            f"{date[:4]}-{date[4:6]}-{date[6:]}",
            f"{date[6:]}.{date[4:6]}.{date[:4]}",
        }


PATIENTS = (
    Patient("Qzwxlastone^Vkjfirstone", "ZPID-731945", "19430217"),
    Patient("Yrtlasttwo^Hgbfirsttwo^Mid", "ZPID-552870", "19581103"),
    Patient("Wopcrossed^Lsnfailing", "ZPID-904417", "19671229"),  # its job fails
)


# --- the routes the plugin registers, read from the plugin itself --------------------------


class RecordingOrthanc:
    """Stands in for Orthanc's ``orthanc`` module while the plugin starts: records routes.

    Only registration and logging are called during start-up; anything else would return None.
    """

    def __init__(self) -> None:
        self.rest_callbacks: list[str] = []

    def RegisterRestCallback(self, pattern: str, callback: Callable[..., None]) -> None:
        self.rest_callbacks.append(pattern)

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


@dataclass(frozen=True)
class RouteCase:
    pattern: str
    path: str
    methods: tuple[str, ...]

    def __str__(self) -> str:
        return self.pattern


def registered_routes(node: Node, scratch: Path) -> list[RouteCase]:
    """Every URI pattern the plugin registers with Orthanc, a path matching it, its methods."""
    scratch.mkdir(parents=True, exist_ok=True)
    settings_file = scratch / "settings.json"
    # The node's settings (so the same routes are switched on) with a data directory of its
    # own, so this second plugin instance never opens the running node's job store.
    settings_file.write_text(
        node.settings.model_copy(update={"data_dir": scratch / "data"}).model_dump_json()
    )
    recorder = RecordingOrthanc()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        plugin = start_plugin(recorder, str(settings_file))
        plugin.store.close()
    finally:
        root.handlers, root.level = handlers, level
    cases = []
    for pattern in recorder.rest_callbacks:
        route = plugin.router.routes.get(pattern)
        methods = tuple(sorted(route.methods)) if route else ("GET",)
        cases.append(RouteCase(pattern, sample_path(pattern), methods))
    return cases


def sample_path(pattern: str) -> str:
    """The shortest string a (simple) route regex matches, checked against the regex."""
    text = "".join(_sample(sre_parse.parse(pattern)))
    if not re.fullmatch(pattern, text):
        raise AssertionError(f"cannot build a path for route {pattern!r} (got {text!r})")
    return text


def _sample(items: Any) -> Iterator[str]:
    c = sre_constants
    for op, arg in items:
        if op is c.LITERAL:
            yield chr(arg)
        elif op is c.SUBPATTERN:
            yield from _sample(arg[-1])
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT):
            low, _, sub = arg
            for _ in range(low):
                yield from _sample(sub)
        elif op is c.BRANCH:
            yield from _sample(arg[1][0])
        elif op is c.IN:
            yield _first_of_set(arg)
        elif op is c.ANY:
            yield "a"
        else:
            raise AssertionError(f"route regex uses {op}, which sample_path does not know")


def _first_of_set(items: list[tuple[Any, Any]]) -> str:
    c = sre_constants
    op, arg = items[0]
    if op is c.NEGATE:
        return "a" if not re.fullmatch(_set_regex(items), "a") else "b"
    if op is c.LITERAL:
        return chr(arg)
    if op is c.RANGE:
        return chr(arg[0])
    if op is c.CATEGORY:
        return "0" if arg is c.CATEGORY_DIGIT else "a"
    raise AssertionError(f"character set {items} is not known to sample_path")


def _set_regex(items: list[tuple[Any, Any]]) -> str:
    c = sre_constants
    body = "".join(
        "^" if op is c.NEGATE else re.escape(chr(arg)) for op, arg in items if op is not c.RANGE
    )
    return f"[{body}]"


# --- a node with authentication on, shared by the module ---------------------------------


@pytest.fixture(scope="module")
def secure_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    folder = tmp_path_factory.mktemp("secure")
    rules = write_rules(folder / "rules.yaml", ONNX_RULES)
    node = start_node(folder / "node", auth_enabled=True, routing_rules=rules)
    yield node
    node.stop()


@pytest.fixture(scope="module")
def routes(secure_node: Node, tmp_path_factory: pytest.TempPathFactory) -> list[RouteCase]:
    return registered_routes(secure_node, tmp_path_factory.mktemp("plugin"))


def test_the_plugin_registers_the_routes_it_documents(routes: list[RouteCase]) -> None:
    """The enumeration works: the known routes are among those found (and more may be)."""
    patterns = {r.pattern for r in routes}
    assert {r"/ai/health", r"/ai/jobs", r"/ai/metrics", r"/ai/interactive/segment"} <= patterns
    assert all(p.startswith(("/ai", "/ohif")) for p in patterns), patterns
    assert len(routes) >= 20


def test_every_plugin_route_needs_credentials_for_every_method(
    secure_node: Node, routes: list[RouteCase]
) -> None:
    open_routes = []
    for case in routes:
        for method in METHODS:
            answer = requests.request(method, secure_node.url + case.path, timeout=30)
            if answer.status_code != 401:
                open_routes.append(f"{method} {case.path} ({case.pattern}): {answer.status_code}")
    assert not open_routes, "answered without credentials:\n" + "\n".join(open_routes)


def test_every_plugin_route_answers_with_credentials(
    secure_node: Node, routes: list[RouteCase]
) -> None:
    user, password = read_credentials(secure_node.settings.credentials_file)
    refused = []
    for case in routes:
        for method in case.methods:
            answer = requests.request(
                method, secure_node.url + case.path, auth=(user, password), timeout=60
            )
            if answer.status_code in (401, 403):
                refused.append(f"{method} {case.path}: {answer.status_code}")
    assert not refused, "refused with valid credentials:\n" + "\n".join(refused)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/dicom-web/studies"),
        ("GET", "/dicom-web/series"),
        ("POST", "/dicom-web/studies"),
        ("GET", "/system"),
        ("GET", "/patients"),
        ("GET", "/studies"),
        ("POST", "/instances"),
        ("POST", "/tools/find"),
        ("POST", "/tools/lookup"),
        ("POST", "/tools/execute-script"),
        ("GET", "/app/explorer.html"),
        ("GET", "/changes"),
        ("DELETE", "/patients/0"),
    ],
)
def test_dicomweb_and_orthanc_rest_need_credentials(
    secure_node: Node, method: str, path: str
) -> None:
    assert requests.request(method, secure_node.url + path, timeout=30).status_code == 401
    wrong = requests.request(method, secure_node.url + path, auth=("ainode", "x"), timeout=30)
    assert wrong.status_code == 401


def test_wrong_password_is_refused_everywhere(secure_node: Node, routes: list[RouteCase]) -> None:
    user, _ = read_credentials(secure_node.settings.credentials_file)
    for case in routes:
        answer = requests.get(secure_node.url + case.path, auth=(user, "not-it"), timeout=30)
        assert answer.status_code == 401, case


# --- logs ----------------------------------------------------------------------------------


PHANTOM = make_phantom(Geometry(shape=(16, 40, 40), spacing=(3.0, 2.4, 2.4)), seed=7)


def _series(patient: Patient, folder: Path, *, drop_slice: bool = False) -> list[Path]:
    ids = replace(
        SeriesIds(),
        patient_name=patient.name,
        patient_id=patient.patient_id,
        patient_birth_date=patient.birth_date,
    )
    datasets: list[Dataset] = list(phantom_datasets(PHANTOM, ids))
    if drop_slice:
        del datasets[8]  # a gap: the worker refuses the volume and the job fails with a reason
    folder.mkdir(parents=True)
    paths = []
    for index, dataset in enumerate(datasets):
        path = folder / f"IM{index:03d}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_logs_never_carry_patient_identifiers_or_the_password(
    secure_node: Node, routes: list[RouteCase], tmp_path: Path
) -> None:
    node = secure_node
    first, second, failing = PATIENTS
    uids = {}
    for patient, how in ((first, "storescu"), (second, "stow"), (failing, "storescu")):
        paths = _series(patient, tmp_path / patient.patient_id, drop_slice=patient is failing)
        if how == "storescu":
            node.storescu(paths)
        else:
            node.stow(paths)
        uids[patient] = str(dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)
    states = {p: node.wait_for_run(uid, timeout_s=180)["state"] for p, uid in uids.items()}
    assert states == {first: "done", second: "done", failing: "failed"}

    # The interactive service loads a series and segments it; its log is searched too.
    z, y, x = centre_voxel(PHANTOM.shapes[0], PHANTOM.geometry)
    click = {"series": uids[first], "points": [{"x": x, "y": y, "z": z, "label": 1}]}
    answer = node.post("/ai/interactive/segment", json=click)
    assert answer.status_code == 200, answer.text[:300]
    # Orthanc's own REST and DICOMweb answers with the patient data, which must stay out of logs.
    assert first.patient_id in node.get("/patients", params={"expand": ""}).text
    assert node.dicomweb().search_for_studies(search_filters={"PatientID": second.patient_id})

    _, password = read_credentials(node.settings.credentials_file)
    logs = sorted(p for p in node.settings.logs_dir.iterdir() if p.is_file())
    names = {p.stem for p in logs}
    assert {"orthanc", "redis", "worker", "interactive"} <= names, names
    wait_for(lambda: "job" in (node.settings.logs_dir / "worker.log").read_text(), 10)
    leaks = []
    for path in logs:
        text = path.read_text(errors="replace")
        for patient in PATIENTS:
            for spelling in patient.spellings():
                if spelling.lower() in text.lower():
                    leaks.append(f"{path.name}: {spelling!r}")
        if password in text:
            leaks.append(f"{path.name}: the Orthanc password")
    assert not leaks, "found in the node's logs:\n" + "\n".join(leaks)
