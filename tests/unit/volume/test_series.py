"""Series -> volume: sorting, geometry, rescale, and every refusal with its own error class."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
from ainode_worker.volume import (
    DuplicatePositionError,
    GantryTiltError,
    InconsistentSizeError,
    LocalizerError,
    MissingSliceError,
    MixedOrientationError,
    MixedSeriesError,
    NoImageError,
    NonUniformSpacingError,
    SingleFrameError,
    VolumeError,
    volume_from_datasets,
)
from pydicom import Dataset
from pydicom.uid import CTImageStorage, generate_uid

from ainode.phantoms import Geometry, SeriesIds, make_phantom, phantom_datasets

SMALL = Geometry(shape=(10, 16, 20), spacing=(2.0, 0.7, 0.9), origin=(-10.0, 5.0, -30.0))


def _datasets(geometry: Geometry = SMALL, seed: int = 3) -> tuple[np.ndarray, list[Dataset]]:
    phantom = make_phantom(geometry, seed=seed)
    return phantom.image, list(phantom_datasets(phantom, SeriesIds()))


def test_shuffled_slices_are_sorted_and_rescaled_to_hu() -> None:
    image, datasets = _datasets()
    shuffled = datasets[:]
    random.Random(1).shuffle(shuffled)
    volume = volume_from_datasets(shuffled)
    assert volume.array.dtype == np.float32
    np.testing.assert_array_equal(volume.array, image.astype(np.float32))
    assert [ds.InstanceNumber for ds in volume.datasets] == list(range(1, 11))
    assert volume.spacing == pytest.approx(SMALL.spacing)
    assert volume.series_uid == datasets[0].SeriesInstanceUID
    assert volume.frame_of_reference_uid == datasets[0].FrameOfReferenceUID


def test_affine_maps_voxels_to_patient_positions_for_oblique_planes() -> None:
    angle = np.radians(30)
    geometry = Geometry(
        shape=(6, 12, 14),
        spacing=(3.0, 0.8, 1.1),
        origin=(1.0, 2.0, 3.0),
        row_direction=(float(np.cos(angle)), float(np.sin(angle)), 0.0),
        column_direction=(0.0, 0.0, -1.0),
    )
    _, datasets = _datasets(geometry)
    volume = volume_from_datasets(reversed(datasets))
    for k in (0, 5):
        patient = volume.affine @ np.array([k, 0, 0, 1.0])
        np.testing.assert_allclose(patient[:3], geometry.position(k), atol=1e-3)
    # one step along a row (column index + 1) moves by the column spacing along row_direction
    step = volume.affine @ np.array([0, 0, 1, 1.0]) - volume.affine @ np.array([0, 0, 0, 1.0])
    np.testing.assert_allclose(step[:3], np.asarray(geometry.row_direction) * 1.1, atol=1e-6)
    step = volume.affine @ np.array([0, 1, 0, 1.0]) - volume.affine @ np.array([0, 0, 0, 1.0])
    np.testing.assert_allclose(step[:3], np.asarray(geometry.column_direction) * 0.8, atol=1e-6)


def test_per_slice_rescale_slope_and_intercept_are_applied() -> None:
    image, datasets = _datasets()
    ds = datasets[4]
    raw = np.frombuffer(ds.PixelData, dtype=np.uint16).reshape(ds.Rows, ds.Columns)
    ds.PixelData = (raw // 2).astype(np.uint16).tobytes()
    ds.RescaleSlope = "2"
    ds.RescaleIntercept = "-1024"
    volume = volume_from_datasets(datasets)
    expected = (raw // 2).astype(np.float32) * 2 - 1024
    np.testing.assert_array_equal(volume.array[4], expected)
    np.testing.assert_array_equal(volume.array[3], image[3].astype(np.float32))


def test_non_image_objects_are_dropped_and_alone_refused() -> None:
    _, datasets = _datasets()
    report = Dataset()
    report.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"
    report.Modality = "SR"
    report.SeriesInstanceUID = datasets[0].SeriesInstanceUID
    volume = volume_from_datasets([report, *datasets])
    assert volume.shape == SMALL.shape
    with pytest.raises(NoImageError, match="no images"):
        volume_from_datasets([report])


def test_single_frame_is_refused() -> None:
    _, datasets = _datasets()
    with pytest.raises(SingleFrameError, match="single image"):
        volume_from_datasets(datasets[:1])


def test_localizers_alone_are_refused_and_mixed_in_are_ignored() -> None:
    _, datasets = _datasets()
    scout = copy.deepcopy(datasets[0])
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]
    assert volume_from_datasets([scout, *datasets]).shape == SMALL.shape
    scouts = []
    for ds in datasets[:3]:
        ds = copy.deepcopy(ds)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        scouts.append(ds)
    with pytest.raises(LocalizerError, match="localizer"):
        volume_from_datasets(scouts)


def test_mixed_orientations_are_refused() -> None:
    _, datasets = _datasets()
    datasets[3].ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]
    with pytest.raises(MixedOrientationError, match="orientations"):
        volume_from_datasets(datasets)


def test_missing_slice_is_refused_with_where() -> None:
    _, datasets = _datasets()
    del datasets[5]
    with pytest.raises(MissingSliceError, match=r"about 1 slice\(s\) missing"):
        volume_from_datasets(datasets)


def test_duplicated_positions_are_refused() -> None:
    _, datasets = _datasets()
    twin = copy.deepcopy(datasets[2])
    twin.SOPInstanceUID = generate_uid()
    with pytest.raises(DuplicatePositionError, match="share a position"):
        volume_from_datasets([*datasets, twin])


def test_irregular_spacing_is_refused() -> None:
    _, datasets = _datasets()
    position = [float(v) for v in datasets[4].ImagePositionPatient]
    datasets[4].ImagePositionPatient = [position[0], position[1], position[2] + 0.5]
    with pytest.raises(NonUniformSpacingError, match="varies"):
        volume_from_datasets(datasets)


@pytest.mark.parametrize("attribute", ["Rows", "PixelSpacing"])
def test_inconsistent_sizes_are_refused(attribute: str) -> None:
    _, datasets = _datasets()
    if attribute == "Rows":
        datasets[1].Rows = SMALL.shape[1] - 1
    else:
        datasets[1].PixelSpacing = ["0.5", "0.5"]
    with pytest.raises(InconsistentSizeError, match="differ"):
        volume_from_datasets(datasets)


def test_mixed_series_are_refused() -> None:
    _, first = _datasets()
    _, second = _datasets(seed=4)
    other = generate_uid()
    for ds in second:
        ds.SeriesInstanceUID = other
    with pytest.raises(MixedSeriesError, match="2 different series"):
        volume_from_datasets(first[:5] + second[5:])


def test_gantry_tilted_stack_is_refused_never_sheared() -> None:
    """Positions shifted along the column direction per slice, as a tilted gantry writes them."""
    _, datasets = _datasets()
    shift = np.tan(np.radians(15)) * SMALL.spacing[0]
    for index, ds in enumerate(datasets):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [f"{x:.6g}", f"{y + index * shift:.6g}", f"{z:.6g}"]
    with pytest.raises(GantryTiltError, match=r"15\.0 degrees"):
        volume_from_datasets(datasets)


def test_all_volume_errors_are_value_errors() -> None:
    assert issubclass(GantryTiltError, VolumeError)
    assert issubclass(VolumeError, ValueError)


def test_files_read_back_from_disk_build_the_same_volume(tmp_path: Path) -> None:
    image, datasets = _datasets()
    for index, ds in enumerate(datasets):
        ds.save_as(tmp_path / f"{index}.dcm", enforce_file_format=True)
    read = [pydicom.dcmread(path) for path in sorted(tmp_path.glob("*.dcm"))]
    assert read[0].SOPClassUID == CTImageStorage
    np.testing.assert_array_equal(volume_from_datasets(read).array, image.astype(np.float32))
