"""A remote PACS that is down when results are ready: the job fails naming that destination,
the rest is delivered, and a retry once the PACS is back sends the stored results there
without running the model again, and without sending anything twice.

The PACS is DCMTK's storescp on a port of the test's own (nothing listens there at first).
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from dicompeers import start_storescp, stop
from nodeharness import ONNX_RULES, free_port, start_node, write_phantom, write_rules

pytestmark = [pytest.mark.integration, pytest.mark.fault]

PACS_AET = "REMOTEPACS"
RULES = ONNX_RULES.replace("destinations: [orthanc]", 'destinations: [orthanc, "dicom:PACS"]')


def test_pacs_down_fails_the_job_with_the_reason_and_a_retry_delivers_without_recompute(
    tmp_path: Path,
) -> None:
    pacs_port = free_port()
    rules = write_rules(tmp_path / "rules.yaml", RULES)
    node = start_node(
        tmp_path / "node",
        routing_rules=rules,
        remote_modalities={"PACS": {"aet": PACS_AET, "host": "127.0.0.1", "port": pacs_port}},
    )
    pacs = None
    try:
        paths, ids = write_phantom(tmp_path / "ct", 12, seed=41)
        node.storescu(paths)
        job = node.wait_for_run(ids.series_uid, timeout_s=120)
        assert job["state"] == "failed", job
        assert job["error"].startswith("dicom:PACS: "), job["error"]
        statuses = {s["destination"]["kind"]: s for s in job["destinations"]}
        assert statuses["orthanc"]["state"] == "sent"
        assert statuses["dicom"]["state"] == "failed" and statuses["dicom"]["error"], statuses
        assert len(node.study_series(ids.study_uid, "SEG")) == 1, "orthanc got its results"
        first_results = job["detail"]["results"]

        pacs = start_storescp(tmp_path / "pacs", pacs_port, "-aet", PACS_AET)
        answer = node.post(f"/ai/jobs/{job['id']}/retry")
        assert answer.status_code == 200, answer.text
        retried = node.wait_for_run(ids.series_uid, timeout_s=120)
        assert retried["state"] == "done", retried["error"]
        assert retried["id"] == job["id"]
        assert retried["detail"].get("reused_results") is True, "the model ran again"
        assert retried["detail"]["results"] == first_results, "other results than the first run"
        assert {s["state"] for s in retried["destinations"]} == {"sent"}
        received = [pydicom.dcmread(p) for p in sorted(pacs.folder.iterdir()) if p.is_file()]
        assert sorted(str(ds.SOPInstanceUID) for ds in received) == sorted(
            first_results.values()
        ), "the PACS must get each result exactly once"
        assert sorted(ds.Modality for ds in received) == ["RTSTRUCT", "SEG"]
        assert len(node.study_series(ids.study_uid, "SEG")) == 1, "no second SEG in orthanc"
        assert len(node.runs(ids.series_uid)) == 1
    finally:
        if pacs is not None:
            stop(pacs.process)
        node.stop()
