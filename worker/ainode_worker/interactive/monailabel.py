"""The part of MONAI Label's server API that its viewer clients (OHIF, 3D Slicer) use.

* ``GET /info/``: ``{"name", "description", "version", "labels": [...], "models": {name:
  {"type", "labels": {name: value}, "dimension": 3, "description", "config"}}, "trainers",
  "strategies", "scoring", "train_stats", "datastore"}``. Labels include ``background`` (0)
  first, as MONAI Label apps list them (OHIF drops the first entry).
* ``POST /infer/{model}?image=<SeriesInstanceUID or Orthanc id>&output=image|json|all``, form
  field ``params`` (a JSON string). Clicks are ``[x, y, z]`` voxel indices (x = column, y =
  row, z = slice in position order, as MONAI Label's ITK-loaded images are indexed), given as
  any of: ``foreground``/``background`` (DeepGrow, SAM 2), one key per label name plus
  ``background`` (DeepEdit), ``points`` + ``point_labels`` (VISTA-3D), ``pos_points``/
  ``neg_points``. Each label with clicks is segmented (clicks of the other labels and of
  ``background`` count as negative) into one label map.
  ``params.result_extension`` (``.nii.gz`` default, ``.nii``, ``.nrrd``), ``result_dtype``
  (``uint8``/``uint16``) and ``result_compress`` choose the file. Answers, like MONAI Label:
  ``output=json`` the result params; ``output=image`` the file; otherwise ``multipart/form-data``
  with a ``params`` part (``application/json``) and an ``image`` part
  (``application/octet-stream``). Result params carry ``label_names``, ``latencies`` (seconds)
  and ``centroids`` ({label: [value, x, y, z]}, as OHIF expects), plus ``session``.

Uploading the image (``file``) is not supported: the node reads series from Orthanc. One
session per series is kept, so later clicks reuse the volume and cached features.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import time
import uuid
from collections.abc import Mapping
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import Response

from ainode_worker.results.provenance import SOFTWARE_VERSION
from ainode_worker.volume import Volume

from .encoding import centroids, nifti_bytes, nrrd_bytes
from .errors import BadRequestError
from .prompts import Point
from .service import InteractiveService

_OUTPUTS = ("image", "json", "all")
_EXTENSIONS = (".nii.gz", ".nii", ".nrrd")


def monailabel_router(service: InteractiveService) -> APIRouter:
    router = APIRouter(tags=["MONAI Label"])

    @router.get("/")
    def status() -> dict[str, str]:
        return {"status": "UP"}

    @router.get("/info")
    @router.get("/info/")
    def info() -> dict[str, Any]:
        return app_info(service)

    @router.post("/infer/{model}", response_model=None)
    def infer(
        model: str,
        image: str = "",
        output: str | None = None,
        params: Annotated[str, Form()] = "{}",
        file: Annotated[UploadFile | None, File()] = None,
    ) -> Any:
        if file is not None:
            raise BadRequestError(
                "uploading images is not supported: this node reads them from Orthanc; "
                "pass ?image=<SeriesInstanceUID> instead"
            )
        if not image:
            raise BadRequestError(
                "pass the series as ?image=<SeriesInstanceUID>; this node reads images from "
                "Orthanc and does not accept uploaded files"
            )
        if output is not None and output not in _OUTPUTS:
            raise BadRequestError(
                f"output={output!r} is not supported here; use image, json or all "
                "(store a result as DICOM-SEG with POST /sessions/{id}/accept)"
            )
        return run_infer(service, model, image, _parse_params(params), output)

    return router


def app_info(service: InteractiveService) -> dict[str, Any]:
    labels = _labels(service)
    models = {
        name: {
            "type": "deepedit",
            "labels": labels,
            "dimension": 3,
            "description": f"interactive {backend.kind} segmentation (clicks on any slice)",
            "config": {},
        }
        for name, backend in service.loadable_backends().items()
    }
    return {
        "name": service.config.name,
        "description": "Interactive segmentation of series stored in the node's Orthanc",
        "version": SOFTWARE_VERSION,
        "labels": sorted(labels, key=lambda name: labels[name]),
        "models": models,
        "trainers": {},
        "strategies": {},
        "scoring": {},
        "train_stats": {},
        "datastore": {},
    }


def run_infer(
    service: InteractiveService,
    model: str,
    image: str,
    params: Mapping[str, Any],
    output: str | None,
) -> Any:
    begin = time.perf_counter()
    service.backend(model)  # unknown model: 404 before anything else
    clicks = clicks_by_label(params, service.config.labels)
    if not clicks:
        raise BadRequestError(
            "no foreground clicks: give 'foreground' (or points under a label name) as "
            "[[x, y, z], ...]"
        )
    key = "monailabel-" + hashlib.sha256(image.encode()).hexdigest()[:24]
    results = [
        (value, service.segment(model=model, series=image, points=points, keyed_session=key))
        for value, points in sorted(clicks.items())
    ]
    volume, session = results[-1][1].volume, results[-1][1].session
    label_map = np.zeros(volume.shape, dtype=np.uint8 if max(clicks) < 256 else np.uint16)
    for value, result in results:
        label_map[result.mask.astype(bool)] = value
    load_s = sum(r.timings.load_ms for _, r in results) / 1000.0
    infer_s = sum(r.timings.embed_ms + r.timings.decode_ms for _, r in results) / 1000.0
    write_start = time.perf_counter()
    extension, payload = _label_file(label_map, volume, params)
    write_s = time.perf_counter() - write_start
    labels = _labels(service)
    result_json = {
        "label_names": labels,
        "latencies": {
            "pre": round(load_s, 3),
            "infer": round(infer_s, 3),
            "invert": 0.0,
            "post": 0.0,
            "write": round(write_s, 3),
            "total": round(time.perf_counter() - begin, 3),
            "transform": None,
        },
        "centroids": centroids(label_map, {k: v for k, v in labels.items() if v > 0}),
        "session": session,
    }
    if output == "json":
        return result_json
    filename = f"label{extension}"
    if output == "image":
        return Response(
            payload,
            media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )
    body, content_type = multipart(
        [
            ("params", None, "application/json", json.dumps(result_json).encode()),
            ("image", filename, "application/octet-stream", payload),
        ]
    )
    return Response(body, media_type=content_type)


def clicks_by_label(
    params: Mapping[str, Any], labels: Mapping[str, int]
) -> dict[int, tuple[Point, ...]]:
    """Positive clicks per label value, with every other click as a negative one."""
    first = min(labels.values())
    positives: dict[int, list[list[float]]] = {}
    negatives: list[list[float]] = list(_points(params, "background")) + list(
        _points(params, "neg_points")
    )
    for key in ("foreground", "pos_points"):
        positives.setdefault(first, []).extend(_points(params, key))
    for name, value in labels.items():
        positives.setdefault(value, []).extend(_points(params, name))
    if "points" in params:
        points = list(_points(params, "points"))
        marks = params.get("point_labels") or [1] * len(points)
        if len(marks) != len(points):
            raise BadRequestError("'points' and 'point_labels' differ in length")
        for point, mark in zip(points, marks, strict=True):
            (positives.setdefault(first, []) if int(mark) > 0 else negatives).append(point)
    result: dict[int, tuple[Point, ...]] = {}
    for value, own in positives.items():
        if not own:
            continue
        others = [p for v, ps in positives.items() if v != value for p in ps] + negatives
        result[value] = tuple(_point(p, True) for p in own) + tuple(
            _point(p, False) for p in others
        )
    return result


def multipart(parts: list[tuple[str, str | None, str, bytes]]) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body of (name, filename, content type, bytes) parts."""
    boundary = uuid.uuid4().hex
    chunks: list[bytes] = []
    for name, filename, content_type, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename:
            disposition += f'; filename="{filename}"'
        chunks.append(
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
            f"Content-Type: {content_type}\r\n\r\n".encode()
        )
        chunks.append(data)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def _parse_params(params: str) -> dict[str, Any]:
    try:
        parsed = json.loads(params or "{}")
    except json.JSONDecodeError as error:
        raise BadRequestError(f"the 'params' form field is not valid JSON: {error}") from error
    if not isinstance(parsed, dict):
        raise BadRequestError("the 'params' form field must be a JSON object")
    return parsed


