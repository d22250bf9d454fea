"""What every outbox sender shares: a store, one pass at a time, and a pass loop to run it.

The dispatcher (jobs to the broker) and the webhook sender (notifications to receivers) both
read rows the job store wrote in the transaction that made them due, send what is due in a pass,
and run that pass on their own thread: when woken after new work, when a retry falls due, and
at least every interval. Whoever calls a pass (the loop, a route, a test) holds :attr:`_lock`.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod

from ainode_plugin.jobstore import JobStore
from ainode_plugin.passloop import PassLoop


class OutboxSender(ABC):
    """A sender of the store's due rows; subclasses say what a pass does."""

    stop_timeout_s = 5.0  # how long :meth:`stop` waits for the pass in progress by default

    def __init__(self, name: str, store: JobStore, *, batch_size: int = 50) -> None:
        self.store = store
        self.batch_size = batch_size
        self._lock = threading.Lock()  # one pass at a time, whoever calls
        self._loop = PassLoop(name, self.run_pass)

    @abstractmethod
    def run_pass(self) -> None:
        """Send what is due; call :meth:`again_in` when the next pass should come sooner."""

    def again_in(self, seconds: float) -> None:
        """From a pass on the loop: run the next one within ``seconds``."""
        self._loop.again_in(seconds)

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called: a long pass may end early."""
        return self._loop.stopping

    @property
    def running(self) -> bool:
        return self._loop.running

    def start(self, interval_s: float) -> None:
        """A pass now, then when woken and at least every ``interval_s`` seconds, on a thread
        (from ORTHANC_STARTED; no-op when running)."""
        self._loop.start(interval_s)

    def wake(self) -> None:
        """A pass soon on the sender's thread (after new work is recorded); never blocks."""
        self._loop.wake()

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop sending (from ORTHANC_STOPPED); what is pending stays in the store."""
        self._loop.stop(self.stop_timeout_s if timeout_s is None else timeout_s)
