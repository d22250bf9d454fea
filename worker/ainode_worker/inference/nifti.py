"""Volumes as NIfTI, for services that take NIfTI (BiomedParse's HTTP API).

NIfTI arrays are indexed (i, j, k) = (column, row, slice) with a RAS affine; DICOM patient
coordinates are LPS, hence the sign flip of the first two axes.
"""

from __future__ import annotations

import gzip
import io

import nibabel as nib
import numpy as np
import numpy.typing as npt

from ainode_worker.volume import Volume

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# voxel (i=column, j=row, k=slice) -> voxel (slice, row, column)
_IJK_TO_SRC = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)


def nifti_affine(volume: Volume) -> npt.NDArray[np.float64]:
    """RAS affine of the NIfTI array ``volume.array.transpose(2, 1, 0)``."""
    return _LPS_TO_RAS @ volume.affine @ _IJK_TO_SRC


def to_nifti_bytes(volume: Volume) -> bytes:
    """The volume as a gzip-compressed NIfTI-1 file."""
    image = nib.Nifti1Image(  # type: ignore[no-untyped-call]
        np.ascontiguousarray(volume.array.transpose(2, 1, 0)), nifti_affine(volume)
    )
    image.header.set_xyzt_units("mm")  # type: ignore[no-untyped-call]
    raw = image.to_bytes()
    return gzip.compress(raw, compresslevel=1)


def from_nifti_array(array: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
    """An (i, j, k) NIfTI-ordered array back in (slice, row, column) order."""
    return np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0))


def read_nifti_bytes(data: bytes) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(array in NIfTI order, affine) of a .nii or .nii.gz file's bytes."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    image = nib.Nifti1Image.from_bytes(data)
    return np.asarray(image.get_fdata()), np.asarray(image.affine)


def load_npz_array(data: bytes, key: str) -> npt.NDArray[np.generic]:
    with np.load(io.BytesIO(data)) as archive:
        if key not in archive:
            raise KeyError(f"npz has no {key!r} array (has {sorted(archive.files)})")
        array: npt.NDArray[np.generic] = archive[key]
    return array
