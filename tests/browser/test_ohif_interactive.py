"""Interactive segmentation inside OHIF: the node's extension (plugin static
``ohif-ai-extension.js``, named in the generated app-config) on a real node with auth on.

A radiologist opens a phantom study in OHIF, sees its AI jobs, clicks on the sphere (at the
screen position cornerstone gives for the sphere's known centre), corrects with a background
click, undoes it, and accepts: the SEG the node stores matches the phantom's truth. The mask is
an OHIF segmentation: its labelmap, read from OHIF's own segmentationService and cornerstone's
cache (which OHIF puts on ``window`` for its own browser tests), matches the service's answer.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import io
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pytest
from dicom_readers import sort_by_position
from nodeharness import Node, start_node, wait_for, write_rules
from numpy.typing import NDArray
from PIL import Image
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Locator, Page, Response, expect

from ainode.node.orthanc_config import ohif_installed
from ainode.phantoms import SPHERE, Geometry, Phantom, SeriesIds, Sphere, make_phantom, write_series

pytestmark = [pytest.mark.integration, pytest.mark.browser]

RULES = """\
version: 1
mode: first-match
rules:
  - name: ai-seg
    when:
      Modality: CT
    pipeline: demo-phantom-onnx
    outputs: [SEG]
    destinations: [orthanc]
"""
PANEL = "#ainode-ai-panel"
WAIT_MS = 60_000  # for what the page shows next: generous, the machine may be loaded
# Added to the random-weight SAM 2 models (PyTorch and ONNX) that
# scripts/build_test_sam_models.py builds: a model whose files are missing. The picker offers
# all four and disables the one that does not load, with the service's reason.
MISSING_MODEL = """\
  sam-missing: {kind: sam-onnx, encoder: missing/encoder.onnx, decoder: missing/decoder.onnx}
"""
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Study:
    node: Node
    ids: SeriesIds
    phantom: Phantom


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Study]:
    assert ohif_installed(), "the OHIF viewer is not installed: run `make setup-test`"
    folder = tmp_path_factory.mktemp("ohif-node")
    subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "build_test_sam_models.py"),
            str(folder / "sam"),
            "--image-size",
            "256",
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    models = folder / "sam" / "interactive-models.yaml"
    models.write_text(models.read_text() + MISSING_MODEL)
    node = start_node(
        folder / "node",
        routing_rules=write_rules(folder / "rules.yaml", RULES),
        auth_enabled=True,
        interactive_models_file=models,
    )
    try:
        ids = SeriesIds(accession_number="OHIFAI1", study_description="OHIF AI phantom")
        # seed 3 on this grid: one sphere, nothing else (as the node's other browser tests)
        phantom = make_phantom(Geometry(shape=(24, 64, 64), spacing=(3.0, 1.0, 1.0)), seed=3)
        node.storescu(write_series(phantom, folder / "series", ids))

        def done() -> bool:
            jobs = node.json(f"/ai/jobs?series={ids.series_uid}")["jobs"]
            return bool(jobs) and jobs[0]["state"] in ("done", "failed")

        wait_for(done, 120, 0.5, "the phantom's AI job")
        yield Study(node, ids, phantom)
    finally:
        node.stop()


def _saturated(png: bytes) -> NDArray[np.bool_]:
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int32)
    saturated: NDArray[np.bool_] = rgb.max(axis=-1) - rgb.min(axis=-1) > 40
    return saturated


def _screenshot(locator: Locator) -> bytes | None:
    try:
        return locator.screenshot()
    except PlaywrightError:  # OHIF is re-rendering the element
        return None


def _red(png: bytes) -> int:
    """Pixels of the segment's colour (OHIF gives segment 1 red); the images are grey."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int32)
    return int((rgb[..., 0] - rgb[..., 1:].max(axis=-1) > 40).sum())


