"""NIfTI-1 label map for research export (never sent to a PACS).

NIfTI's world space is RAS while DICOM's is LPS, and NIfTI arrays are indexed
(column, row, slice): the affine is the DICOM grid's LPS affine with x and y negated, so a
voxel lands on the same point of the patient in both files whatever the orientation.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt

from .errors import ResultInputError
from .sources import Sources, SourceSeries

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def nifti_affine(source_datasets: Sources) -> npt.NDArray[np.float64]:
    """4x4 RAS affine of the ``(column, row, slice)`` voxel grid of the sorted source series."""
    return np.asarray(_LPS_TO_RAS @ SourceSeries.of(source_datasets).geometry.affine_lps())


def nifti_image(label_map: npt.NDArray[np.integer], source_datasets: Sources) -> nib.Nifti1Image:
    """The label map as an in-memory NIfTI image (uint8 or uint16) with sform and qform set."""
    geometry = SourceSeries.of(source_datasets).geometry
    geometry.check_volume(label_map.shape, "label map")
    if label_map.size and (int(label_map.min()) < 0 or int(label_map.max()) > 65535):
        raise ResultInputError("label values must lie within 0..65535")
    dtype = np.uint8 if label_map.size == 0 or int(label_map.max()) < 256 else np.uint16
    data = np.ascontiguousarray(label_map.astype(dtype, copy=False).transpose(2, 1, 0))
    affine = _LPS_TO_RAS @ geometry.affine_lps()
    image = nib.Nifti1Image(data, affine)  # type: ignore[no-untyped-call]
    image.header.set_xyzt_units("mm")  # type: ignore[no-untyped-call]
    image.set_sform(affine, code="scanner")  # type: ignore[no-untyped-call]
    image.set_qform(affine, code="scanner")  # type: ignore[no-untyped-call]
    image.header["intent_code"] = nib.nifti1.intent_codes["label"]
    return image


def write_nifti(label_map: npt.NDArray[np.integer], source_datasets: Sources, path: Path) -> Path:
    """Write ``path`` (``.nii.gz`` compresses); the caller chooses a generated file name."""
    nib.save(nifti_image(label_map, source_datasets), path)
    return path
