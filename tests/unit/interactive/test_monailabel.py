"""The MONAI Label subset: /info/ and /infer/{model} as MONAI Label's clients call them."""

from __future__ import annotations

import email.parser
import email.policy
import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from ainode_worker.interactive import create_app
from ainode_worker.interactive.config import InteractiveConfig
from ainode_worker.interactive.volumes import InMemoryVolumeLoader
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from ainode.phantoms import Geometry

from .helpers import PhantomSeries, dice, object_click, phantom_series


@pytest.fixture(scope="module")
def series() -> PhantomSeries:
    return phantom_series(Geometry(shape=(40, 64, 64)), seed=3)


@pytest.fixture(scope="module")
def client(series: PhantomSeries) -> TestClient:
    loader = InMemoryVolumeLoader()
    loader.add(series.volume)
    config = InteractiveConfig(store_accepted=False, labels={"sphere": 1, "box": 2})
    return TestClient(create_app(config, loader=loader))


def _infer(
    client: TestClient,
    image: str,
    params: dict[str, Any],
    output: str | None = "all",
    model: str = "regiongrow",
) -> Any:
    query = {"image": image} | ({"output": output} if output else {})
    return client.post(
        f"/monailabel/infer/{model}", params=query, data={"params": json.dumps(params)}
    )


def _parts(answer: Any) -> dict[str, tuple[str, str | None, bytes]]:
    """Parse multipart/form-data with the standard library's MIME parser."""
    head = f"Content-Type: {answer.headers['content-type']}\r\n\r\n".encode()
    message: Any = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        head + answer.content
    )
    assert message.is_multipart()
    parts: dict[str, tuple[str, str | None, bytes]] = {}
    for part in message.iter_parts():
        name = str(part.get_param("name", header="content-disposition"))
        parts[name] = (part.get_content_type(), part.get_filename(), part.get_payload(decode=True))
    return parts


def _ohif_parse(answer: Any) -> tuple[dict[str, Any], bytes]:
    """What OHIF's MONAI Label panel does with the answer (MonaiLabelPanel.parseResponse)."""
    boundary = answer.headers["content-type"].split("boundary=")[1]
    parts = [p for p in answer.content.split(f"--{boundary}".encode()) if p.strip()]
    json_part = next(p for p in parts if b"Content-Type: application/json" in p)
    file_part = next(p for p in parts if b"Content-Type: application/octet-stream" in p)
    params = json.loads(json_part[json_part.index(b"{") : json_part.rindex(b"}") + 1])
    data = file_part.split(b"\r\n\r\n", 1)[1]
    return params, data[: data.rindex(b"\r\n")]


def test_info_reports_models_and_labels_as_monai_label(client: TestClient) -> None:
    info = client.get("/monailabel/info/").json()
    assert {"name", "version", "labels", "models", "datastore"} <= set(info)
    assert info["labels"] == ["background", "sphere", "box"]  # background first, by value
    model = info["models"]["regiongrow"]
    assert model["type"] == "deepedit"
    assert model["labels"] == {"background": 0, "sphere": 1, "box": 2}
    assert model["dimension"] == 3


def test_info_lists_only_models_that_load(series: PhantomSeries, tmp_path: Path) -> None:
    """A configured SAM model whose weights are missing is not offered (MONAI Label lists the
    models it loaded); once its files are there it is, while region growing always is."""
    loader = InMemoryVolumeLoader()
    loader.add(series.volume)
    models = {
        "regiongrow": {"kind": "regiongrow"},
        "sam-missing": {
            "kind": "sam-onnx",
            "encoder": str(tmp_path / "absent.encoder.onnx"),
            "decoder": str(tmp_path / "absent.decoder.onnx"),
        },
    }
    config = InteractiveConfig(store_accepted=False, labels={"sphere": 1}, models=models)
    client = TestClient(create_app(config, loader=loader))
    info = client.get("/monailabel/info/").json()
    assert set(info["models"]) == {"regiongrow"}
    health_models = {m["name"] for m in client.get("/health").json()["models"]}
    assert health_models == {"regiongrow", "sam-missing"}  # /health still reports every one


def test_deepgrow_style_clicks_answer_multipart(
    client: TestClient, series: PhantomSeries, tmp_path: Path
) -> None:
    sphere = object_click(series.phantom, 1)
    answer = _infer(client, series.uid, {"foreground": [list(sphere)], "background": []})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("multipart/form-data; boundary=")
    parts = _parts(answer)
    kind, _, raw = parts["params"]
    assert kind == "application/json"
    params = json.loads(raw)
    assert params["label_names"] == {"background": 0, "sphere": 1, "box": 2}
    assert set(params["latencies"]) >= {"pre", "infer", "write", "total"}
    value, _, _, cz = params["centroids"]["sphere"]
    assert value == "1" and abs(int(cz) - sphere[2]) <= 3
    kind, filename, nifti = parts["image"]
    assert kind == "application/octet-stream" and filename == "label.nii.gz"
    path = tmp_path / "label.nii.gz"
    path.write_bytes(nifti)
    nifti_image: Any = nib.load(path)
    labels = np.asarray(nifti_image.dataobj).transpose(2, 1, 0)
    assert dice(labels == 1, series.phantom.labels == 1) >= 0.85


