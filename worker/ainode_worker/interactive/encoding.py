"""How masks leave the service: compact JSON, NIfTI and NRRD label maps.

``packbits-gzip-base64`` (the JSON default): the uint8 0/1 mask ``[slice, row, column]`` in C
order (column fastest), one bit per voxel (``numpy.packbits``, most significant bit first),
gzip-compressed and base64-encoded. A 512x512x300 mask is 9.8 MB of bits before gzip and
usually a few kB after. Decode: ``numpy.unpackbits(gzip.decompress(b64decode(data)),
count=prod(shape)).reshape(shape)``.

NIfTI uses the node's NIfTI writer (RAS affine from the series' DICOM geometry, array indexed
x = column, y = row, z = slice in position order). NRRD (what MONAI Label's OHIF client asks
for) is written from the volume's own affine with a LPS ``space`` and the same voxel order, raw
or gzip-encoded. A grid the writers refuse (uneven slice gaps beyond their tolerance) is
reported as :class:`~.errors.VolumeUnusableError`.
"""

from __future__ import annotations

import base64
import gzip
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom import Dataset

from ainode_worker.results import ResultInputError, nifti_image
from ainode_worker.volume import Volume

from .errors import BadRequestError, VolumeUnusableError

MASK_ENCODING = "packbits-gzip-base64"


def encode_mask(mask: npt.NDArray[np.uint8]) -> dict[str, Any]:
    bits = np.packbits(mask.astype(bool, copy=False).ravel())
    return {
        "encoding": MASK_ENCODING,
        "shape": list(mask.shape),
        "axes": ["slice", "row", "column"],
        "data": base64.b64encode(gzip.compress(bits.tobytes(), compresslevel=6, mtime=0)).decode(
            "ascii"
        ),
    }


def decode_mask(encoded: Mapping[str, Any]) -> npt.NDArray[np.uint8]:
    if encoded.get("encoding") != MASK_ENCODING:
        raise BadRequestError(f"unknown mask encoding {encoded.get('encoding')!r}")
    shape = tuple(int(n) for n in encoded["shape"])
    bits = np.frombuffer(gzip.decompress(base64.b64decode(encoded["data"])), dtype=np.uint8)
    return np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape)


def nifti_bytes(label_map: npt.NDArray[np.integer[Any]], datasets: Sequence[Dataset]) -> bytes:
    """A gzip-compressed NIfTI-1 file (``.nii.gz``) of the label map."""
    try:
        image = nifti_image(label_map, datasets)
    except ResultInputError as error:
        raise VolumeUnusableError(
            f"the series' grid cannot be written as NIfTI: {error}"
        ) from error
    return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)


def nrrd_bytes(
    label_map: npt.NDArray[np.integer[Any]],
    volume: Volume,
    *,
    dtype: str = "uint8",
    compress: bool = True,
) -> bytes:
    """A NRRD file (``.nrrd``): LPS space, axes column, row, slice."""
    types = {"uint8": ("uint8", np.uint8), "uint16": ("uint16", np.uint16)}
    if dtype not in types:
        raise BadRequestError(f"result_dtype must be uint8 or uint16, not {dtype!r}")
    name, numpy_type = types[dtype]
    if label_map.shape != volume.shape:
        raise BadRequestError(f"label map {label_map.shape} is not on the volume's grid")
    affine = volume.affine  # voxel (slice, row, column) -> LPS; NRRD's axes are reversed
    slices, rows, columns = label_map.shape
    directions = " ".join(
        "(" + ",".join(f"{v:.10g}" for v in affine[:3, axis]) + ")" for axis in (2, 1, 0)
    )
    origin = "(" + ",".join(f"{v:.10g}" for v in affine[:3, 3]) + ")"
    header = (
        "NRRD0004\n"
        f"type: {name}\n"
        "dimension: 3\n"
        "space: left-posterior-superior\n"
        f"sizes: {columns} {rows} {slices}\n"
        f"space directions: {directions}\n"
        "kinds: domain domain domain\n"
        "endian: little\n"
        f"encoding: {'gzip' if compress else 'raw'}\n"
        f"space origin: {origin}\n\n"
    )
    payload = np.ascontiguousarray(label_map, dtype=np.dtype(numpy_type).newbyteorder("<"))
    data = payload.tobytes()
    return header.encode("ascii") + (
        gzip.compress(data, compresslevel=6, mtime=0) if compress else data
    )


def centroids(
    label_map: npt.NDArray[np.integer[Any]], labels: Mapping[str, int]
) -> dict[str, list[str]]:
    """MONAI Label's ``centroids``: label name -> [value, x, y, z] (voxel indices, as text)."""
    found: dict[str, list[str]] = {}
    for name, value in labels.items():
        where = np.argwhere(label_map == value)
        if where.size:
            z, y, x = (round(v) for v in where.mean(axis=0))
            found[name] = [str(value), str(x), str(y), str(z)]
    return found