def _newly_coloured(locator: Locator, before: NDArray[np.bool_], minimum: int) -> int:
    """Coloured pixels more than ``before`` had (counts: OHIF's Segmentation panel opening
    resizes the viewport)."""

    def count() -> int:
        shot = _screenshot(locator)
        if shot is None:
            return 0
        n = int(_saturated(shot).sum()) - int(before.sum())
        return n if n >= minimum else 0

    return int(wait_for(count, 60, 0.5, f"at least {minimum} mask-coloured pixels"))


def _dismiss_ohif_prompts(page: Page) -> None:
    """OHIF's "investigational use" banner and first-visit tour, when they show."""
    for text in ("Confirm and hide", "Skip all"):
        button = page.get_by_text(text)
        if button.count():
            with contextlib.suppress(PlaywrightError):  # it went meanwhile
                button.first.click(timeout=5_000)


def _show_slice_and_locate(page: Page, position: list[float], world: list[float]) -> dict[str, Any]:
    """Show the image at ``position`` (ImagePositionPatient) in the active viewport (a stack,
    or an MPR view in the series' plane) and give where ``world`` (patient mm) is on the
    screen, from cornerstone's own camera."""
    located = page.evaluate(
        """([position, world]) => {
          const panel = window.ainodeOhif;
          const vp = panel && panel.viewport;
          if (!vp) { return null; }
          const metaData = panel.cornerstone().metaData;
          const ids = vp.getImageIds();
          const index = ids.findIndex(id => {
            const p = metaData.get('imagePlaneModule', id).imagePositionPatient;
            return p.every((v, i) => Math.abs(v - position[i]) < 0.01);
          });
          if (index < 0) { return null; }
          if (vp.setImageIdIndex) {  // a stack
            if (vp.getCurrentImageIdIndex() !== index) {
              vp.setImageIdIndex(index);
              return null;
            }
          } else {  // a volume: its slice indices are not the images' order; its camera says
            const { focalPoint, viewPlaneNormal } = vp.getCamera();
            const off = focalPoint.reduce(
              (sum, f, i) => sum + (f - position[i]) * viewPlaneNormal[i], 0);
            if (Math.abs(off) > 0.01) {
              vp.jumpToWorld(world);
              return null;
            }
          }
          const [cx, cy] = vp.worldToCanvas(world);
          const rect = vp.element.getBoundingClientRect();
          const x = rect.left + cx, y = rect.top + cy;
          const hit = document.elementFromPoint(x, y);
          return {x, y, onViewport: Boolean(hit && vp.element.contains(hit))};
        }""",
        [position, world],
    )
    return located  # type: ignore[no-any-return]


def _click_target(page: Page, geometry: Geometry, z: int, row: float, col: float) -> dict[str, Any]:
    position = [float(v) for v in geometry.position(z)]
    world = (
        geometry.position(z)
        + row * geometry.spacing[1] * np.asarray(geometry.column_direction)
        + col * geometry.spacing[2] * np.asarray(geometry.row_direction)
    )
    target: dict[str, Any] = wait_for(
        lambda: _show_slice_and_locate(page, position, [float(v) for v in world]),
        60,
        0.5,
        f"OHIF to show slice {z}",
    )
    assert target["onViewport"], "the panel covers the object"
    return target


def _background_click(page: Page, target: dict[str, Any]) -> Response:
    """A shift-click at ``target``; gives the service's (successful) answer."""
    with page.expect_response(lambda r: r.url.endswith("/ai/interactive/segment")) as answer:
        page.keyboard.down("Shift")
        page.mouse.click(target["x"], target["y"])
        page.keyboard.up("Shift")
    assert answer.value.ok, answer.value.text()
    return answer.value


