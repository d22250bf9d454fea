"""The worker's one Orthanc client: jobs, result destinations and the interactive service use it.

It speaks HTTP through ``requests``, for three reasons: ``dicomweb-client`` (one WADO-RS answer
per series) runs on a ``requests`` session; urllib3's ``Retry`` on that session (``ainode.http``)
sends a request once more when Orthanc's keep-alive timeout drops its connection; and
``requests`` reads ``REQUESTS_CA_BUNDLE``, through which ``orthanc_ca_file`` makes a worker on
another machine trust the node's door certificate (``ainode.node.door.trust_node_certificate``).

A series may be named by Orthanc id or by SeriesInstanceUID (``/tools/lookup``). For a job a
series' instances come in one WADO-RS answer (a 300-slice CT would otherwise be 300 round
trips); for a click, where the wait is a user's, they come several at a time in parallel and
are decoded as they arrive. Failures are :class:`OrthancError`; each caller says what they mean
to its own client (a job retried later, a destination to send to again, an HTTP status).
"""

from __future__ import annotations

import io
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
import requests
import urllib3
from dicomweb_client import DICOMwebClient
from pydicom import Dataset
from pydicom.errors import InvalidDicomError

from ainode.credentials import orthanc_auth
from ainode.http import orthanc_session
from ainode.settings import Settings

DICOMWEB_ROOT = "/dicom-web"  # "DicomWeb.Root" in orthanc/orthanc.json
# Orthanc's resource ids are SHA-1 digests written as five dash-separated groups of 8 hex digits.
ORTHANC_ID = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}$")
_AS_STORED = (("application/dicom", "*"),)  # every instance in the transfer syntax it has
# A DICOM UID (PS3.5 9.1): it goes into a URL path, so nothing else may ("../..").
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


class OrthancError(Exception):
    """Orthanc could not do what was asked; ``status`` is its HTTP answer, None if none came."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class OrthancUnavailable(OrthancError):
    """Orthanc did not answer, refused the node's credentials or failed: try again later."""


class OrthancNotFound(OrthancError, LookupError):
    """Orthanc does not hold the series or instance (or no longer does)."""


class OrthancDataError(OrthancError, ValueError):
    """What Orthanc holds or answered is not usable: not DICOM, an invalid UID, no instances."""


@dataclass(frozen=True)
class StoredInstance:
    orthanc_id: str
    series_orthanc_id: str
    status: str  # "Success" or "AlreadyStored": storing the same instance again is harmless


