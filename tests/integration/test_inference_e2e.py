"""The nnU-Net demo model end to end on a real node, and the inputs it must refuse.

One node with the default routing rules (CT series of 10 or more images -> ``demo-phantom``,
SEG and RTSTRUCT stored back into Orthanc). The SEG is read back from Orthanc with highdicom
and compared with the phantom's truth and with nnU-Net's own predictor run here on the same
voxels, so neither the worker's volume code nor its exporter can hide an error. Bad series each
end as a ``failed`` job whose error names the problem, and the worker goes on serving.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from dicom_readers import read_seg_numbers_with_dcmqi, sort_by_position
from nodeharness import Node, start_node

from ainode.phantoms import (
    BOX,
    SPHERE,
    Geometry,
    Phantom,
    SeriesIds,
    make_phantom,
    phantom_datasets,
)
from ainode.registry import load_registry
from ainode.settings import Settings

pytestmark = pytest.mark.integration

GEOMETRY = Geometry(shape=(48, 64, 64))
# Segmented property type codes of the demo model's labels -> the phantom's truth label values:
# DCM 122485 Sphere, SCT 706342009 Phantom (the box).
LABEL_OF_CODE = {"122485": SPHERE, "706342009": BOX}
RUN_TIMEOUT_S = 240.0


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A node with the default rules and registry (the repository's own files)."""
    node = start_node(tmp_path_factory.mktemp("inference") / "node")
    yield node
    node.stop()


@pytest.fixture(scope="module")
def worker_pid(node: Node) -> int:
    """The worker process before any bad input was sent."""
    return int(node.pid("worker"))


