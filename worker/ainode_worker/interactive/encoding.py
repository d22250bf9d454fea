"""How masks leave the service: compact JSON, NIfTI and NRRD label maps.

``packbits-gzip-base64`` (the JSON default): the uint8 0/1 mask ``[slice, row, column]`` in C
order (column fastest), one bit per voxel (``numpy.packbits``, most significant bit first),
gzip-compressed and base64-encoded. A 512x512x300 mask is 9.8 MB of bits before gzip and
usually a few kB after. Only the bytes that cover the mask's bounds are packed and compressed;
the runs of zero bytes before and after them are written from a cached compressed run, so the
encoding costs what the object's size costs, not the grid's (a full-grid gzip of 6.5 MB of
zeros alone took ~50 ms). Decode: ``numpy.unpackbits(gzip.decompress(b64decode(data)),
count=prod(shape)).reshape(shape)``.

NIfTI uses the node's NIfTI writer (RAS affine from the series' DICOM geometry, array indexed
x = column, y = row, z = slice in position order). NRRD (what MONAI Label's OHIF client asks
for) is written from the volume's own affine with a LPS ``space`` and the same voxel order, raw
or gzip-encoded. A grid the writers refuse (uneven slice gaps beyond their tolerance) is
reported as :class:`~.errors.VolumeUnusableError`.
"""

from __future__ import annotations

import base64
import functools
import gzip
import struct
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom import Dataset

from ainode_worker.results import ResultInputError, nifti_image
from ainode_worker.volume import Volume

from .errors import BadRequestError, VolumeUnusableError
from .prompts import Bounds, mask_bounds

MASK_ENCODING = "packbits-gzip-base64"
_LEVEL = 6
_ZERO_RUN = 1 << 20  # bytes of zeros compressed once and reused
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, mtime 0


def encode_mask(mask: npt.NDArray[np.uint8], bounds: Bounds | None = None) -> dict[str, Any]:
    """The JSON form of a 0/1 mask; ``bounds`` (where it may be nonzero) saves a full pass."""
    flat = np.ascontiguousarray(mask).reshape(-1)
    total = (flat.size + 7) // 8  # bytes of the whole bit stream
    first, stop = _flat_range(mask.shape, mask_bounds(mask) if bounds is None else bounds)
    first -= first % 8
    stop = min(flat.size, stop + (-stop) % 8)
    piece = flat[first:stop]
    # A 0/1 uint8 mask read as bool packs ~3x faster than one converted first.
    bits = np.packbits(piece.view(bool) if piece.dtype == np.uint8 else piece != 0).tobytes()
    head = first // 8
    data = _gzip_sparse(head, bits, total - head - len(bits))
    return {
        "encoding": MASK_ENCODING,
        "shape": list(mask.shape),
        "axes": ["slice", "row", "column"],
        "data": base64.b64encode(data).decode("ascii"),
    }


def _flat_range(shape: tuple[int, ...], bounds: Bounds) -> tuple[int, int]:
    """The C-order flat index range [first, stop) that covers every voxel of ``bounds``."""
    if any(b.stop <= b.start for b in bounds):
        return 0, 0
    _, rows, columns = shape
    first = (bounds[0].start * rows + bounds[1].start) * columns + bounds[2].start
    last = ((bounds[0].stop - 1) * rows + bounds[1].stop - 1) * columns + bounds[2].stop - 1
    return first, last + 1


@functools.cache
def _deflated_zero_run() -> bytes:
    """Raw deflate of ``_ZERO_RUN`` zero bytes, ending on a full flush.

    After a full flush nothing refers back and the output is byte-aligned, so copies of this
    piece can be put one after another, and before or after other such pieces, in one stream.
    """
    compressor = zlib.compressobj(_LEVEL, zlib.DEFLATED, -15)
    return compressor.compress(bytes(_ZERO_RUN)) + compressor.flush(zlib.Z_FULL_FLUSH)


@functools.cache
def _zero_run_crc() -> tuple[int, tuple[int, ...]]:
    """CRC-32 after a zero run as an affine map of the CRC before it: (offset, bit columns).

    ``zlib.crc32(zeros, c)`` is affine in ``c`` over GF(2), so 33 CRCs computed once replace
    hashing every run of zeros again (6.5 MB of them took ~14 ms per mask).
    """
    zeros = bytes(_ZERO_RUN)
    offset = zlib.crc32(zeros, 0)
    return offset, tuple(zlib.crc32(zeros, 1 << bit) ^ offset for bit in range(32))


def _crc_after_zero_run(crc: int) -> int:
    offset, columns = _zero_run_crc()
    for bit, column in enumerate(columns):
        if crc >> bit & 1:
            offset ^= column
    return offset


def _gzip_sparse(zeros_before: int, payload: bytes, zeros_after: int) -> bytes:
    """``gzip(bytes(zeros_before) + payload + bytes(zeros_after))``, one member, fast."""
    run = _deflated_zero_run()
    pieces = [_GZIP_HEADER]
    crc = 0

    def zeros(count: int) -> int:
        nonlocal crc
        full, rest = divmod(count, _ZERO_RUN)
        for _ in range(full):
            pieces.append(run)
            crc = _crc_after_zero_run(crc)
        return rest

    for count, data, end in (
        (zeros_before, payload, zlib.Z_FULL_FLUSH),
        (zeros_after, b"", zlib.Z_FINISH),
    ):
        chunk = bytes(zeros(count)) + data
        crc = zlib.crc32(chunk, crc)
        compressor = zlib.compressobj(_LEVEL, zlib.DEFLATED, -15)
        pieces += [compressor.compress(chunk), compressor.flush(end)]
    size = zeros_before + len(payload) + zeros_after
    pieces.append(struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF))
    return b"".join(pieces)


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