def _open_viewer(page: Page, study: Study) -> Page:
    """OHIF on the study, its series shown, the AI panel following it, and the interactive
    service holding the series (the viewer asked for a prefetch when it opened it)."""
    node, ids = study.node, study.ids
    page.set_default_timeout(60_000)
    page.goto(f"{node.url}/ohif/viewer?StudyInstanceUIDs={ids.study_uid}")
    panel = page.locator(f"{PANEL}[data-series='{ids.series_uid}']")

    def ready() -> bool:
        _dismiss_ohif_prompts(page)
        return panel.count() == 1

    wait_for(ready, 120, 0.5, "OHIF to show the series and the AI panel to follow it")

    def no_banner() -> bool:
        _dismiss_ohif_prompts(page)
        return page.get_by_text("Confirm and hide").count() == 0

    wait_for(no_banner, 30, 0.5, "OHIF's banner to go")

    def held() -> bool:
        held = node.json("/ai/interactive/series")["series"]
        return any(s["series_uid"] == ids.series_uid for s in held)

    wait_for(held, 60, 0.5, "the interactive service to hold the opened series")
    return page


def _labelmap(page: Page, segmentation_id: str, geometry: Geometry) -> NDArray[np.bool_] | None:
    """The segmentation's labelmap as OHIF holds it, in the phantom's voxel order: each labelmap
    image goes to the phantom slice at its referenced image's position (cornerstone's metadata),
    its pixels row by row. None while OHIF has no such segmentation."""
    images = page.evaluate(
        """(id) => {
          const segmentation = window.services.segmentationService.getSegmentation(id);
          if (!segmentation) { return null; }
          const { cache, metaData } = window.cornerstone;
          const segments = Object.keys(segmentation.segments).map(Number);
          return segmentation.representationData.Labelmap.imageIds.map(imageId => {
            const image = cache.getImage(imageId);
            const plane = metaData.get('imagePlaneModule', image.referencedImageId);
            const data = image.voxelManager.getScalarData();
            const on = [];
            const values = new Set();
            for (let i = 0; i < data.length; i++) {
              if (data[i]) { on.push(i); values.add(data[i]); }
            }
            return {position: plane.imagePositionPatient, rows: image.rows,
                    columns: image.columns, on, values: [...values], segments};
          });
        }""",
        segmentation_id,
    )
    if images is None:
        return None
    shape = geometry.shape
    assert len(images) == shape[0], "one labelmap image per image of the series"
    positions = np.asarray([geometry.position(z) for z in range(shape[0])], dtype=float)
    volume = np.zeros(shape, dtype=bool)
    seen = set()
    for image in images:
        assert (image["rows"], image["columns"]) == shape[1:]
        assert len(image["segments"]) == 1, image["segments"]  # the object's one segment
        assert set(image["values"]) <= set(image["segments"]), image["values"]
        distance = np.abs(positions - np.asarray(image["position"], dtype=float)).max(axis=1)
        z = int(distance.argmin())
        assert distance[z] < 0.01 and z not in seen, image["position"]
        seen.add(z)
        volume[z].flat[image["on"]] = True
    return volume


def _segmentation_of(page: Page) -> str:
    segmentation_id = page.locator(PANEL).get_attribute("data-segmentation")
    assert segmentation_id, "the panel names the object's segmentation"
    return segmentation_id


def _segment_colour(page: Page, segmentation_id: str) -> list[int]:
    """The colour the viewer draws the segmentation's one segment in (RGBA)."""
    colour: list[int] = page.evaluate(
        """(id) => {
          const { segmentationService, viewportGridService } = window.services;
          const segment = Number(Object.keys(segmentationService.getSegmentation(id).segments)[0]);
          const viewportId = viewportGridService.getActiveViewportId();
          return [...segmentationService.getSegmentColor(viewportId, id, segment)];
        }""",
        segmentation_id,
    )
    return colour


