"""People see and drive the node in a browser: OHIF, the AI dashboard, Orthanc Explorer's AI
panel and the interactive segmentation page, against one real node with authentication on.

One node serves the module. Two phantom series are pushed by storescu at the start: one that a
rule sends to the fast ONNX demo model (its SEG is what OHIF must show) and one that a rule sends
to a model whose weights are missing here, so its job fails (what the dashboard retries).
"""

from __future__ import annotations

import base64
import gzip
import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pytest
from dicom_readers import read_seg_numbers_with_dcmqi, sort_by_position
from nodeharness import Node, start_node, wait_for, write_rules
from numpy.typing import NDArray
from PIL import Image
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Locator, Page, expect
from prometheus_client.parser import text_string_to_metric_families

from ainode.node.orthanc_config import ohif_installed
from ainode.phantoms import SPHERE, Geometry, Phantom, SeriesIds, make_phantom, write_series

pytestmark = [pytest.mark.integration, pytest.mark.browser]

RULES = """\
version: 1
mode: first-match
rules:
  - name: ai-fails
    when:
      SeriesDescription: Failing CT
    pipeline: totalseg-organs
  - name: ai-seg
    when:
      all:
        - Modality: CT
        - InstanceCount: {ge: 10}
    pipeline: demo-phantom-onnx
    outputs: [SEG]
    destinations: [orthanc]
"""


@dataclass
class Pushed:
    ids: SeriesIds
    phantom: Phantom
    series_id: str  # Orthanc's
    job: dict[str, Any]


@dataclass
class UiNode:
    node: Node
    segmented: Pushed  # its job is done: a SEG of the ONNX model's "Object" is in Orthanc
    failed: Pushed  # its job failed: the model's weights are missing


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiNode]:
    assert ohif_installed(), "the OHIF viewer is not installed: run `make setup-test`"
    folder = tmp_path_factory.mktemp("ui-node")
    node = start_node(
        folder / "node",
        routing_rules=write_rules(folder / "rules.yaml", RULES),
        auth_enabled=True,
    )
    try:
        segmented = _push(
            node,
            folder,
            SeriesIds(
                accession_number="AISEG1", study_description="Abdomen phantom", series_number=3
            ),
            "done",
        )
        failed = _push(
            node,
            folder,
            SeriesIds(
                accession_number="AIFAIL1",
                series_description="Failing CT",
                study_description="Failing phantom",
            ),
            "failed",
        )
        yield UiNode(node, segmented, failed)
    finally:
        node.stop()


def _push(node: Node, folder: Path, ids: SeriesIds, state: str) -> Pushed:
    phantom = make_phantom(Geometry(shape=(24, 64, 64), spacing=(3.0, 1.0, 1.0)), seed=3)
    node.storescu(write_series(phantom, folder / ids.accession_number, ids))

    def finished() -> dict[str, Any] | None:
        jobs = [j for j in node.json(f"/ai/jobs?series={ids.series_uid}")["jobs"]]
        return jobs[0] if jobs and jobs[0]["state"] in ("done", "failed") else None

    job = wait_for(finished, 90, 0.3, f"the job of series {ids.accession_number}")
    assert job["state"] == state, job
    return Pushed(ids, phantom, job["series_id"], job)


@pytest.fixture
def page(new_page: Callable[[tuple[str, str] | None], Page], ui: UiNode) -> Page:
    return new_page(ui.node.auth)


def _saturated(png: bytes) -> NDArray[np.bool_]:
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int32)
    saturated: NDArray[np.bool_] = rgb.max(axis=-1) - rgb.min(axis=-1) > 40
    return saturated


def coloured_pixels(png: bytes, before: bytes | None = None) -> int:
    """Pixels of a segmentation colour (any saturated hue) on a grey image; with ``before``, a
    screenshot of the same view, only those that were not coloured then (the viewer's own
    coloured text and markers stay out of the count)."""
    now = _saturated(png)
    if before is not None:
        was = _saturated(before)
        if was.shape == now.shape:
            now &= ~was
    return int(now.sum())


