"""What a browser fetches from the node: OHIF under /ohif/, the AI pages, Explorer's extension.

The browser tests (tests/browser) drive these pages; here each route is checked over plain HTTP
on the shared node, and Orthanc's configuration for OHIF is checked without a node.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from nodeharness import Node

from ainode.node.orthanc_config import (
    OHIF_DIR,
    PLUGIN_LIBRARIES,
    SERVE_FOLDERS_LIBRARY,
    ohif_config_path,
    ohif_installed,
    render_ohif_app_config,
    render_orthanc_config,
)
from ainode.phantoms import Geometry, SeriesIds, make_phantom, write_series
from ainode.settings import Settings

NOT_INSTALLED = "the OHIF viewer is not installed: run `make setup` (scripts/bootstrap.sh)"


@pytest.mark.integration
def test_ohif_index_is_served_for_the_viewers_client_side_routes(node: Node) -> None:
    assert ohif_installed(), NOT_INSTALLED
    index = node.get("/ohif/")
    assert index.status_code == 200
    assert index.headers["Content-Type"].startswith("text/html")
    html = index.text
    assert 'window.PUBLIC_URL="/ohif/"' in html
    assert 'src="/ohif/app-config.js"' in html
    assert not re.search(r'(src|href)="/(?!ohif/|/)', html), "every asset rebased onto /ohif/"
    for route in ("/ohif", "/ohif/viewer", "/ohif/viewer/dicomweb", "/ohif/segmentation"):
        again = node.get(route, params={"StudyInstanceUIDs": "1.2.3"})
        assert again.status_code == 200 and again.text == html, route


@pytest.mark.integration
def test_ohif_bundles_come_from_serve_folders_rebased(node: Node) -> None:
    assert ohif_installed(), NOT_INSTALLED
    html = node.get("/ohif/").text
    bundle = re.search(r'src="(/ohif/app\.bundle\.[0-9a-f]+\.js)"', html)
    assert bundle, "index.html names the app bundle"
    answer = node.get(bundle.group(1))
    assert answer.status_code == 200
    assert "javascript" in answer.headers["Content-Type"]
    assert '__webpack_require__.p = "/ohif/";' in answer.text  # chunks load under /ohif/
    wasm = next(OHIF_DIR.glob("*.wasm"))
    answer = node.get(f"/ohif/{wasm.name}")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "application/wasm"
    assert answer.content[:4] == b"\0asm"
    css = node.get("/ohif/app.bundle.css")
    assert css.status_code == 200 and "url(/ohif/" in css.text and "url(/a" not in css.text
    # ServeFolders must not hide Orthanc Explorer.
    assert node.get("/app/explorer.html").status_code == 200


@pytest.mark.integration
def test_ohif_configuration_points_at_the_nodes_own_dicomweb(node: Node) -> None:
    assert ohif_installed(), NOT_INSTALLED
    answer = node.get("/ohif/app-config.js")
    assert answer.status_code == 200
    assert "javascript" in answer.headers["Content-Type"]
    assert answer.headers.get("Cache-Control") == "no-cache"
    text = answer.text
    assert text == ohif_config_path(node.settings).read_text(), "written by ainode up"
    config = json.loads(re.search(r"window\.config = (\{.*?\n\});", text, re.S).group(1))  # type: ignore[union-attr]
    assert config["routerBasename"] == "/ohif"
    source = config["dataSources"][0]
    assert source["namespace"] == "@ohif/extension-default.dataSourcesModule.dicomweb"
    assert config["defaultDataSourceName"] == source["sourceName"]
    assert source["configuration"]["qidoRoot"] == "/dicom-web"
    assert source["configuration"]["wadoRoot"] == "/dicom-web"
    assert source["configuration"]["wadoUriRoot"] == "/wado"
    assert "window.location.origin" in text  # made absolute on the viewer's own origin
    # OHIF imports the node's extension (AI panel, click-to-segment) from the plugin's pages.
    assert config["extensions"] == ["/ai/ui/ohif-ai-extension.js"]
    assert "javascript" in node.get(config["extensions"][0]).headers["Content-Type"]
    # The root it names answers QIDO-RS.
    assert node.get("/dicom-web/studies").status_code in (200, 204)


@pytest.mark.integration
def test_ai_pages_and_explorer_extension_are_served(node: Node) -> None:
    for path, kind in (
        ("/ai/ui", "text/html"),
        ("/ai/ui/index.html", "text/html"),
        ("/ai/ui/interactive.html", "text/html"),
        ("/ai/ui/dashboard.js", "javascript"),
        ("/ai/ui/interactive.js", "javascript"),
        ("/ai/ui/common.js", "javascript"),
        ("/ai/ui/ui.css", "text/css"),
    ):
        answer = node.get(path)
        assert answer.status_code == 200, path
        assert kind in answer.headers["Content-Type"], path
    assert "AI node" in node.get("/ai/ui").text
    # Orthanc Explorer loads the plugins' extensions from /plugins/explorer.js.
    extension = node.get("/plugins/explorer.js")
    assert extension.status_code == 200
    assert "ainode-series" in extension.text and "ainode-dashboard-link" in extension.text


@pytest.mark.integration
def test_only_the_uis_own_files_are_served(node: Node) -> None:
    missing = node.get("/ai/ui/nothing-here.js")
    assert missing.status_code == 404
    assert "nothing-here.js" in missing.json()["error"]
    assert node.get("/ai/ui/..%2F..%2Fmain.py").status_code in (400, 404)
    assert node.get("/ai/ui/__init__.py").status_code == 404


@pytest.mark.integration
def test_queues_route_reports_jobs_and_broker_queues(node: Node) -> None:
    answer = node.json("/ai/queues")
    assert answer["broker"]["up"] is True
    assert all(isinstance(n, int) for n in answer["broker"]["queues"].values())
    assert set(answer["jobs"]) >= {"queued", "running", "done", "failed"}


@pytest.fixture(scope="module")
def pushed(node: Node, tmp_path_factory: pytest.TempPathFactory) -> tuple[SeriesIds, str]:
    """A phantom CT with a study description, pushed by storescu; its Orthanc series id."""
    ids = SeriesIds(study_description="Summary phantom", series_number=7)
    phantom = make_phantom(Geometry(shape=(6, 32, 32), spacing=(3.0, 1.5, 1.5)), seed=2)
    node.storescu(write_series(phantom, tmp_path_factory.mktemp("summary"), ids))
    return ids, node.lookup(ids.series_uid)


@pytest.mark.integration
def test_series_summaries_show_what_people_read_and_no_patient(
    node: Node, pushed: tuple[SeriesIds, str]
) -> None:
    ids, series_id = pushed
    answer = node.get("/ai/series-summaries", params={"ids": series_id})
    assert answer.status_code == 200
    (summary,) = answer.json()["series"]
    assert {k: summary[k] for k in ("study_date", "study_description", "series_number")} == {
        "study_date": "20260101",
        "study_description": "Summary phantom",
        "series_number": "7",
    }
    assert (summary["modality"], summary["images"]) == ("CT", 6)
    listed = node.json("/ai/series-summaries")["series"]
    assert series_id in {s["series_id"] for s in listed}
    for text in (answer.text, json.dumps(listed)):
        for secret in (ids.patient_name, ids.patient_id, ids.patient_birth_date):
            assert secret not in text
    assert node.get("/ai/series-summaries", params={"ids": "../x"}).status_code == 400


@pytest.mark.integration
def test_series_summary_says_which_pipelines_could_run(
    node: Node, pushed: tuple[SeriesIds, str]
) -> None:
    _, series_id = pushed
    answer = node.json(f"/ai/series/{series_id}/summary")
    assert answer["series"]["series_id"] == series_id
    fits = {p["pipeline"]: p for p in answer["pipelines"]}
    assert fits["demo-phantom"] == {
        "pipeline": "demo-phantom",
        "name": fits["demo-phantom"]["name"],
        "runnable": True,
        "reason": "",
    }
    assert not fits["totalseg-organs"]["runnable"]
    assert "not available here" in fits["totalseg-organs"]["reason"]
    missing = "0" * 8 + ("-" + "0" * 8) * 4
    assert node.get(f"/ai/series/{missing}/summary").status_code == 404


@pytest.mark.integration
def test_orthanc_ignores_an_encoded_includefield_the_viewer_config_decodes(
    node: Node, pushed: tuple[SeriesIds, str]
) -> None:
    """Why app-config.js rewrites OHIF's QIDO URLs: Orthanc's DICOMweb plugin (1.7) does not
    split includefield at %2C, the way OHIF's client sends it. If this starts to fail, Orthanc
    was fixed and the rewrite can go."""
    encoded = node.get("/dicom-web/studies?includefield=00081030%2C00080060").text
    plain = node.get("/dicom-web/studies?includefield=00081030,00080060").text
    assert "Summary phantom" not in encoded
    assert "Summary phantom" in plain
    assert "replace(/%2C/gi, ',')" in node.get("/ohif/app-config.js").text


# -- Orthanc's configuration, without a node ------------------------------------------------


def test_orthanc_loads_serve_folders_after_the_python_plugin(tmp_path: Path) -> None:
    assert ohif_installed(), NOT_INSTALLED
    settings = Settings(data_dir=tmp_path)
    config = render_orthanc_config(
        settings, credentials=None, settings_file=tmp_path / "s.json", site_packages=[]
    )
    names = [Path(p).name for p in config["Plugins"]]
    assert names == [*PLUGIN_LIBRARIES, SERVE_FOLDERS_LIBRARY]
    assert config["ServeFolders"]["Folders"] == {"/ohif": str(OHIF_DIR.resolve())}


def test_no_serve_folders_where_orthanc_has_no_such_plugin(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, orthanc_plugins_dir=tmp_path / "no-plugins")
    config = render_orthanc_config(
        settings, credentials=None, settings_file=tmp_path / "s.json", site_packages=[]
    )
    assert "ServeFolders" not in config
    assert [Path(p).name for p in config["Plugins"]] == list(PLUGIN_LIBRARIES)


def test_ohif_configuration_follows_the_dicomweb_roots() -> None:
    text = render_ohif_app_config(
        {"Name": "SITE", "DicomWeb": {"Root": "/dicomweb/", "WadoRoot": "/wado-uri"}}
    )
    assert '"qidoRoot": "/dicomweb"' in text and '"wadoUriRoot": "/wado-uri"' in text
    assert '"friendlyName": "SITE (Orthanc DICOMweb)"' in text
