"""Send a job's result files to all its destinations, keeping a status per destination.

Only destinations not yet ``sent`` are tried, in rounds with exponential backoff between them,
so one PACS being down neither blocks the others nor causes anything to be sent twice. The
inputs are files already written: a retry never runs the model again. Feed the returned
statuses back in (they belong in the job's ``JobUpdate.destinations``) to retry later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ainode.jobs import Destination, DestinationKind, DestinationStatus
from ainode.settings import Settings

from .errors import DestinationError
from .registry import make_sender

logger = logging.getLogger(__name__)

SENT = "sent"
FAILED = "failed"
PENDING = "pending"


@dataclass(frozen=True)
class RetryPolicy:
    """Rounds per call and the waits between them: ``first_delay_s * factor**(round - 1)``."""

    rounds: int = 3
    first_delay_s: float = 2.0
    factor: float = 2.0
    max_delay_s: float = 60.0

    def delay_before(self, round_index: int) -> float:
        """Seconds to wait before round ``round_index`` (0 = first round, no wait)."""
        if round_index == 0:
            return 0.0
        return min(self.max_delay_s, self.first_delay_s * self.factor ** (round_index - 1))


@dataclass
class DispatchOutcome:
    statuses: list[DestinationStatus]
    orthanc_instance_ids: list[str] = field(default_factory=list)

    @property
    def all_sent(self) -> bool:
        return all(s.state == SENT for s in self.statuses)

    @property
    def failed(self) -> list[DestinationStatus]:
        return [s for s in self.statuses if s.state != SENT]


def pending_statuses(destinations: Sequence[Destination]) -> list[DestinationStatus]:
    """Fresh statuses for a job's destinations (nothing sent yet)."""
    return [DestinationStatus(destination=d) for d in destinations]


def send_to_destinations(
    files: Sequence[Path],
    statuses: Sequence[DestinationStatus],
    settings: Settings,
    *,
    policy: RetryPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> DispatchOutcome:
    """Send ``files`` wherever ``statuses`` are not yet ``sent``; return the new statuses.

    A retriable failure is tried again in the next round; a non-retriable one (refused
    credentials, unknown AE title...) is marked ``failed`` at once. Orthanc instance ids of
    the ``orthanc`` destinations sent in this call are returned for the job record.
    """
    policy = policy or RetryPolicy()
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"result files are gone before sending: {missing}")
    current = list(statuses)
    todo = [i for i, status in enumerate(current) if status.state != SENT]
    orthanc_ids: list[str] = []
    for round_index in range(policy.rounds):
        if not todo:
            break
        if round_index:
            sleep(policy.delay_before(round_index))
        retry = []
        for i in todo:
            current[i], ids, retriable = _attempt(current[i], files, settings)
            orthanc_ids.extend(ids)
            if retriable:
                retry.append(i)
        todo = retry
    return DispatchOutcome(statuses=current, orthanc_instance_ids=orthanc_ids)


def _attempt(
    status: DestinationStatus, files: Sequence[Path], settings: Settings
) -> tuple[DestinationStatus, list[str], bool]:
    """One try: the new status, Orthanc ids stored (if any) and whether to try again."""
    destination = status.destination
    label = f"{destination.kind.value}:{destination.name}"
    attempts = status.attempts + 1
    try:
        ids = make_sender(destination, settings).send(files)
    except DestinationError as exc:
        logger.warning("sending to %s failed (attempt %d): %s", label, attempts, exc)
        failed = status.model_copy(
            update={"state": FAILED, "attempts": attempts, "error": str(exc)}
        )
        return failed, [], exc.retriable
    logger.info("sent %d files to %s", len(files), label)
    sent = status.model_copy(update={"state": SENT, "attempts": attempts, "error": None})
    return sent, ids if destination.kind is DestinationKind.ORTHANC else [], False