def stable_screenshot(locator: Locator) -> bytes | None:
    """A screenshot, or None while OHIF is re-rendering the element (it is then detached)."""
    try:
        return locator.screenshot()
    except PlaywrightError:
        return None


def wait_for_overlay(locator: Locator, minimum: int, before: bytes | None = None) -> int:
    def coloured() -> int:
        shot = stable_screenshot(locator)
        n = coloured_pixels(shot, before) if shot else 0
        return n if n >= minimum else 0

    return int(wait_for(coloured, 30, 0.5, f"at least {minimum} segmentation-coloured pixels"))


def scroll_to_middle_slice(page: Page, viewport: Locator, slices: int) -> None:
    """Wheel through the stack to its middle image: the phantom's objects lie inside the grid,
    not on its first or last slice, where OHIF opens."""
    wanted = f"({slices // 2 + 1}/{slices})"
    # Opening a SEG re-renders the viewport: until it is laid out again it has no box.
    box = wait_for(viewport.bounding_box, 30, 0.2, "the viewport to be laid out")
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)

    def there() -> bool:
        if page.get_by_text(wanted).count():
            return True
        shown = page.get_by_text(re.compile(rf"\(\d+/{slices}\)")).first.inner_text()
        current = int(re.search(rf"\((\d+)/{slices}\)", shown).group(1))  # type: ignore[union-attr]
        page.mouse.wheel(0, 100 if current < slices // 2 + 1 else -100)
        return False

    wait_for(there, 20, 0.2, f"OHIF to show image {wanted}")


def dice(a: NDArray[np.bool_], b: NDArray[np.bool_]) -> float:
    return float(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


# -- OHIF ---------------------------------------------------------------------------------


def test_ohif_opens_the_pushed_study_and_shows_its_ai_segmentation(
    page: Page, ui: UiNode, snapshot: Callable[[Page, str], None]
) -> None:
    page.goto(f"{ui.node.url}/ohif/")
    page.get_by_text("Confirm and hide").click()  # OHIF's "investigational use" banner
    # the study list shows descriptions: OHIF asks Orthanc for them with includefield
    expect(page.get_by_text("Abdomen phantom").first).to_be_visible()
    expect(page.get_by_text("Failing phantom").first).to_be_visible()
    snapshot(page, "study-list")
    page.get_by_text(ui.segmented.ids.accession_number).first.click()  # study list row
    page.get_by_role("button", name="Basic Viewer").click()
    page.get_by_text("Skip all").click()  # OHIF's first-visit tour
    assert ui.segmented.ids.study_uid in page.url
    viewport = page.locator(".cornerstone-viewport-element").first
    expect(page.locator("[data-cy=viewport-overlay-top-left]").first).to_contain_text("Phantom CT")
    scroll_to_middle_slice(page, viewport, ui.segmented.phantom.geometry.shape[0])
    before = wait_for(lambda: stable_screenshot(viewport), 10, 0.5, "a viewport screenshot")

    # the thumbnail's first words name the output kind and the model
    seg = page.locator("[data-cy=study-browser-thumbnail-no-image]", has_text="SEG demo-phantom-o")
    expect(seg).to_have_count(1)
    seg.dblclick()
    page.get_by_role("button", name="Yes").click()  # "Do you want to open this Segmentation?"
    scroll_to_middle_slice(page, viewport, ui.segmented.phantom.geometry.shape[0])
    wait_for_overlay(viewport, 1000, before)
    page.locator("[data-cy=panelSegmentation-btn]").click()  # the segments, named by the SEG
    expect(page.get_by_text("Object", exact=True)).to_be_visible()


# -- the AI dashboard ---------------------------------------------------------------------


def test_dashboard_lists_the_jobs_and_retry_runs_a_failed_job_again(page: Page, ui: UiNode) -> None:
    failed, done = ui.failed.job, ui.segmented.job
    page.goto(f"{ui.node.url}/ai/ui/")
    done_row = page.locator(f"#jobs tr[data-job='{done['id']}']")
    expect(done_row).to_have_attribute("data-state", "done")
    expect(done_row).to_contain_text("demo-phantom-onnx")
    expect(done_row).to_contain_text("SEG")
    failed_row = page.locator(f"#jobs tr[data-job='{failed['id']}']")
    expect(failed_row).to_have_attribute("data-state", "failed")
    expect(failed_row.locator("td.error")).to_contain_text("weights")
    expect(page.locator("#models tr[data-model='totalseg-organs']")).to_contain_text("no")
    expect(page.locator("#models tr[data-model='demo-phantom-onnx']")).to_contain_text("yes")
    expect(page.locator("#rules tr[data-rule='ai-fails'] td.num")).to_have_text("1")
    expect(page.locator("#rules tr[data-rule='ai-seg'] td.num")).to_have_text("1")
    expect(page.locator("#worker-count")).not_to_have_text("0")
    # which series each job is on, as a person tells them apart
    series = done_row.locator("td.series")
    expect(series).to_contain_text("#3 Phantom CT")
    expect(series).to_contain_text("CT · 24 images")
    expect(series).to_contain_text("2026-01-01 · Abdomen phantom")
    expect(failed_row.locator("td.series")).to_contain_text("#1 Failing CT")
    expect(failed_row.locator("td.series")).to_contain_text("2026-01-01 · Failing phantom")
    _shows_no_patient_attribute(page.locator("main"))

    failed_row.locator("button.retry").click()
    expect(page.locator("#message")).to_contain_text("retry requested")
    # the message follows the job: it fails again (the weights are still missing)
    expect(page.locator("#message")).to_contain_text("it failed: ", timeout=60_000)
    # The worker runs it again (attempt 2) and it fails again; the table follows by itself.
    expect(failed_row.locator("td").nth(6)).to_have_text("2", timeout=60_000)
    expect(failed_row).to_have_attribute("data-state", "failed")
    job = ui.node.json(f"/ai/jobs/{failed['id']}")
    assert (job["state"], job["attempts"]) == ("failed", 2)


# -- Orthanc Explorer ---------------------------------------------------------------------


def test_explorer_shows_a_series_ai_jobs_and_runs_ai_on_it(page: Page, ui: UiNode) -> None:
    page.goto(f"{ui.node.url}/app/explorer.html")
    expect(page.locator("#ainode-dashboard-link")).to_have_attribute("href", "../ai/ui/")

    page.goto(f"{ui.node.url}/app/explorer.html#series?uuid={ui.segmented.series_id}")
    box = page.locator("#ainode-series")
    summary = page.locator("#ainode-series-summary")
    expect(summary).to_contain_text("#3 Phantom CT · CT · 24 images")
    expect(summary).to_contain_text("2026-01-01 · Abdomen phantom")
    _shows_no_patient_attribute(box)
    jobs = page.locator("#ainode-jobs-table")
    expect(jobs.locator(f"tr[data-job='{ui.segmented.job['id']}']")).to_have_attribute(
        "data-state", "done"
    )
    expect(page.locator("#ainode-series-ohif")).to_have_attribute(
        "href", f"../ohif/viewer?StudyInstanceUIDs={ui.segmented.ids.study_uid}"
    )
    expect(page.locator("#ainode-series-interactive")).to_have_attribute(
        "href", f"../ai/ui/interactive.html?series={ui.segmented.series_id}"
    )
    expect(page.locator("#ainode-series-dashboard")).to_have_attribute("href", "../ai/ui/")
    # a model that reads CT but whose weights are missing is offered with its reason, disabled
    unavailable = page.locator("#ainode-pipeline option[value='totalseg-organs']")
    expect(unavailable).to_be_disabled()
    expect(unavailable).to_contain_text("not available here")

    page.locator("#ainode-pipeline").select_option("demo-phantom-onnx")
    page.locator("#ainode-run").click()
    message = page.locator("#ainode-run-message")
    expect(message).to_contain_text(re.compile(r"Job (queued|running|done)"))
    manual = jobs.locator("tr", has_text="manual:demo-phantom-onnx")
    expect(manual).to_have_attribute("data-state", "done", timeout=90_000)
    # the message followed the job to its end, it did not stay at "queued"
    expect(message).to_contain_text("Job done: 1 result(s) stored")
    runs = ui.node.json(f"/ai/series/{ui.segmented.series_id}/jobs")["jobs"]
    assert {j["decided_by"] for j in runs} == {"ai-seg", "manual:demo-phantom-onnx"}


def test_explorer_offers_no_run_ai_on_a_result_series(page: Page, ui: UiNode) -> None:
    seg_instance = ui.segmented.job["outputs"][0]
    seg_series = ui.node.json(f"/instances/{seg_instance}")["ParentSeries"]
    page.goto(f"{ui.node.url}/app/explorer.html#series?uuid={seg_series}")
    summary = page.locator("#ainode-series-summary")
    expect(summary).to_contain_text(re.compile(r"#9\d{3} SEG demo-phantom-onnx \(ai-seg\)"))
    expect(summary).to_contain_text("SEG · 1 image")
    expect(summary).to_contain_text("2026-01-01 · Abdomen phantom")
    expect(page.locator("#ainode-no-run")).to_have_text(
        "Run AI is not offered for this series: this is a SEG series, not images a model can read."
    )
    expect(page.locator("#ainode-run-item")).to_be_hidden()


# -- interactive segmentation -------------------------------------------------------------


def test_interactive_picker_lists_series_a_person_can_tell_apart(
    page: Page, ui: UiNode, snapshot: Callable[[Page, str], None]
) -> None:
    page.goto(f"{ui.node.url}/ai/ui/interactive.html")
    listed = page.locator("#series-list tbody tr[data-series]")
    segmented = page.locator(f"#series-list tr[data-series='{ui.segmented.series_id}']")
    failed = page.locator(f"#series-list tr[data-series='{ui.failed.series_id}']")
    cells = ["2026-01-01", "Abdomen phantom", "3", "Phantom CT", "CT", "24"]
    expect(segmented.locator("td")).to_have_text(cells)
    cells = ["2026-01-01", "Failing phantom", "1", "Failing CT", "CT", "24"]
    expect(failed.locator("td")).to_have_text(cells)
    # image series only: the SEG results the node wrote are no series to click into
    for row in listed.all():
        expect(row.locator("td").nth(4)).not_to_have_text("SEG")
    _shows_no_patient_attribute(page.locator("main"))
    snapshot(page, "list")
    segmented.locator("a").click()
    expect(page.locator("#series-title")).to_contain_text(
        "#3 Phantom CT · CT · 24 images · 2026-01-01 · Abdomen phantom"
    )


def test_interactive_page_segments_the_clicked_organ_and_stores_a_seg(
    page: Page, ui: UiNode
) -> None:
    truth = ui.segmented.phantom.labels == SPHERE  # seed 3: one sphere, nothing else
    z = int(np.argmax(truth.sum(axis=(1, 2))))  # the slice where the sphere is largest
    rows, cols = np.nonzero(truth[z])
    nearest = int(np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2))
    y, x = int(rows[nearest]), int(cols[nearest])
    slices, height, width = truth.shape

    page.goto(f"{ui.node.url}/ai/ui/interactive.html?series={ui.segmented.series_id}")
    page.locator("body[data-ready]").wait_for(state="attached")
    canvas = page.locator("#canvas")
    canvas.focus()
    shown = slices // 2
    key = "ArrowDown" if z > shown else "ArrowUp"
    for _ in range(abs(z - shown)):
        page.keyboard.press(key)
    expect(page.locator("#slice-label")).to_have_text(f"{z + 1} / {slices}")
    assert coloured_pixels(canvas.screenshot()) == 0

    box = canvas.bounding_box()
    assert box is not None
    with page.expect_response(lambda r: r.url.endswith("/ai/interactive/segment")) as answer:
        page.mouse.click(
            box["x"] + (x + 0.5) / width * box["width"],
            box["y"] + (y + 0.5) / height * box["height"],
        )
    assert answer.value.ok, answer.value.text()
    result = answer.value.json()
    sent = answer.value.request.post_data_json
    assert sent is not None and sent["points"] == [{"x": x, "y": y, "z": z, "label": 1}]
    mask = _decode(result["mask"])
    assert mask.shape == truth.shape
    assert dice(mask, truth) >= 0.85
    expect(page.locator("#voxels")).to_have_text(f"{int(mask.sum())} voxels")
    wait_for_overlay(canvas, 200)

    page.locator("#label").fill("Sphere (clicked)")
    with page.expect_response(lambda r: r.url.endswith("/accept")) as accepted:
        page.locator("#accept").click()
    expect(page.locator("#stored-message")).to_contain_text("Stored as a DICOM-SEG")
    seg = accepted.value.json()["seg"]
    assert seg["stored"] is True
    series = ui.node.json(f"/series/{seg['orthanc_series']}")
    assert series["MainDicomTags"]["Modality"] == "SEG"
    tags = ui.node.json(f"/instances/{seg['orthanc_id']}/tags?simplify")
    assert tags["SegmentSequence"][0]["SegmentLabel"] == "Sphere (clicked)"
    assert tags["ReferencedSeriesSequence"][0]["SeriesInstanceUID"] == ui.segmented.ids.series_uid

    # The plugin timed both forwarded requests for Prometheus.
    metrics = ui.node.get("/ai/metrics").text
    timed = {
        (sample.labels["route"], sample.labels["status"]): sample.value
        for family in text_string_to_metric_families(metrics)
        if family.name == "ainode_interactive_request_seconds"
        for sample in family.samples
        if sample.name.endswith("_count")
    }
    assert timed[("segment", "2xx")] >= 1 and timed[("accept", "2xx")] >= 1


def _shows_no_patient_attribute(area: Locator) -> None:
    """The phantoms' patient name, ID and birth date (SeriesIds' defaults) appear nowhere."""
    shown = area.inner_text()
    defaults = SeriesIds()
    for secret in (
        defaults.patient_name,
        defaults.patient_name.replace("^", " "),
        defaults.patient_id,
        defaults.patient_birth_date,
        "1970-01-01",
    ):
        assert secret not in shown, secret


def _decode(mask: dict[str, Any]) -> NDArray[np.bool_]:
    """The interactive API's packbits-gzip-base64 mask (worker/ainode_worker/interactive)."""
    shape = tuple(mask["shape"])
    bits = np.unpackbits(
        np.frombuffer(gzip.decompress(base64.b64decode(mask["data"])), dtype=np.uint8),
        count=int(np.prod(shape)),
    )
    return bits.reshape(shape).astype(bool)


# -- every SEG the node stored, read by a second reader ----------------------------------------


def test_every_stored_seg_reads_the_same_in_dcmqi_and_highdicom(ui: UiNode, tmp_path: Path) -> None:
    """The pipelines' SEGs and the interactive page's accepted SEG (when that test ran first):
    dcmqi, the reader 3D Slicer uses, places every voxel where highdicom does."""
    segs = [s for s in ui.node.json("/series?expand") if s["MainDicomTags"]["Modality"] == "SEG"]
    assert segs, "the node stored no SEG"
    for number, series in enumerate(segs):
        path = tmp_path / f"seg{number}.dcm"
        ui.node.instance(series["Instances"][0]).save_as(path)
        seg = hd.seg.segread(path)
        source_uid = seg.ReferencedSeriesSequence[0].SeriesInstanceUID
        sources = sort_by_position(
            [
                ui.node.instance(instance)
                for instance in ui.node.json(f"/series/{ui.node.lookup(source_uid)}")["Instances"]
            ]
        )
        uids = [str(ds.SOPInstanceUID) for ds in sources]
        by_highdicom = seg.get_pixels_by_source_instance(
            uids, combine_segments=True, assert_missing_frames_are_empty=True
        )
        by_dcmqi = read_seg_numbers_with_dcmqi(path, sources, tmp_path / f"dcmqi{number}")
        assert by_dcmqi.any(), series["MainDicomTags"].get("SeriesDescription")
        assert np.array_equal(by_dcmqi, by_highdicom), series["MainDicomTags"]