def test_infer_clicks_are_counted_in_the_service_metrics(series: PhantomSeries) -> None:
    loader = InMemoryVolumeLoader()
    loader.add(series.volume)
    client = TestClient(create_app(InteractiveConfig(store_accepted=False), loader=loader))
    sphere = object_click(series.phantom, 1)
    for _ in range(2):  # one per-series session: the first infer opens it, the second reuses it
        answer = _infer(client, series.uid, {"foreground": [list(sphere)], "background": []})
        assert answer.status_code == 200
    bad = _infer(client, series.uid, {"foreground": [[-5, 0, 0]]})
    assert bad.status_code == 400, bad.text
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    counts = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics.text)
        for sample in family.samples
        if sample.name.startswith("ainode_interactive_click")
    }
    clicks = "ainode_interactive_click_seconds_count"
    assert counts[(clicks, (("click", "first"), ("model", "regiongrow")))] == 1
    assert counts[(clicks, (("click", "next"), ("model", "regiongrow")))] == 1
    failed = ("error", "PromptOutsideVolumeError"), ("model", "regiongrow")
    assert counts[("ainode_interactive_click_errors_total", failed)] == 1


def test_ohif_request_for_uint16_nrrd(
    client: TestClient, series: PhantomSeries, tmp_path: Path
) -> None:
    box = object_click(series.phantom, 2)
    params = {
        "foreground": [list(box)],
        "background": [],
        "result_extension": ".nrrd",
        "result_dtype": "uint16",
        "result_compress": False,
        "restore_label_idx": False,
    }
    answer = _infer(client, series.uid, params)
    result, data = _ohif_parse(answer)
    assert "centroids" in result
    path = tmp_path / "label.nrrd"
    path.write_bytes(data)
    image: Any = sitk.ReadImage(str(path))
    assert image.GetPixelID() == sitk.sitkUInt16
    labels = sitk.GetArrayFromImage(image)
    # 'foreground' clicks belong to the first label, as MONAI Label's DeepGrow-style models do.
    assert dice(labels == 1, series.phantom.labels == 2) >= 0.85


def test_deepedit_style_clicks_per_label(
    client: TestClient, series: PhantomSeries, tmp_path: Path
) -> None:
    params = {
        "sphere": [list(object_click(series.phantom, 1))],
        "box": [list(object_click(series.phantom, 2))],
        "background": [],
        "result_extension": ".nrrd",
    }
    answer = _infer(client, series.uid, params, output="image")
    assert answer.headers["content-type"] == "application/octet-stream"
    assert 'filename="label.nrrd"' in answer.headers["content-disposition"]
    path = tmp_path / "label.nrrd"
    path.write_bytes(answer.content)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    for value in (1, 2):
        assert dice(labels == value, series.phantom.labels == value) >= 0.85


def test_vista_style_points_and_json_output(client: TestClient, series: PhantomSeries) -> None:
    sphere = object_click(series.phantom, 1)
    params = {"points": [list(sphere)], "point_labels": [1]}
    answer = _infer(client, series.uid, params, output="json")
    assert answer.headers["content-type"].startswith("application/json")
    result = answer.json()
    assert result["centroids"]["sphere"][0] == "1"
    again = _infer(client, series.uid, params, output="json").json()
    assert again["session"] == result["session"]  # one session per series
    assert again["latencies"]["pre"] == 0.0  # the volume stayed loaded


@pytest.mark.parametrize(
    ("query", "params", "status", "message"),
    [
        ({}, {"foreground": [[1, 1, 1]]}, 400, "image="),
        ({"image": "X", "output": "dicom_seg"}, {"foreground": [[1, 1, 1]]}, 400, "accept"),
        ({"image": "SERIES"}, {"foreground": []}, 400, "no foreground"),
        ({"image": "SERIES"}, {"foreground": [[1, 1]]}, 400, "[x, y, z]"),
        ({"image": "SERIES"}, {"foreground": [[1, 1, 999]]}, 400, "outside"),
        ({"image": "1.2.3.4"}, {"foreground": [[1, 1, 1]]}, 404, "no series"),
    ],
)
def test_bad_requests_get_clear_4xx(
    client: TestClient,
    series: PhantomSeries,
    query: dict[str, str],
    params: dict[str, Any],
    status: int,
    message: str,
) -> None:
    query = {k: (series.uid if v == "SERIES" else v) for k, v in query.items()}
    answer = client.post(
        "/monailabel/infer/regiongrow", params=query, data={"params": json.dumps(params)}
    )
    assert answer.status_code == status
    assert message in answer.json()["error"]


def test_unknown_model_and_bad_params_field(client: TestClient, series: PhantomSeries) -> None:
    answer = _infer(client, series.uid, {"foreground": [[1, 1, 1]]}, model="nnunet")
    assert answer.status_code == 404 and "regiongrow" in answer.json()["error"]
    answer = client.post(
        "/monailabel/infer/regiongrow", params={"image": series.uid}, data={"params": "{oops"}
    )
    assert answer.status_code == 400 and "not valid JSON" in answer.json()["error"]
    upload = client.post(
        "/monailabel/infer/regiongrow",
        params={"image": series.uid},
        files={"file": ("image.nii.gz", b"data")},
    )
    assert upload.status_code == 400 and "Orthanc" in upload.json()["error"]
