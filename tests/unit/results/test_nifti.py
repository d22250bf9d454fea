"""NIfTI export: RAS affine agrees with SimpleITK's reading of the DICOM series."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from ainode_worker.results import ResultInputError, write_nifti

from .cases import Case


def _sitk_affine_ras(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The series as SimpleITK reads it (LPS, its own sorting), turned into a RAS affine."""
    reader = sitk.ImageSeriesReader()  # type: ignore[no-untyped-call]
    names = reader.GetGDCMSeriesFileNames(str(folder))  # type: ignore[no-untyped-call]
    reader.SetFileNames(names)  # type: ignore[no-untyped-call]
    image = reader.Execute()  # type: ignore[no-untyped-call]
    direction = np.array(image.GetDirection()).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.array(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine, sitk.GetArrayFromImage(image)


def test_nifti_geometry_matches_dicom(case: Case, tmp_path: Path) -> None:
    path = write_nifti(case.truth, case.sources, tmp_path / "labels.nii.gz")
    image = nib.load(path)
    assert isinstance(image, nib.Nifti1Image)
    folder = Path(case.sources[0].filename).parent
    sitk_affine, sitk_pixels = _sitk_affine_ras(folder)
    assert np.allclose(image.affine, sitk_affine, atol=1e-3)
    header = image.header
    assert int(header["qform_code"]) == 1 and int(header["sform_code"]) == 1  # scanner
    qform = header.get_qform()  # type: ignore[no-untyped-call]
    assert np.allclose(qform, image.affine, atol=1e-3)
    data = np.asarray(image.dataobj)
    assert data.dtype == np.uint8
    assert np.array_equal(data.transpose(2, 1, 0), case.truth)
    # SimpleITK's pixels [z, y, x] are the phantom image in the same order: same grid.
    assert np.array_equal(sitk_pixels, case.phantom.image)
    # A voxel's RAS position equals the DICOM patient position of the same pixel (LPS).
    k, r, c = 5, 7, 11
    ds = case.sources[k]
    iop = np.asarray(ds.ImageOrientationPatient, float)
    lps = (
        np.asarray(ds.ImagePositionPatient, float)
        + c * float(ds.PixelSpacing[1]) * iop[:3]
        + r * float(ds.PixelSpacing[0]) * iop[3:]
    )
    ras = image.affine @ np.array([c, r, k, 1.0])
    assert np.allclose(ras[:3], lps * [-1, -1, 1], atol=1e-3)


def test_uneven_slices_are_refused(axial_case: Case, tmp_path: Path) -> None:
    sources = [pydicom.Dataset(ds) for ds in axial_case.sources]
    position = list(sources[-1].ImagePositionPatient)
    sources[-1].ImagePositionPatient = [position[0], position[1], float(position[2]) + 1.0]
    with pytest.raises(ResultInputError, match="unevenly"):
        write_nifti(axial_case.truth, sources, tmp_path / "x.nii.gz")
