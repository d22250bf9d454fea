"""The interactive service against a real Orthanc: series loaded by UID or Orthanc id; accepted
masks stored as SEG."""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pydicom
import pytest
import requests
from ainode_worker.interactive import create_app
from ainode_worker.interactive.config import InteractiveConfig
from ainode_worker.interactive.encoding import decode_mask
from ainode_worker.orthanc import OrthancClient
from ainode_worker.volume import volume_from_datasets
from fastapi.testclient import TestClient
from nodeharness import free_port
from pydicom.uid import UID, JPEG2000Lossless, JPEGLSLossless, RLELossless
from unit.interactive.helpers import (
    OrthancServer,
    PhantomSeries,
    dice,
    object_click,
    phantom_series,
)

from ainode.phantoms import Geometry


@pytest.fixture(scope="module")
def stored(orthanc: OrthancServer) -> tuple[PhantomSeries, str]:
    series = phantom_series(Geometry(shape=(24, 48, 48), spacing=(3.0, 0.9, 0.9)), seed=1)
    return series, orthanc.upload(series)


def _client(orthanc: OrthancServer, **overrides: object) -> TestClient:
    settings = {
        "orthanc_url": orthanc.url,
        "orthanc_username": orthanc.auth[0],
        "orthanc_password": orthanc.auth[1],
    }
    return TestClient(create_app(InteractiveConfig.model_validate(settings | overrides)))


def test_series_by_uid_or_orthanc_id(
    orthanc: OrthancServer, stored: tuple[PhantomSeries, str]
) -> None:
    series, orthanc_id = stored
    x, y, z = object_click(series.phantom, 1)
    client = _client(orthanc)
    masks = []
    for reference in (series.uid, orthanc_id):
        answer = client.post(
            "/segment", json={"series": reference, "points": [{"x": x, "y": y, "z": z}]}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["series_uid"] == series.uid
        assert answer.json()["timings"]["load_ms"] > 0
        masks.append(decode_mask(answer.json()["mask"]))
    assert np.array_equal(masks[0], masks[1])
    assert dice(masks[0], series.phantom.labels == 1) >= 0.85


def test_accepted_mask_is_stored_as_a_seg_over_the_series(
    orthanc: OrthancServer, stored: tuple[PhantomSeries, str]
) -> None:
    series, _ = stored
    x, y, z = object_click(series.phantom, 2)
    client = _client(orthanc)
    segment = client.post(
        "/segment", json={"series": series.uid, "points": [{"x": x, "y": y, "z": z}]}
    ).json()
    accepted = client.post(f"/sessions/{segment['session']}/accept").json()
    assert accepted["seg"]["stored"] is True
    raw = requests.get(
        f"{orthanc.url}/instances/{accepted['seg']['orthanc_id']}/file",
        auth=orthanc.auth,
        timeout=10,
    ).content
    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(raw)))
    assert seg.StudyInstanceUID == series.ids.study_uid
    assert seg.SOPInstanceUID == accepted["seg"]["sop_instance_uid"]
    source_uids = [str(ds.SOPInstanceUID) for ds in series.volume.datasets]
    pixels = seg.get_pixels_by_source_instance(
        source_uids, segment_numbers=[1], assert_missing_frames_are_empty=True
    )
    read_back = pixels[..., 0]
    assert np.array_equal(read_back, decode_mask(segment["mask"]))
    assert dice(read_back, series.phantom.labels == 2) >= 0.85
    # A user steered the mask: the SEG says so, unlike the node's automatic results.
    [segment_item] = pydicom.dcmread(io.BytesIO(raw)).SegmentSequence
    assert segment_item.SegmentAlgorithmType == "SEMIAUTOMATIC"
    # Accepting the same mask again names the same object: Orthanc keeps one copy.
    again = client.post(f"/sessions/{segment['session']}/accept").json()
    assert again["seg"]["sop_instance_uid"] == accepted["seg"]["sop_instance_uid"]
    assert again["seg"]["orthanc_id"] == accepted["seg"]["orthanc_id"]


def test_accept_without_a_mask_is_a_conflict(
    orthanc: OrthancServer, stored: tuple[PhantomSeries, str]
) -> None:
    series, _ = stored
    client = _client(orthanc)
    x, y, z = object_click(series.phantom, 1)
    session = client.post(
        "/segment", json={"series": series.uid, "points": [{"x": x, "y": y, "z": z}]}
    ).json()["session"]
    assert client.post(f"/sessions/{session}/reset").json() == {"session": session, "reset": True}
    answer = client.post(f"/sessions/{session}/accept")
    assert answer.status_code == 409 and "no mask" in answer.json()["error"]
    dicom = client.post(f"/sessions/{session}/accept?format=dicom")
    assert dicom.status_code == 409


def test_unknown_series_and_unreachable_or_refusing_orthanc(
    orthanc: OrthancServer, stored: tuple[PhantomSeries, str]
) -> None:
    body = {"series": "1.2.999.1", "points": [{"x": 1, "y": 1, "z": 1}]}
    answer = _client(orthanc).post("/segment", json=body)
    assert answer.status_code == 404 and "1.2.999.1" in answer.json()["error"]
    body["series"] = stored[0].uid
    down = TestClient(
        create_app(InteractiveConfig(orthanc_url=f"http://127.0.0.1:{free_port()}"))
    ).post("/segment", json=body)
    assert down.status_code == 502 and "does not answer" in down.json()["error"]
    refused = _client(orthanc, orthanc_password="wrong").post("/segment", json=body)
    assert refused.status_code == 502 and "credentials" in refused.json()["error"]
    assert _client(orthanc).get("/sessions").json() == {"sessions": []}


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_compressed_series_come_back_as_stored_and_decode(
    orthanc: OrthancServer, syntax: UID
) -> None:
    """WADO-RS asks for the stored transfer syntax: Orthanc cannot transcode every one."""
    series = phantom_series(Geometry(shape=(4, 32, 32), spacing=(2.5, 0.8, 0.8)), seed=4)
    for ds in series.datasets:
        ds.compress(syntax)
    client = OrthancClient(orthanc.url, orthanc.auth, parallel=3)
    series_id = orthanc.upload(series)
    # One WADO-RS answer (jobs) and instances fetched and decoded in parallel (clicks).
    for datasets in (client.series_datasets(series_id), client.series_datasets_parallel(series_id)):
        assert {ds.file_meta.TransferSyntaxUID for ds in datasets} == {syntax}
        volume = volume_from_datasets(datasets)
        np.testing.assert_array_equal(volume.array, series.phantom.image.astype(np.float32))