def write_datasets(folder: Path, datasets: list[pydicom.Dataset]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, dataset in enumerate(datasets):
        path = folder / f"IM{index:05d}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@dataclass
class Pushed:
    phantom: Phantom
    ids: SeriesIds
    job: dict[str, Any]


def push_phantom(node: Node, folder: Path, seed: int) -> Pushed:
    """A phantom with spheres and a box (both labels scored), pushed and run by the rules."""
    phantom = make_phantom(GEOMETRY, seed=seed, require=(SPHERE, BOX))
    ids = SeriesIds()
    node.storescu(write_datasets(folder, list(phantom_datasets(phantom, ids))))
    return Pushed(phantom, ids, node.wait_for_run(ids.series_uid, timeout_s=RUN_TIMEOUT_S))


@pytest.fixture(scope="module")
def good(node: Node, worker_pid: int, tmp_path_factory: pytest.TempPathFactory) -> Pushed:
    return push_phantom(node, tmp_path_factory.mktemp("good"), seed=3)


def seg_label_map(node: Node, pushed: Pushed) -> npt.NDArray[np.uint8]:
    """The job's SEG, fetched from Orthanc and read by highdicom, on the source slices in
    position order (the phantom's voxel order), with the phantom's label values."""
    segs = []
    for instance_id in pushed.job["outputs"]:
        response = node.get(f"/instances/{instance_id}/file")
        response.raise_for_status()
        dataset = pydicom.dcmread(BytesIO(response.content))
        if dataset.Modality == "SEG":
            segs.append(hd.seg.Segmentation.from_dataset(dataset))
    assert len(segs) == 1, f"expected one SEG among the outputs {pushed.job['outputs']}"
    seg = segs[0]
    source_uids = _source_uids_in_position_order(node, pushed.ids.series_uid)
    numbers = seg.get_pixels_by_source_instance(
        source_uids,
        combine_segments=True,
        assert_missing_frames_are_empty=True,
    )
    out = np.zeros(numbers.shape, dtype=np.uint8)
    for item in seg.SegmentSequence:
        code = str(item.SegmentedPropertyTypeCodeSequence[0].CodeValue)
        out[numbers == int(item.SegmentNumber)] = LABEL_OF_CODE[code]
    return out


def _source_uids_in_position_order(node: Node, series_uid: str) -> list[str]:
    instances = node.json(f"/series/{node.lookup(series_uid)}/instances")
    by_z = sorted(
        (float(i["MainDicomTags"]["ImagePositionPatient"].split("\\")[2]), i) for i in instances
    )
    return [str(i["MainDicomTags"]["SOPInstanceUID"]) for _, i in by_z]


def dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


# -- the normal path ---------------------------------------------------------------------------


def test_phantom_gets_a_done_job_with_a_seg_and_an_rtstruct(node: Node, good: Pushed) -> None:
    assert good.job["state"] == "done", good.job["error"]
    assert (good.job["rule"], good.job["pipeline"]) == ("ct-demo", "demo-phantom")
    modalities = sorted(node.instance(i).Modality for i in good.job["outputs"])
    assert modalities == ["RTSTRUCT", "SEG"]


def test_seg_read_back_matches_the_truth_in_the_source_geometry(
    node: Node, good: Pushed, tmp_path: Path
) -> None:
    labels = seg_label_map(node, good)
    assert labels.shape == good.phantom.labels.shape
    for value in (1, 2):
        score = dice(labels == value, good.phantom.labels == value)
        assert score >= 0.90, f"label {value}: Dice {score:.3f}"
    # dcmqi (3D Slicer's SEG reader) places every voxel where highdicom does
    (seg,) = [d for d in map(node.instance, good.job["outputs"]) if d.Modality == "SEG"]
    path = tmp_path / "seg.dcm"
    seg.save_as(path)
    sources = sort_by_position(
        [node.instance(i) for i in node.json(f"/series/{good.job['series_id']}")["Instances"]]
    )
    numbers = read_seg_numbers_with_dcmqi(path, sources, tmp_path / "dcmqi")
    values = {
        int(item.SegmentNumber): LABEL_OF_CODE[
            str(item.SegmentedPropertyTypeCodeSequence[0].CodeValue)
        ]
        for item in seg.SegmentSequence
    }
    by_dcmqi = np.zeros(numbers.shape, dtype=np.uint8)
    for number, value in values.items():
        by_dcmqi[numbers == number] = value
    assert np.array_equal(by_dcmqi, labels)


@pytest.fixture(scope="module")
def bare_predictor() -> Any:
    """nnU-Net's own predictor on the demo model, with the registry's defaults."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    registry = load_registry(Settings().models_registry)
    spec = registry.get("demo-phantom")
    weights = registry.weights_path(spec)
    assert weights is not None
    predictor = nnUNetPredictor(
        tile_step_size=spec.defaults.tile_step_size,
        use_gaussian=True,
        use_mirroring=spec.defaults.tta,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        verbose=False,
        allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(
        str(weights),
        use_folds=tuple(spec.defaults.folds),
        checkpoint_name=spec.defaults.checkpoint_name,
    )
    return predictor


def assert_labels_equal_the_bare_predictor(node: Node, pushed: Pushed, bare_predictor: Any) -> None:
    image = pushed.phantom.image.astype(np.float32)[None]  # HU: what the rescale gives
    expected = np.asarray(
        bare_predictor.predict_single_npy_array(
            image, {"spacing": list(GEOMETRY.spacing)}, None, None, False
        )
    )
    labels = seg_label_map(node, pushed)
    differing = int(np.sum(labels != expected))
    assert differing == 0, f"{differing} voxels differ from nnUNetPredictor's own output"


def test_worker_labels_equal_nnunets_own_predictor(
    node: Node, good: Pushed, bare_predictor: Any
) -> None:
    """The worker adds nothing and loses nothing between nnU-Net and the stored SEG."""
    assert_labels_equal_the_bare_predictor(node, good, bare_predictor)


# -- bad input ---------------------------------------------------------------------------------

Mutate = Callable[[list[pydicom.Dataset]], list[pydicom.Dataset]]


def _phantom(slices: int = 16, modality: str = "CT", seed: int = 7) -> list[pydicom.Dataset]:
    geometry = Geometry(shape=(slices, 32, 32), spacing=(3.0, 1.5, 1.5))
    return list(phantom_datasets(make_phantom(geometry, seed=seed), SeriesIds(), modality=modality))


def _position(ds: pydicom.Dataset) -> list[float]:
    return [float(v) for v in ds.ImagePositionPatient]


def _set_position(ds: pydicom.Dataset, xyz: list[float]) -> None:
    ds.ImagePositionPatient = [f"{v:.6g}" for v in xyz]


def mixed_orientation(datasets: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    datasets[5].ImageOrientationPatient = ["1", "0", "0", "0", "0.996195", "-0.0871557"]
    return datasets


def missing_slice(datasets: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    return datasets[:8] + datasets[10:]


def duplicated_position(datasets: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    _set_position(datasets[6], _position(datasets[5]))
    return datasets


def non_uniform_spacing(datasets: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    xyz = _position(datasets[6])
    _set_position(datasets[6], [xyz[0], xyz[1], xyz[2] + 0.9])  # gaps 3.9 and 2.1 mm
    return datasets


def localizer(datasets: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    for ds in datasets:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    return datasets


def gantry_tilt(datasets: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    shear = np.tan(np.radians(15.0)) * 3.0  # mm per slice
    for index, ds in enumerate(datasets):
        xyz = _position(ds)
        _set_position(ds, [xyz[0], xyz[1] + index * shear, xyz[2]])
    return datasets


def truncated_pixels(datasets: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    data = datasets[4].PixelData
    datasets[4].PixelData = data[: len(data) // 2]
    return datasets


def inconsistent_size(datasets: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    ds = datasets[3]
    pixels = np.frombuffer(ds.PixelData, dtype=np.uint16).reshape(ds.Rows, ds.Columns)
    ds.Rows, ds.Columns = 16, 16
    ds.PixelData = np.ascontiguousarray(pixels[:16, :16]).tobytes()
    return datasets


def inconsistent_pixel_spacing(datasets: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    datasets[2].PixelSpacing = ["1.2", "1.2"]
    return datasets


def two_frames_of_reference(datasets: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    for ds in datasets[8:]:
        ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.99999999999"
    return datasets


def no_position(datasets: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    del datasets[7].ImagePositionPatient
    return datasets


def unchanged(datasets: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    return datasets


@dataclass(frozen=True)
class BadCase:
    """A bad series, and how it is run: by the rules (storescu), or by hand on ``pipeline``."""

    build: Callable[[], list[pydicom.Dataset]]
    expected: str
    pipeline: str | None = None  # None: the default rule runs it
    status: int = 200  # the answer to POST /ai/series/{id}/run when run by hand


BAD_CASES: dict[str, BadCase] = {
    "single-slice": BadCase(
        lambda: _phantom(1),
        "SingleFrameError: the series has a single image",
        pipeline="demo-phantom",
    ),
    "mixed-orientation": BadCase(
        lambda: mixed_orientation(_phantom()),
        "MixedOrientationError: slices have different orientations",
    ),
    "missing-slice": BadCase(
        lambda: missing_slice(_phantom()),
        "MissingSliceError: about 2 slice(s) missing between positions",
    ),
    "duplicated-position": BadCase(
        lambda: duplicated_position(_phantom()),
        "DuplicatePositionError: 1 slice(s) share a position with another slice",
    ),
    "non-uniform-spacing": BadCase(
        lambda: non_uniform_spacing(_phantom()),
        "NonUniformSpacingError: slice spacing varies by 30%",
    ),
    "localizer": BadCase(
        lambda: localizer(_phantom()),
        "LocalizerError: the series holds only localizer (scout) images",
    ),
    "gantry-tilt": BadCase(
        lambda: gantry_tilt(_phantom()),
        "GantryTiltError: slices are sheared by about 15.0 degrees (gantry tilt)",
    ),
    "mr-for-a-ct-model": BadCase(
        lambda: _phantom(12, modality="MR"),
        "InputMismatchError: model demo-phantom expects a CT series; the job's series is MR",
        pipeline="demo-phantom",
    ),
    "truncated-pixel-data": BadCase(
        lambda: truncated_pixels(_phantom()),
        "PixelDataError: cannot decode pixel data",
    ),
    "inconsistent-rows-columns": BadCase(
        lambda: inconsistent_size(_phantom()),
        "InconsistentSizeError: slices differ in size",
    ),
    "inconsistent-pixel-spacing": BadCase(
        lambda: inconsistent_pixel_spacing(_phantom()),
        "InconsistentSizeError: slices differ in pixel spacing",
    ),
    "two-frames-of-reference": BadCase(
        lambda: two_frames_of_reference(_phantom()),
        "MixedSeriesError: images in 2 frames of reference were given as one",
    ),
    "no-image-position": BadCase(
        lambda: no_position(_phantom()),
        "InconsistentSizeError: an image has no ImagePositionPatient",
    ),
    "missing-weights": BadCase(
        lambda: _phantom(8),
        "WeightsMissingError: weights of totalseg-organs not found",
        pipeline="totalseg-organs",
    ),
    "unknown-model": BadCase(
        lambda: _phantom(8),
        "no model or cascade called 'no-such-model'",
        pipeline="no-such-model",
        status=404,
    ),
}


@pytest.mark.parametrize("case", list(BAD_CASES.values()), ids=list(BAD_CASES))
def test_bad_series_fails_with_a_precise_reason(
    node: Node, worker_pid: int, tmp_path: Path, case: BadCase
) -> None:
    datasets = case.build()
    series_uid = str(datasets[0].SeriesInstanceUID)
    node.storescu(write_datasets(tmp_path / "series", datasets))
    if case.pipeline is None:
        job = node.wait_for_run(series_uid, timeout_s=RUN_TIMEOUT_S)
    else:
        decision = node.wait_for_decision(series_uid)
        assert decision["state"] == "ignored", "a series run by hand must not match the rules"
        response = node.post(
            f"/ai/series/{node.lookup(series_uid)}/run", json={"pipeline": case.pipeline}
        )
        assert response.status_code == case.status, response.text
        if case.status != 200:
            assert case.expected in response.text
            assert node.runs(series_uid) == [], "a refused run must not make a job"
            return
        job = node.wait_for_run(series_uid, timeout_s=RUN_TIMEOUT_S)
    assert job["state"] == "failed", job
    assert case.expected in (job["error"] or ""), job["error"]
    assert job["outputs"] == []


def test_worker_keeps_serving_after_bad_input(
    node: Node, worker_pid: int, tmp_path: Path, bare_predictor: Any
) -> None:
    """Runs after the table (file order): the same worker process still completes a series,
    with exactly the labels nnU-Net's own predictor gives."""
    pushed = push_phantom(node, tmp_path / "after", seed=5)
    assert pushed.job["state"] == "done", pushed.job["error"]
    assert node.pid("worker") == worker_pid, "the worker process was replaced"
    assert_labels_equal_the_bare_predictor(node, pushed, bare_predictor)