def _labelmap_shows(
    page: Page, segmentation_id: str, geometry: Geometry, mask: NDArray[np.bool_]
) -> NDArray[np.bool_]:
    """Wait until OHIF's labelmap of the segmentation holds ``mask``; give it."""

    def shown() -> list[NDArray[np.bool_]]:
        labelmap = _labelmap(page, segmentation_id, geometry)
        return [labelmap] if labelmap is not None and np.array_equal(labelmap, mask) else []

    found: list[NDArray[np.bool_]] = wait_for(
        shown, 60, 0.5, f"OHIF's labelmap to hold the service's {int(mask.sum())} voxels"
    )
    return found[0]


def dice(a: NDArray[np.bool_], b: NDArray[np.bool_]) -> float:
    return float(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


def test_a_radiologist_segments_corrects_and_accepts_in_ohif(
    new_page: Callable[[tuple[str, str] | None], Page],
    study: Study,
    snapshot: Callable[[Page, str], None],
    tmp_path: Path,
) -> None:
    node, ids, phantom = study.node, study.ids, study.phantom
    geometry = phantom.geometry
    truth = phantom.labels == SPHERE
    sphere = next(s for s in phantom.shapes if isinstance(s, Sphere))
    z = round(sphere.centre_mm[0] / geometry.spacing[0])
    centre_row = sphere.centre_mm[1] / geometry.spacing[1]
    centre_col = sphere.centre_mm[2] / geometry.spacing[2]

    page = _open_viewer(new_page(node.auth), study)
    # The study's AI jobs, and the service's models in the picker.
    first_job = page.locator(".ainode-ai-job").first
    expect(first_job).to_contain_text("demo-phantom-onnx", timeout=WAIT_MS)
    model = page.locator("#ainode-ai-model")
    expect(model.locator("option")).to_have_count(
        4, timeout=WAIT_MS
    )  # regiongrow, sam2, sam-onnx, sam-missing
    expect(model).to_have_value("regiongrow", timeout=WAIT_MS)
    expect(page.locator("#ainode-ai-run")).to_be_enabled(timeout=WAIT_MS)

    viewport = page.locator(".cornerstone-viewport-element").first
    target = _click_target(page, geometry, z, centre_row, centre_col)
    before = _saturated(wait_for(lambda: _screenshot(viewport), 30, 0.5, "a viewport screenshot"))
    page.locator("#ainode-ai-tool").click()
    expect(page.locator("#ainode-ai-tool")).to_have_attribute(
        "aria-pressed", "true", timeout=WAIT_MS
    )

    # A model's files are missing: a click with it says why, and the picker then disables it
    # and goes back to a model that works.
    model.select_option("sam-missing")
    with page.expect_response(lambda r: r.url.endswith("/ai/interactive/segment")) as refused:
        page.mouse.click(target["x"], target["y"])
    assert refused.value.status == 503
    expect(page.locator("#ainode-ai-status")).to_contain_text("does not exist", timeout=WAIT_MS)
    expect(model.locator("option[value=sam-missing]")).to_be_disabled(timeout=WAIT_MS)
    expect(model).to_have_value("regiongrow", timeout=WAIT_MS)

    with page.expect_response(lambda r: r.url.endswith("/ai/interactive/segment")) as answer:
        page.mouse.click(target["x"], target["y"])
    assert answer.value.ok, answer.value.text()
    sent = answer.value.request.post_data_json
    assert sent is not None and len(sent["points"]) == 1
    point = sent["points"][0]
    assert point["z"] == z and point["label"] == 1, point
    assert abs(point["y"] - centre_row) <= 1 and abs(point["x"] - centre_col) <= 1, point
    first = answer.value.json()
    expect(page.locator(PANEL)).to_have_attribute(
        "data-voxels", str(first["voxels"]), timeout=WAIT_MS
    )
    # The mask is an OHIF segmentation of the series, shown on the viewport and listed in the
    # Segmentation panel; its labelmap is the service's mask, and the sphere.
    segmentation_id = _segmentation_of(page)
    first_mask = _decode(first["mask"])
    labelmap = _labelmap_shows(page, segmentation_id, geometry, first_mask)
    assert dice(labelmap, truth) >= 0.9
    shown_on = page.evaluate(
        """(id) => [window.services.viewportGridService.getActiveViewportId(),
                   window.services.segmentationService.getViewportIdsWithSegmentation(id),
                   window.services.segmentationService.getSegmentation(id).label]""",
        segmentation_id,
    )
    assert shown_on[0] in shown_on[1], shown_on
    expect(page.get_by_text(shown_on[2]).first).to_be_visible(timeout=WAIT_MS)
    _newly_coloured(viewport, before, 100)
    snapshot(page, "mask")
    # The mask is 3D: it is drawn on the sphere's other slices too.
    _click_target(page, geometry, z - 2, centre_row, centre_col)
    _newly_coloured(viewport, before, 100)

    # A background click near the sphere's edge takes part of the mask away; Undo gives it back.
    edge = _click_target(page, geometry, z, centre_row, centre_col + 0.6 * sphere.radius_mm)
    corrected = _background_click(page, edge)
    correction = corrected.request.post_data_json
    assert correction is not None
    labels = [p["label"] for p in correction["points"]]
    assert labels == [1, 0]
    assert corrected.json()["voxels"] < first["voxels"]
    # The same segmentation, its labelmap now the corrected mask.
    smaller = _labelmap_shows(page, segmentation_id, geometry, _decode(corrected.json()["mask"]))
    assert smaller.sum() < labelmap.sum()
    assert _segmentation_of(page) == segmentation_id
    snapshot(page, "corrected")
    with page.expect_response(lambda r: r.url.endswith("/ai/interactive/segment")) as undone:
        page.locator("#ainode-ai-undo").click()
    assert undone.value.ok and undone.value.json()["voxels"] == first["voxels"]
    expect(page.locator(PANEL)).to_have_attribute(
        "data-voxels", str(first["voxels"]), timeout=WAIT_MS
    )
    _labelmap_shows(page, segmentation_id, geometry, first_mask)

    segs_listed = page.locator("[data-cy=study-browser-thumbnail-no-image]", has_text="SEG")
    expect(segs_listed).to_have_count(1, timeout=WAIT_MS)  # the pipeline's
    page.locator("#ainode-ai-label").fill("Sphere (OHIF)")
    with page.expect_response(lambda r: r.url.endswith("/accept")) as accepted:
        page.locator("#ainode-ai-accept").click()
    assert accepted.value.ok, accepted.value.text()
    expect(page.locator("#ainode-ai-status")).to_contain_text(
        "Stored as a DICOM-SEG", timeout=WAIT_MS
    )
    expect(segs_listed).to_have_count(
        2, timeout=WAIT_MS
    )  # the viewer loaded the new SEG into the study
    snapshot(page, "accepted")
    segment_label = page.evaluate(
        "(id) => window.services.segmentationService.getSegmentation(id).segments[1].label",
        segmentation_id,
    )
    assert segment_label == "Sphere (OHIF)"  # the stored object keeps its segmentation
    seg_answer = accepted.value.json()["seg"]
    assert seg_answer["stored"] is True

    # The stored SEG, read back with highdicom, against the phantom's truth.
    path = tmp_path / "seg.dcm"
    node.instance(seg_answer["orthanc_id"]).save_as(path)
    seg = hd.seg.segread(path)
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    assert seg.SegmentSequence[0].SegmentLabel == "Sphere (OHIF)"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ids.series_uid
    sources = sort_by_position(
        [
            node.instance(instance)
            for instance in node.json(f"/series/{node.lookup(ids.series_uid)}")["Instances"]
        ]
    )
    mask = seg.get_pixels_by_source_instance(
        [str(ds.SOPInstanceUID) for ds in sources],
        combine_segments=True,
        assert_missing_frames_are_empty=True,
    ).astype(bool)
    assert mask.shape == truth.shape
    assert dice(mask, truth) >= 0.9

    # A new object from a box drawn around the sphere on the shown slice.
    page.locator("#ainode-ai-reset").click()
    expect(page.locator(PANEL)).not_to_have_attribute(
        "data-voxels", re.compile(".*"), timeout=WAIT_MS
    )
    half = sphere.radius_mm / geometry.spacing[1] + 3
    a = _click_target(page, geometry, z, centre_row - half, centre_col - half)
    b = _click_target(page, geometry, z, centre_row + half, centre_col + half)
    with page.expect_response(lambda r: r.url.endswith("/ai/interactive/segment")) as boxed:
        page.mouse.move(a["x"], a["y"])
        page.mouse.down()
        page.mouse.move(b["x"], b["y"], steps=5)
        page.mouse.up()
    assert boxed.value.ok, boxed.value.text()
    sent = boxed.value.request.post_data_json
    assert sent is not None and sent["points"] == []
    assert len(sent["boxes"]) == 1 and sent["boxes"][0]["z"] == z
    assert "session" not in sent  # a new object starts a new session
    boxed_mask = _decode(boxed.value.json()["mask"])
    assert dice(boxed_mask, truth) >= 0.85
    # ... and a segmentation of its own; the accepted object's stays.
    box_segmentation = _segmentation_of(page)
    assert box_segmentation != segmentation_id
    _labelmap_shows(page, box_segmentation, geometry, boxed_mask)
    assert _labelmap(page, segmentation_id, geometry) is not None
    # Drawn in a colour of its own.
    assert _segment_colour(page, box_segmentation) != _segment_colour(page, segmentation_id)
    snapshot(page, "box")
    # An object given up without accepting it takes its segmentation with it.
    page.locator("#ainode-ai-reset").click()
    wait_for(
        lambda: _labelmap(page, box_segmentation, geometry) is None,
        60,
        0.5,
        "the given-up object's segmentation to go",
    )
    assert _labelmap(page, segmentation_id, geometry) is not None

    # Run AI on the displayed series by hand: a job of that pipeline, listed with the study's.
    page.locator("#ainode-ai-pipeline").select_option("demo-phantom-onnx")
    with page.expect_response(lambda r: r.url.endswith("/run")) as ran:
        page.locator("#ainode-ai-run").click()
    assert ran.value.ok, ran.value.text()
    job = ran.value.json()
    assert job["pipeline"] == "demo-phantom-onnx" and job["series_uid"] == ids.series_uid
    expect(page.locator("#ainode-ai-run-status")).to_contain_text(
        "demo-phantom-onnx", timeout=WAIT_MS
    )
    assert any(j["id"] == job["id"] for j in node.json(f"/ai/jobs?study={ids.study_uid}")["jobs"])


def _decode(mask: dict[str, Any]) -> NDArray[np.bool_]:
    """The interactive API's packbits-gzip-base64 mask (worker/ainode_worker/interactive)."""
    shape = tuple(mask["shape"])
    bits = np.unpackbits(
        np.frombuffer(gzip.decompress(base64.b64decode(mask["data"])), dtype=np.uint8),
        count=int(np.prod(shape)),
    )
    return bits.reshape(shape).astype(bool)


def test_the_configured_sam_models_segment_from_the_ohif_panel(
    new_page: Callable[[tuple[str, str] | None], Page],
    study: Study,
    snapshot: Callable[[Page, str], None],
) -> None:
    """SAM 2 (PyTorch) and SAM-ONNX with random weights: what they segment means nothing, but
    the panel offers them, sends the click with the chosen model and shows the answer."""
    geometry = study.phantom.geometry
    sphere = next(s for s in study.phantom.shapes if isinstance(s, Sphere))
    z = round(sphere.centre_mm[0] / geometry.spacing[0])
    page = _open_viewer(new_page(study.node.auth), study)
    target = _click_target(
        page,
        geometry,
        z,
        sphere.centre_mm[1] / geometry.spacing[1],
        sphere.centre_mm[2] / geometry.spacing[2],
    )
    page.locator("#ainode-ai-tool").click()
    for name in ("sam-onnx", "sam2"):
        page.locator("#ainode-ai-model").select_option(name)
        with page.expect_response(lambda r: r.url.endswith("/ai/interactive/segment")) as answer:
            page.mouse.click(target["x"], target["y"])
        assert answer.value.ok, answer.value.text()
        result = answer.value.json()
        assert result["model"] == name
        assert result["shape"] == list(geometry.shape)
        expect(page.locator("#ainode-ai-status")).to_contain_text(
            f"{result['voxels']} voxels", timeout=WAIT_MS
        )
        snapshot(page, name)


def test_the_segmentation_shows_on_every_mpr_viewport(
    new_page: Callable[[tuple[str, str] | None], Page],
    study: Study,
    snapshot: Callable[[Page, str], None],
) -> None:
    """The object's segmentation follows the series into OHIF's MPR layout (three volume
    viewports): drawn on each, and a correction clicked in the axial view rewrites it."""
    geometry = study.phantom.geometry
    sphere = next(s for s in study.phantom.shapes if isinstance(s, Sphere))
    z = round(sphere.centre_mm[0] / geometry.spacing[0])
    row = sphere.centre_mm[1] / geometry.spacing[1]
    col = sphere.centre_mm[2] / geometry.spacing[2]
    page = _open_viewer(new_page(study.node.auth), study)
    target = _click_target(page, geometry, z, row, col)
    page.locator("#ainode-ai-tool").click()
    with page.expect_response(lambda r: r.url.endswith("/ai/interactive/segment")) as answer:
        page.mouse.click(target["x"], target["y"])
    assert answer.value.ok, answer.value.text()
    segmentation_id = wait_for(
        lambda: page.locator(PANEL).get_attribute("data-segmentation"),
        60,
        0.5,
        "the object's segmentation",
    )
    labelmap = _labelmap_shows(
        page, segmentation_id, geometry, _decode(answer.value.json()["mask"])
    )

    # What OHIF's layout button runs for MPR.
    page.evaluate("window.commandsManager.run('toggleHangingProtocol', {protocolId: 'mpr'})")

    def shown_on_three() -> list[str]:
        ids: list[str] = page.evaluate(
            """(id) => {
              const { viewportGridService, segmentationService } = window.services;
              const ids = [...viewportGridService.getState().viewports.keys()];
              return ids.length === 3 && ids.every(v => segmentationService
                .getSegmentationRepresentations(v).some(r => r.segmentationId === id))
                ? ids : [];
            }""",
            segmentation_id,
        )
        return ids

    wait_for(shown_on_three, 120, 0.5, "MPR's three viewports, each with the segmentation")
    views = page.locator(".cornerstone-viewport-element")
    expect(views).to_have_count(3, timeout=WAIT_MS)
    for i in range(3):
        view = views.nth(i)
        wait_for(
            lambda view=view: (shot := _screenshot(view)) is not None and _red(shot) >= 100,
            60,
            0.5,
            f"the segmentation drawn on MPR viewport {i}",
        )
    snapshot(page, "mpr")

    # A background click near the sphere's edge, in the axial view, cuts the same segmentation.
    wait_for(
        lambda: page.evaluate("window.ainodeOhif.viewport.type") != "stack",
        60,
        0.5,
        "the panel to follow the MPR viewport",
    )
    corrected = _background_click(
        page, _click_target(page, geometry, z, row, col + 0.6 * sphere.radius_mm)
    )
    sent = corrected.request.post_data_json
    assert sent is not None and [p["label"] for p in sent["points"]] == [1, 0]
    assert sent["points"][1]["z"] == z
    smaller = _labelmap_shows(page, segmentation_id, geometry, _decode(corrected.json()["mask"]))
    assert smaller.sum() < labelmap.sum()
    snapshot(page, "mpr-corrected")
