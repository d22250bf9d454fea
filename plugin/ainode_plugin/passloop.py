"""A background pass that runs when woken and at least every interval, on the monotonic clock.

The dispatcher and the webhook sender both need one: a pass at once after new work is
recorded, passes at a steady pace otherwise, a failed pass logged (never the end of the loop:
the disk may be full for a while), and a stop that wakes the thread instead of waiting out its
pause. ``threading.Event.wait`` measures its timeout on the monotonic clock, so a wall-clock
jump neither stalls nor races the loop.

A pass returns nothing the loop reads (whatever it returns is ignored); a pass that wants the
next one sooner than the interval says so with :meth:`PassLoop.again_in`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

# One pass; its return value, if any, is ignored.
Pass = Callable[[], object]


class PassLoop:
    def __init__(self, name: str, run_pass: Pass) -> None:
        self.name = name
        self._pass = run_pass
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._woken = threading.Event()
        self._again_in: float | None = None  # asked for by the pass in progress

    @property
    def running(self) -> bool:
        return self._thread is not None

    @property
    def stopping(self) -> bool:
        """Whether ``stop`` was called: a long pass may end early."""
        return self._stopping.is_set()

    def start(self, interval_s: float) -> None:
        """A pass now, then one at least every ``interval_s`` seconds (no-op when running)."""
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._loop, args=(interval_s,), name=self.name, daemon=True
        )
        self._thread.start()

    def wake(self) -> None:
        """A pass soon; one asked for during a pass runs right after it. Never blocks."""
        if self._thread is not None:
            self._woken.set()

    def again_in(self, seconds: float) -> None:
        """From a pass: run the next pass within ``seconds`` (never later than the interval)."""
        asked = self._again_in
        self._again_in = seconds if asked is None else min(asked, seconds)

    def stop(self, timeout_s: float = 30.0) -> None:
        """End the loop after the pass in progress; wait up to ``timeout_s`` for it (0: not)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stopping.set()
            self._woken.set()
            if timeout_s > 0:
                thread.join(timeout_s)

    def _loop(self, interval_s: float) -> None:
        while not self._stopping.is_set():
            self._woken.clear()
            self._again_in = None
            try:
                self._pass()
            except Exception:  # any failure: log it, keep the loop, try again later
                if self._stopping.is_set():
                    return  # e.g. the store was closed under the last pass at shutdown
                log.exception("%s: a pass failed; the next one is in %s s", self.name, interval_s)
                self._again_in = None
            soon = self._again_in
            self._woken.wait(interval_s if soon is None else min(soon, interval_s))