class OrthancClient:
    """The few Orthanc REST calls the worker needs, on one pooled session.

    The session's pool holds ``parallel`` connections and may be shared between threads
    (the parallel fetch does so).
    """

    def __init__(
        self,
        base_url: str,
        auth: tuple[str, str] | None = None,
        *,
        timeout_s: float = 30.0,
        parallel: int = 4,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.parallel = parallel
        self._http = orthanc_session(auth, pool_connections=parallel, pool_maxsize=parallel * 2)

    @classmethod
    def from_settings(cls, settings: Settings) -> OrthancClient:
        """This process's client to the node's Orthanc (one per URL and credentials)."""
        return _shared(settings.orthanc_base_url, orthanc_auth(settings))

    def resolve_series(self, series: str) -> str:
        """The Orthanc id of a series named by Orthanc id or SeriesInstanceUID."""
        series = series.strip()
        if ORTHANC_ID.match(series):
            self._request("GET", f"/series/{series}", missing=f"no series with Orthanc id {series}")
            return series
        answer = self._request(
            "POST", "/tools/lookup", data=series.encode(), missing="lookup failed"
        ).json()
        for match in answer if isinstance(answer, list) else []:
            if match.get("Type") == "Series":
                return str(match["ID"])
        raise OrthancNotFound(f"Orthanc holds no series with SeriesInstanceUID '{series}'")

    def instance_ids(self, series_id: str) -> list[str]:
        info = self._request(
            "GET", f"/series/{series_id}", missing=f"no series with Orthanc id {series_id}"
        ).json()
        return [str(i) for i in info.get("Instances", [])]

    def instance_dataset(self, instance_id: str) -> Dataset:
        raw = self._body(
            f"/instances/{instance_id}/file", missing=f"instance {instance_id} vanished"
        )
        try:
            return pydicom.dcmread(io.BytesIO(raw))
        except InvalidDicomError as error:
            raise OrthancDataError(f"instance {instance_id} is not valid DICOM") from error

    def series_datasets(self, series_id: str) -> list[Dataset]:
        """Every instance of the series, as stored, in one WADO-RS request.

        One round trip instead of one per instance: 3x faster for a 128-slice series
        (bench/bench_inference.py). ``transfer-syntax=*`` keeps the stored encoding; without
        it the DICOMweb plugin transcodes, and fails on syntaxes it cannot decode (JPEG 2000).
        """
        info = self._request(
            "GET", f"/series/{series_id}", missing=f"no series with Orthanc id {series_id}"
        ).json()
        study = self._request(
            "GET", f"/studies/{info['ParentStudy']}", missing=f"series {series_id} lost its study"
        ).json()
        study_uid = str(study["MainDicomTags"].get("StudyInstanceUID", ""))
        series_uid = str(info["MainDicomTags"].get("SeriesInstanceUID", ""))
        for name, uid in (("StudyInstanceUID", study_uid), ("SeriesInstanceUID", series_uid)):
            if len(uid) > 64 or not _UID.fullmatch(uid):
                raise OrthancDataError(
                    f"series {series_id} has an invalid {name} (a DICOM UID is digits and dots, "
                    "at most 64 characters)"
                )
        wado = DICOMwebClient(
            url=f"{self.base_url}{DICOMWEB_ROOT}", session=self._http, timeout=self.timeout_s
        )
        try:
            return wado.retrieve_series(study_uid, series_uid, media_types=_AS_STORED)
        except requests.HTTPError as error:
            status = error.response.status_code if error.response is not None else None
            if status == 404:
                raise OrthancNotFound(f"series {series_id} vanished", status) from error
            raise OrthancUnavailable(
                f"Orthanc answered HTTP {status} to WADO-RS of series {series_id}", status
            ) from error
        except requests.RequestException as error:
            raise self._unreachable(error) from error
        except (InvalidDicomError, ValueError) as error:
            raise OrthancDataError(
                f"series {series_id}: an instance is not valid DICOM ({error})"
            ) from error

    def series_datasets_parallel(self, series_id: str) -> list[Dataset]:
        """Every instance of the series, fetched and parsed ``parallel`` at a time.

        Fetching (Orthanc reads files) and parsing overlap across threads instead of following
        one another: on a 200 x 512^2 CT the one WADO-RS answer took 0.8-1.0 s to arrive and
        parse (busy 2-core machine). The pixel data is decoded by the volume builder, on its
        own threads (decoding here too would decode a compressed series twice).
        """
        ids = self.instance_ids(series_id)
        if not ids:
            raise OrthancDataError(f"series {series_id} has no instances")
        with ThreadPoolExecutor(max_workers=min(self.parallel, len(ids))) as pool:
            return list(pool.map(self.instance_dataset, ids))

    def instances_tags(self, series_id: str) -> dict[str, dict[str, Any]]:
        """Every instance's tags (pixel data left out), by Orthanc instance id, in one request.

        Orthanc reads the tags out of the files itself: for a 200 x 512^2 CT this is about
        0.1 s, against 0.6 s for the files and pydicom's parsing of them.
        """
        answer = self._request(
            "GET",
            f"/series/{series_id}/instances-tags?simplify",
            missing=f"no series with Orthanc id {series_id}",
        ).json()
        if not isinstance(answer, dict):
            raise OrthancDataError(f"Orthanc's tags of series {series_id} are not a JSON object")
        return {str(k): v for k, v in answer.items() if isinstance(v, dict)}

    def transfer_syntaxes(self, series_id: str) -> dict[str, str]:
        """Each instance's stored transfer syntax, by Orthanc instance id (one request)."""
        answer = self._request(
            "POST",
            "/tools/bulk-content",
            json={"Resources": [series_id], "Level": "Instance", "Metadata": True},
            missing=f"no series with Orthanc id {series_id}",
        ).json()
        return {
            str(item["ID"]): str(item.get("Metadata", {}).get("TransferSyntax", ""))
            for item in (answer if isinstance(answer, list) else [])
            if isinstance(item, dict) and "ID" in item
        }

    def ordered_slices(self, series_id: str) -> list[str]:
        """The series' instances in Orthanc's slice order, the order of :meth:`series_stored_values`
        (one id per frame: an instance of several frames is repeated)."""
        answer = self._request(
            "GET", f"/series/{series_id}/ordered-slices", missing=f"no series {series_id}"
        ).json()
        try:
            return [str(i) for i, _, count in answer["SlicesShort"] for _ in range(int(count))]
        except (KeyError, TypeError, ValueError) as error:
            raise OrthancDataError(f"Orthanc's slice order of {series_id} is unreadable") from error

    def series_stored_values(self, series_id: str) -> npt.NDArray[Any]:
        """Every frame of the series as Orthanc decodes it, ``[frame, row, column, sample]``,
        stored values (no rescale: Orthanc rounds rescaled values to integers), in one request.

        One request instead of one per instance: for a 200 x 512^2 CT 0.39 s against 0.33-0.49 s
        for raw frames or files 4 at a time, all read by ``Response.content``; 0.18 s read in one
        piece (bench/RESULTS.md).
        """
        content = self._body(
            f"/series/{series_id}/numpy?rescale=0", missing=f"no series {series_id}"
        )
        try:
            return _npy_view(content)
        except (ValueError, OSError) as error:
            raise OrthancDataError(f"Orthanc's voxels of {series_id} are unreadable") from error

    def store(self, dicom_bytes: bytes) -> StoredInstance:
        """``POST /instances``: Orthanc keeps one copy per SOP Instance UID."""
        response = self._request(
            "POST",
            "/instances",
            data=dicom_bytes,
            headers={"Content-Type": "application/dicom"},
            missing="Orthanc refused the instance",
        )
        try:
            answer = response.json()
        except ValueError:
            answer = response.text[:200]
        if not isinstance(answer, dict) or "ID" not in answer:
            raise OrthancDataError(
                f"Orthanc at {self.base_url} did not store the instance: {answer}",
                response.status_code,
            )
        return StoredInstance(
            orthanc_id=str(answer["ID"]),
            series_orthanc_id=str(answer.get("ParentSeries", "")),
            status=str(answer.get("Status", "")),
        )

    def _request(self, method: str, path: str, *, missing: str, **kwargs: Any) -> requests.Response:
        try:
            response = self._http.request(
                method, f"{self.base_url}{path}", timeout=self.timeout_s, **kwargs
            )
        except requests.RequestException as error:
            raise self._unreachable(error) from error
        status = response.status_code
        if status == 404:
            raise OrthancNotFound(missing, status)
        if status in (401, 403):
            raise OrthancUnavailable(
                f"Orthanc at {self.base_url} refused the credentials (HTTP {status}); "
                "check the node's credentials for it",
                status,
            )
        if status >= 400:
            raise OrthancUnavailable(
                f"Orthanc answered HTTP {status} to {method} {path}: {response.text[:200]}",
                status,
            )
        return response

    def _body(self, path: str, *, missing: str) -> bytes:
        """A GET's body, read in one piece: ``Response.content`` reads 10 KiB at a time and joins
        the pieces (a 100 MB ``/numpy`` answer: 0.31 s against 0.19 s, curl 0.15 s)."""
        response = self._request("GET", path, missing=missing, stream=True)
        try:
            return response.raw.read(decode_content=True)
        except (urllib3.exceptions.HTTPError, OSError) as error:  # cut off, short, timed out
            raise self._unreachable(error) from error
        finally:
            response.close()

    def _unreachable(self, error: Exception) -> OrthancUnavailable:
        return OrthancUnavailable(
            f"Orthanc at {self.base_url} is unreachable: it does not answer "
            f"({type(error).__name__}); "
            "check that it runs and that the Orthanc URL is right"
        )


def _npy_view(content: bytes) -> npt.NDArray[Any]:
    """A read-only array over a ``.npy`` file's bytes: ``np.load`` would copy them (100 MB for
    a 200 x 512^2 CT, with the page faults of fresh memory)."""
    header = io.BytesIO(content)
    version = np.lib.format.read_magic(header)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(header)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(header)
    if dtype.hasobject:
        raise ValueError("a .npy of Python objects")
    count = int(np.prod(shape))
    flat = np.frombuffer(content, dtype=dtype, count=count, offset=header.tell())
    return flat.reshape(shape, order="F" if fortran else "C")


@cache
def _shared(base_url: str, auth: tuple[str, str] | None) -> OrthancClient:
    return OrthancClient(base_url, auth, timeout_s=60.0)
