"""HTTP sessions to Orthanc that survive its keep-alive timeout.

Orthanc's web server (CivetWeb) closes a persistent connection after a short idle time, fixed
in Orthanc 1.10. A request sent on such a connection as it closes gets no answer at all
("Remote end closed connection without response"): a client polling about once a second meets
this within minutes. Such a request is sent once more on a fresh connection. Every call the
node makes to Orthanc may be repeated: reads, C-FIND-like lookups, storing an instance
(Orthanc answers "AlreadyStored") and job reports (the plugin applies a report once).
"""

from __future__ import annotations

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

# One more try after a dropped connection or an unanswered request; HTTP statuses are the
# caller's to judge.
_DROPPED_CONNECTION = Retry(
    total=1, connect=1, read=1, status=0, other=0, allowed_methods=None, raise_on_status=False
)


def orthanc_session(
    auth: tuple[str, str] | None = None,
    *,
    pool_connections: int = 10,
    pool_maxsize: int = 10,
    retry: Retry = _DROPPED_CONNECTION,
) -> requests.Session:
    """A session whose requests survive Orthanc closing an idle keep-alive connection.

    ``retry`` may ask for more (it must still retry a dropped connection at least once).
    """
    session = requests.Session()
    session.auth = auth
    adapter = HTTPAdapter(
        pool_connections=pool_connections,
        pool_maxsize=pool_maxsize,
        max_retries=retry,
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
