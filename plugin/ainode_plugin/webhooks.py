"""Webhook notifications of job state changes: payload, signature, delivery with backoff.

A rule's ``notify:`` names webhooks of the settings (``webhooks: {ris: {url, secret}}``). The job
store writes one notification row per interested webhook in the transaction that changes a
job's state (:meth:`JobStore._changed`), so nothing here runs in Orthanc's callbacks and a
receiver that is slow or down never holds a job. :class:`NotificationSender` delivers those rows
on its own thread: a POST of the JSON payload, signed with the webhook's secret, retried with
exponentially growing pauses up to a maximum number of attempts, then marked failed with the
reason (``GET /ai/jobs/{id}`` and ``GET /ai/notifications`` show it). Delivery is at least
once (a crash after the receiver answered but before the row was updated sends it again), so
every call carries a delivery id the receiver can deduplicate on.

Signature: ``X-AINode-Signature: sha256=<hex>`` is the HMAC-SHA256, keyed with the secret, of
``<X-AINode-Timestamp>.<body>``; signing the timestamp too lets a receiver refuse replays of
an old call. Payloads carry UIDs and Orthanc ids, never a patient's name, ID or birth date;
secrets and URLs (which may embed a token) are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from ainode.jobs import JobState
from ainode.settings import Settings, Webhook
from ainode_plugin.backoff import doubling_backoff
from ainode_plugin.passloop import PassLoop

if TYPE_CHECKING:
    from ainode_plugin.jobstore import Job, JobStore, Notification

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-AINode-Signature"
TIMESTAMP_HEADER = "X-AINode-Timestamp"
DELIVERY_HEADER = "X-AINode-Delivery"
EVENT_HEADER = "X-AINode-Event"
USER_AGENT = "ainode-webhooks/1"
_MAX_ERROR = 300
_MAX_ROUNDS = 20  # passes over the due list in one call (each lets a job's next event follow)


class OutputRef(BaseModel):
    """One result the job produced, by DICOM identity."""

    kind: str = Field(description="SEG, RTSTRUCT, SR, ...")
    sop_instance_uid: str


class NotificationPayload(BaseModel):
    """The JSON body of a webhook call (the contract with receivers: add fields, never rename)."""

    delivery_id: str = Field(description="unique per notification; the same on every retry")
    event: str = Field(description='"job.<state>", e.g. "job.done"')
    occurred_at: datetime
    job_id: str
    state: JobState
    previous_state: JobState | None
    rule: str | None
    pipeline: str | None
    series_uid: str
    study_uid: str
    series_id: str = Field(description="Orthanc id of the series")
    study_id: str = Field(description="Orthanc id of the study")
    attempts: int = Field(description="times the job was handed to a worker so far")
    outputs: list[OutputRef] = Field(description="results written, by SOP Instance UID")
    output_instances: list[str] = Field(description="Orthanc ids of results stored in this node")
    error: str | None = Field(description="why the job failed (failed only)")

    @classmethod
    def for_job(cls, job: Job, previous: JobState | None, delivery_id: str) -> NotificationPayload:
        results = job.detail.get("results")
        outputs = (
            [OutputRef(kind=str(k), sop_instance_uid=str(v)) for k, v in results.items() if v]
            if isinstance(results, dict)
            else []
        )
        return cls(
            delivery_id=delivery_id,
            event=f"job.{job.state.value}",
            occurred_at=job.updated_at,
            job_id=job.id,
            state=job.state,
            previous_state=previous,
            rule=job.rule,
            pipeline=job.pipeline,
            series_uid=job.series_uid,
            study_uid=job.study_uid,
            series_id=job.series_id,
            study_id=job.study_id,
            attempts=job.attempts,
            outputs=outputs,
            output_instances=list(job.outputs),
            error=job.error if job.state == JobState.FAILED else None,
        )


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-AINode-Signature`` value for ``body`` sent at ``timestamp`` (Unix seconds)."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify_signature(
    secret: str,
    body: bytes,
    timestamp: str,
    signature_value: str,
    *,
    tolerance_s: float = 300.0,
    now: float | None = None,
) -> bool:
    """What a receiver checks: the signature matches and the timestamp is recent."""
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    moment = time.time() if now is None else now
    if abs(moment - sent) > tolerance_s:
        return False
    return hmac.compare_digest(signature(secret, sent, body), signature_value)


def signed_headers(
    secret: str, body: bytes, timestamp: int, notification: Notification
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(secret, timestamp, body),
        DELIVERY_HEADER: notification.id,
        EVENT_HEADER: notification.payload.event,
    }


@dataclass(frozen=True)
class DeliveryResult:
    ok: bool
    status: int | None  # HTTP status, None when no answer came
    error: str | None = None


Post = Callable[[Webhook, bytes, Mapping[str, str]], DeliveryResult]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer we do not follow: a signed POST must not turn into a GET."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


# Direct connections only (no proxy from the environment): receivers are hospital systems.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def post_json(webhook: Webhook, body: bytes, headers: Mapping[str, str]) -> DeliveryResult:
    """POST ``body``; any 2xx is a delivery, anything else (3xx included) a failed attempt."""
    # The settings allow only http(s) URLs (Webhook.url), so no file: or custom scheme.
    request = urllib.request.Request(  # noqa: S310
        webhook.url, data=body, headers=dict(headers), method="POST"
    )
    try:
        with _OPENER.open(request, timeout=webhook.timeout_s) as response:
            response.read(4096)
            return DeliveryResult(True, int(response.status))
    except urllib.error.HTTPError as error:
        with error:
            return DeliveryResult(False, int(error.code), f"HTTP {error.code} {error.reason}")
    except urllib.error.URLError as error:
        return DeliveryResult(False, None, f"no answer: {error.reason}")
    except (OSError, http.client.HTTPException, ValueError) as error:
        return DeliveryResult(False, None, f"no answer: {type(error).__name__}: {error}")


@dataclass(frozen=True)
class DeliveryPolicy:
    """How often and how long a notification is retried before it is failed."""

    max_attempts: int = 8
    backoff_base: timedelta = timedelta(seconds=5)
    backoff_max: timedelta = timedelta(minutes=10)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.backoff_base <= timedelta(0) or self.backoff_max <= timedelta(0):
            raise ValueError("backoff durations must be positive")

    @classmethod
    def from_settings(cls, settings: Settings) -> DeliveryPolicy:
        return cls(
            max_attempts=settings.webhook_max_attempts,
            backoff_base=timedelta(seconds=settings.webhook_retry_backoff_s),
            backoff_max=timedelta(seconds=settings.webhook_retry_backoff_max_s),
        )

    def backoff(self, attempts: int) -> timedelta:
        """Pause after the ``attempts``-th failed try: base, 2x base, 4x base... up to the max."""
        return doubling_backoff(attempts, self.backoff_base, self.backoff_max)


class NotifyOutcome(StrEnum):
    DELIVERED = "delivered"
    RETRYING = "retrying"
    FAILED = "failed"


@dataclass(frozen=True)
class DeliveryReport:
    """Notification ids touched by one pass, for logs and tests."""

    delivered: tuple[str, ...] = ()
    retrying: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


class NotificationSender:
    """Delivers the store's due notifications; :meth:`start` runs it on a background thread."""

    def __init__(
        self,
        store: JobStore,
        webhooks: Mapping[str, Webhook],
        *,
        policy: DeliveryPolicy | None = None,
        post: Post = post_json,
        batch_size: int = 50,
    ) -> None:
        self.store = store
        self.webhooks = dict(webhooks)
        self.policy = policy or DeliveryPolicy()
        self.batch_size = batch_size
        self._post = post
        self._lock = threading.Lock()  # one pass at a time
        self._loop = PassLoop("ainode-webhooks", self._deliver_pass)

    def deliver_due(self) -> DeliveryReport:
        """Try each due notification once; a delivery lets the job's next one follow at once.

        After a failed attempt the webhook's other notifications wait ``backoff_base`` (not
        counted as attempts), so a receiver that is down costs one timeout per pause, not one
        per notification.
        """
        with self._lock:
            now = self.store.clock()
            delivered: list[str] = []
            retrying: list[str] = []
            failed: list[str] = []
            down: set[str] = set()
            for _ in range(_MAX_ROUNDS):
                progressed = False
                for notification in self.store.due_notifications(now, limit=self.batch_size):
                    if notification.webhook in down or self._loop.stopping:
                        continue
                    if notification.webhook not in self.webhooks:
                        reason = (
                            f"webhook {notification.webhook!r} is no longer in the node's settings"
                        )
                        self.store.notification_failed(
                            notification.id, reason, None, attempted=False
                        )
                        log.warning("notification %s failed: %s", notification.id, reason)
                        failed.append(notification.id)
                        progressed = True
                        continue
                    outcome = self._deliver(notification, self.webhooks[notification.webhook])
                    if outcome == NotifyOutcome.DELIVERED:
                        delivered.append(notification.id)
                        progressed = True
                        continue
                    down.add(notification.webhook)
                    self.store.postpone_notifications(
                        notification.webhook, now + self.policy.backoff_base
                    )
                    target = retrying if outcome == NotifyOutcome.RETRYING else failed
                    target.append(notification.id)
                if not progressed:
                    break
            return DeliveryReport(tuple(delivered), tuple(retrying), tuple(failed), now)

    def _deliver(self, notification: Notification, webhook: Webhook) -> NotifyOutcome:
        what = (
            f"notification {notification.id} "
            f"(job {notification.job_id}, {notification.event.value})"
        )
        body = notification.payload.model_dump_json().encode("utf-8")
        now = self.store.clock()  # the moment of sending: a pass may take a while
        timestamp = int(now.timestamp())
        headers = signed_headers(webhook.secret, body, timestamp, notification)
        try:
            result = self._post(webhook, body, headers)
        except Exception as exc:  # a bug in delivery must not stop the sender
            log.exception("%s: delivery raised", what)
            result = DeliveryResult(False, None, f"internal error: {type(exc).__name__}")
        attempts = notification.attempts + 1
        if result.ok:
            self.store.notification_delivered(notification.id, result.status or 200)
            log.info("%s delivered to webhook %s", what, notification.webhook)
            return NotifyOutcome.DELIVERED
        error = (result.error or "failed")[:_MAX_ERROR]
        if attempts >= self.policy.max_attempts:
            reason = f"gave up after {attempts} attempts: {error}"
            self.store.notification_failed(notification.id, reason, result.status)
            log.warning("%s to webhook %s failed: %s", what, notification.webhook, reason)
            return NotifyOutcome.FAILED
        pause = self.policy.backoff(attempts)
        self.store.notification_retry(notification.id, now + pause, error, result.status)
        log.warning(
            "%s to webhook %s: attempt %d failed (%s); next in %g s",
            what,
            notification.webhook,
            attempts,
            error,
            pause.total_seconds(),
        )
        return NotifyOutcome.RETRYING

    # --- the background thread ---------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._loop.running

    def start(self, interval_s: float = 2.0) -> None:
        """Deliver on a thread: when woken, when a retry falls due, and every ``interval_s``."""
        self._loop.start(interval_s)

    def wake(self) -> None:
        """Deliver soon (the store calls this after writing a notification); never blocks."""
        self._loop.wake()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop delivering; pending notifications stay in the store for the next start."""
        self._loop.stop(timeout_s)

    def _deliver_pass(self) -> float | None:
        """Deliver what is due; seconds until the next retry falls due (None: nothing waits)."""
        self.deliver_due()
        due = self.store.next_notification_at()
        if due is None:
            return None
        return max((due - self.store.clock()).total_seconds(), 0.05)
