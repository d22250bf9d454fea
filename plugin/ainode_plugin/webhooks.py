"""Webhook notifications of job state changes: signature, delivery with backoff.

A rule's ``notify:`` names webhooks of the settings (``webhooks: {ris: {url, secret}}``). The job
store writes one notification row per interested webhook, with its payload, in the transaction
that changes a job's state (:mod:`ainode_plugin.jobstore.outbox`), so nothing here runs in
Orthanc's callbacks and a receiver that is slow or down never holds a job.
:class:`NotificationSender` delivers those rows on its own thread: a POST of the JSON payload,
signed with the webhook's secret, retried with exponentially growing pauses up to a maximum
number of attempts, then marked failed with the reason (``GET /ai/jobs/{id}`` and
``GET /ai/notifications`` show it). Delivery is at least once (a crash after the receiver
answered but before the row was updated sends it again), so every call carries a delivery id
the receiver can deduplicate on.

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
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from ainode.settings import Settings, Webhook
from ainode_plugin.backoff import AttemptPolicy
from ainode_plugin.jobstore import JobStore, Notification
from ainode_plugin.jobstore import NotificationPayload as NotificationPayload  # its old home
from ainode_plugin.outboxsender import OutboxSender

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-AINode-Signature"
TIMESTAMP_HEADER = "X-AINode-Timestamp"
DELIVERY_HEADER = "X-AINode-Delivery"
EVENT_HEADER = "X-AINode-Event"
USER_AGENT = "ainode-webhooks/1"
_MAX_ERROR = 300
_MAX_ROUNDS = 20  # passes over the due list in one call (each lets a job's next event follow)


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
class DeliveryPolicy(AttemptPolicy):
    """How often and how long a notification is retried before it is failed."""

    max_attempts: int = 8
    backoff_base: timedelta = timedelta(seconds=5)
    backoff_max: timedelta = timedelta(minutes=10)

    @classmethod
    def from_settings(cls, settings: Settings) -> DeliveryPolicy:
        return cls(
            max_attempts=settings.webhook_max_attempts,
            backoff_base=timedelta(seconds=settings.webhook_retry_backoff_s),
            backoff_max=timedelta(seconds=settings.webhook_retry_backoff_max_s),
        )


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


class NotificationSender(OutboxSender):
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
        super().__init__("ainode-webhooks", store, batch_size=batch_size)
        self.webhooks = dict(webhooks)
        self.policy = policy or DeliveryPolicy()
        self._post = post

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
                    if notification.webhook in down or self.stopping:
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

    def run_pass(self) -> None:
        """Deliver what is due; the next pass comes when the next retry falls due, if sooner."""
        self.deliver_due()
        due = self.store.next_notification_at()
        if due is not None:
            self.again_in(max((due - self.store.clock()).total_seconds(), 0.05))
