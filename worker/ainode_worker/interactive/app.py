"""The interactive segmentation service's REST API (FastAPI).

Endpoints (JSON unless said otherwise; errors are ``{"error": message, "type": class}``):

``POST /segment``
    Body ``{"series": <Orthanc series id or SeriesInstanceUID>, "model": "regiongrow",
    "points": [{"x": .., "y": .., "z": .., "label": 1|0}], "boxes": [{"z": .., "x0": ..,
    "y0": .., "x1": .., "y1": ..}], "session": <id, optional>, "use_previous_mask": false}``.
    Voxel coordinates: x = column, y = row, z = slice index with slices sorted by position
    along the normal (row x column direction). Without ``session`` a new session is started;
    send the returned id with later clicks on the same series to reuse its volume and cached
    features. Each request carries all the clicks for the current object.
    Answer: ``{"session", "series_uid", "model", "shape": [slices, rows, columns], "voxels",
    "timings": {"queue_ms", "load_ms", "embed_ms", "decode_ms", "total_ms", ...}, "mask":
    {"encoding": "packbits-gzip-base64", "shape", "axes", "data"}}`` (see :mod:`.encoding`).
    ``?format=nifti``: the mask as a ``.nii.gz`` label map on the series' grid (RAS affine),
    with the session id in the ``X-Session`` header and the timings in ``X-Timings``.
``POST /sessions/{id}/reset``
    Forget the current mask (start a new object); keep the volume and cached features.
``POST /sessions/{id}/accept``
    Body (optional) ``{"label": {"name", "category", "type"}, "store": true}``. Builds a
    DICOM-SEG of the session's last mask and stores it in Orthanc; answers the mask and the
    SEG's UIDs, or with ``?format=dicom`` the SEG file itself (``application/dicom``).
``DELETE /sessions/{id}``
    Close a session and free its memory.
``GET /sessions``, ``GET /health``
    Sessions with their memory and cache statistics; models, memory and concurrency.
``GET /metrics``
    Prometheus metrics: click latency by model, open sessions, shared series and their
    memory (see :mod:`.metrics`).
``POST /series/{series}/prefetch``, ``GET /series``, ``DELETE /series/{series}``
    Start loading a series a viewer has opened (202, answers at once with its state:
    ``loading``, ``ready`` or ``failed``); the series held, each once for all its sessions;
    free a series that no session uses.
``/monailabel/...``
    The subset of MONAI Label's API that its viewer clients use (see :mod:`.monailabel`).

Status codes: 400 malformed request or prompts outside the volume, 404 unknown model, series
or session, 409 nothing to accept, 413 a body over ``max_body_bytes``, 422 invalid JSON fields
or a series that is no volume, 502 Orthanc failed, 503 model unavailable or the service busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from ainode.settings import Settings
from ainode_worker.orthanc import OrthancClient

from . import errors
from .auth import BasicAuth, monailabel_auth_router
from .config import AcceptedLabel, InteractiveConfig
from .encoding import encode_mask, nifti_bytes
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .monailabel import monailabel_router
from .orthanc import OrthancVolumeLoader
from .prompts import Box, Point
from .service import InteractiveService
from .volumes import VolumeLoader

log = logging.getLogger(__name__)

STATUS_OF: dict[type[errors.InteractiveError], int] = {
    errors.BadRequestError: 400,
    errors.UnknownModelError: 404,
    errors.SeriesNotFoundError: 404,
    errors.SessionNotFoundError: 404,
    errors.NothingToAcceptError: 409,
    errors.VolumeUnusableError: 422,
    errors.UpstreamError: 502,
    errors.ModelUnavailableError: 503,
    errors.BusyError: 503,
}


class PointIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    x: float
    y: float
    z: int
    label: Literal[0, 1] = 1


class BoxIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    z: int
    x0: float
    y0: float
    x1: float
    y1: float


class SegmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    series: str | None = None
    model: str | None = Field(default=None, description="default: the first configured model")
    points: list[PointIn] = Field(default_factory=list)
    boxes: list[BoxIn] = Field(default_factory=list)
    session: str | None = None
    use_previous_mask: bool = False


class AcceptIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: AcceptedLabel | None = None
    store: bool | None = None


def create_app(
    settings_or_config: Settings | InteractiveConfig,
    *,
    loader: VolumeLoader | None = None,
    service: InteractiveService | None = None,
) -> FastAPI:
    """The FastAPI app; by default series come from (and SEGs go to) the configured Orthanc."""
    config = (
        settings_or_config
        if isinstance(settings_or_config, InteractiveConfig)
        else InteractiveConfig.from_settings(settings_or_config)
    )
    if service is None:
        orthanc = OrthancClient(
            config.orthanc_url, config.orthanc_auth, timeout_s=config.orthanc_timeout_s
        )
        service = InteractiveService(
            config, loader or OrthancVolumeLoader(orthanc), orthanc=orthanc
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sweeper = asyncio.create_task(_sweep(service, config.sweep_interval_s))
        try:
            yield
        finally:
            sweeper.cancel()

    app = FastAPI(title=config.name, lifespan=lifespan)
    app.state.service = service
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    if config.users:  # added last: runs first, before a body is read
        app.add_middleware(BasicAuth, users=config.users, realm=config.name)
    _install_error_handlers(app)
    _add_routes(app, service)
    app.include_router(monailabel_router(service), prefix="/monailabel")
    app.include_router(monailabel_auth_router(config.users), prefix="/monailabel")
    return app


Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


_DRAIN_LIMIT_BYTES = 64 << 20


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413 before the app sees them.

    A declared Content-Length is checked up front; a chunked body is read (at most
    ``max_bytes`` of it) and counted here, then handed on, so no handler can turn the refusal
    into another error.
    """

    def __init__(
        self, app: Callable[[Message, Receive, Send], Awaitable[None]], *, max_bytes: int
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send, receive, more_body=True)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._refuse(send, receive, more_body=message.get("more_body", False))
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send, receive: Receive, *, more_body: bool) -> None:
        """Answer 413 after reading the rest of the body (discarding it, up to a bound).

        Closing with a body unread resets the connection, and a proxy (the node's door,
        which passes at most ``door_interactive_max_body_mib``) then reports 502 instead.
        """
        drained = 0
        more = more_body
        while more and drained <= _DRAIN_LIMIT_BYTES:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            drained += len(message.get("body", b""))
            more = bool(message.get("more_body", False))
        body = json.dumps(
            {
                "error": f"the request body is larger than {self.max_bytes} bytes",
                "type": "BadRequestError",
            }
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def _sweep(service: InteractiveService, interval_s: float) -> None:
    """Expire idle sessions even when no request comes to trigger it."""
    while True:
        await asyncio.sleep(interval_s)
        await asyncio.to_thread(service.store.sweep)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.InteractiveError)
    async def interactive_error(request: Request, error: errors.InteractiveError) -> JSONResponse:
        status = next((s for cls, s in STATUS_OF.items() if isinstance(error, cls)), 500)
        if status >= 500:
            log.warning("%s %s: %s", request.method, request.url.path, error)
        return JSONResponse({"error": str(error), "type": type(error).__name__}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        if any(p.get("type") == "json_invalid" for p in problems):
            return JSONResponse(
                {"error": "the request body is not valid JSON", "type": "BadRequestError"},
                status_code=400,
            )
        described = "; ".join(
            f"{'.'.join(str(part) for part in p.get('loc', ()) if part != 'body')}: {p.get('msg')}"
            for p in problems
        )
        return JSONResponse(
            {
                "error": f"invalid request: {described}",
                "type": "ValidationError",
                "detail": json.loads(json.dumps(problems, default=str)),
            },
            status_code=422,
        )


def _add_routes(app: FastAPI, service: InteractiveService) -> None:
    @app.post("/segment", response_model=None)
    def segment(body: SegmentIn, format: Literal["json", "nifti"] = "json") -> Any:
        model = body.model or next(iter(service.backends))
        result = service.segment(
            model=model,
            series=body.series,
            points=tuple(Point(p.x, p.y, p.z, p.label == 1) for p in body.points),
            boxes=tuple(Box(b.z, b.x0, b.y0, b.x1, b.y1) for b in body.boxes),
            session=body.session,
            use_previous_mask=body.use_previous_mask,
        )
        if format == "nifti":
            return Response(
                nifti_bytes(result.mask, result.volume.datasets),
                media_type="application/gzip",
                headers={
                    "Content-Disposition": 'attachment; filename="mask.nii.gz"',
                    "X-Session": result.session,
                    "X-Timings": json.dumps(result.timings.rounded()),
                },
            )
        return {
            "session": result.session,
            "series_uid": result.series_uid,
            "model": result.model,
            "shape": list(result.mask.shape),
            "voxels": result.voxels,
            "timings": result.timings.rounded(),
            "mask": encode_mask(result.mask, result.bounds),
        }

    @app.post("/sessions/{session_id}/reset")
    def reset(session_id: str) -> dict[str, Any]:
        return service.reset(session_id)

    @app.post("/sessions/{session_id}/accept", response_model=None)
    def accept(
        session_id: str, body: AcceptIn | None = None, format: Literal["json", "dicom"] = "json"
    ) -> Any:
        body = body or AcceptIn()
        result = service.accept(session_id, label=body.label, store=body.store)
        if format == "dicom":
            return Response(
                result.seg_bytes(),
                media_type="application/dicom",
                headers={"Content-Disposition": 'attachment; filename="seg.dcm"'},
            )
        return {
            "session": result.session,
            "series_uid": result.series_uid,
            "voxels": int(np.count_nonzero(result.mask)),
            "mask": encode_mask(result.mask, result.bounds),
            "seg": {
                "series_instance_uid": str(result.seg.SeriesInstanceUID),
                "sop_instance_uid": str(result.seg.SOPInstanceUID),
                "stored": result.stored is not None,
                "orthanc_id": result.stored.orthanc_id if result.stored else None,
                "orthanc_series": result.stored.series_orthanc_id if result.stored else None,
            },
        }

    @app.delete("/sessions/{session_id}")
    def close(session_id: str) -> dict[str, Any]:
        if not service.close_session(session_id):
            service.store.get(session_id)  # raises the usual "no session" error
        return {"session": session_id, "closed": True}

    @app.get("/sessions")
    def sessions() -> dict[str, Any]:
        return {"sessions": service.sessions()}

    @app.get("/health")
    def health() -> dict[str, Any]:
        return service.health()

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(service.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    @app.post("/series/{series}/prefetch", status_code=202)
    def prefetch(series: str) -> dict[str, Any]:
        return service.prefetch(series)

    @app.get("/series")
    def series_held() -> dict[str, Any]:
        return {"series": service.series()}

    @app.delete("/series/{series}")
    def drop(series: str) -> dict[str, Any]:
        return service.drop_series(series)