def _points(params: Mapping[str, Any], key: str) -> list[list[float]]:
    value = params.get(key) or []
    if not isinstance(value, list) or not all(
        isinstance(p, list | tuple) and len(p) == 3 for p in value
    ):
        raise BadRequestError(f"'{key}' must be a list of [x, y, z] voxel indices")
    return [list(p) for p in value]


def _point(point: list[float], positive: bool) -> Point:
    try:
        x, y, z = (float(v) for v in point)
    except (TypeError, ValueError) as error:
        raise BadRequestError(f"click {point} is not three numbers [x, y, z]") from error
    if z != int(z):
        raise BadRequestError(f"click {point}: z is a slice index and must be a whole number")
    return Point(x, y, int(z), positive)


def _label_file(
    label_map: np.ndarray[Any, Any], volume: Volume, params: Mapping[str, Any]
) -> tuple[str, bytes]:
    extension = str(params.get("result_extension") or ".nii.gz")
    if extension not in _EXTENSIONS:
        raise BadRequestError(f"result_extension must be one of {', '.join(_EXTENSIONS)}")
    dtype = str(params.get("result_dtype") or "uint8")
    compress = bool(params.get("result_compress", True))
    if extension == ".nrrd":
        return extension, nrrd_bytes(label_map, volume, dtype=dtype, compress=compress)
    data = label_map.astype(np.uint16) if dtype == "uint16" else label_map
    nifti = nifti_bytes(data, volume.datasets)
    if extension == ".nii":
        return extension, gzip.decompress(nifti)
    return extension, nifti


def _labels(service: InteractiveService) -> dict[str, int]:
    return {"background": 0, **service.config.labels}
