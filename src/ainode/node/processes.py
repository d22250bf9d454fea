"""One child process of the node: how to start it, tell when it is ready, and stop it."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# Returns None when the service answers, else a short reason why not.
Probe = Callable[[], str | None]


class StartError(RuntimeError):
    """A service did not become ready; the message says which and points at its log."""


@dataclass
class ManagedProcess:
    name: str
    argv: list[str]
    log_file: Path
    probe: Probe
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    start_timeout_s: float = 60.0
    stop_timeout_s: float = 20.0
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.process is not None and not self.running:
            # What the last run left behind (nginx's workers outlive a killed master and keep
            # its port) must go before the part starts again.
            _signal_group(self.process.pid, signal.SIGKILL)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
                cwd=self.cwd,
                start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops us in order
            )
        log.info("started %s (pid %d), log %s", self.name, self.process.pid, self.log_file)

    def wait_ready(self, cancel: threading.Event | None = None) -> None:
        """Return once the probe passes (or ``cancel`` is set); raise if the process dies."""
        deadline = time.monotonic() + self.start_timeout_s
        reason: str | None = "not probed yet"
        while time.monotonic() < deadline and not (cancel and cancel.is_set()):
            if not self.running:
                raise StartError(
                    f"{self.name} exited with status {self.returncode} while starting; "
                    f"see {self.log_file}"
                )
            reason = self.probe()
            if reason is None:
                return
            time.sleep(0.2)
        if cancel and cancel.is_set():
            return
        raise StartError(
            f"{self.name} not ready after {self.start_timeout_s:.0f} s ({reason}); "
            f"see {self.log_file}"
        )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after the timeout; the whole process group goes."""
        if self.process is None or not self.running:
            return
        pid = self.process.pid
        _signal_group(pid, signal.SIGTERM)
        try:
            self.process.wait(self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s; killing it", self.name, self.stop_timeout_s)
            _signal_group(pid, signal.SIGKILL)
            self.process.wait(10)
        # Children of the group (e.g. Celery's pool) must not outlive their parent.
        _signal_group(pid, signal.SIGKILL)
        log.info("stopped %s (exit status %s)", self.name, self.process.returncode)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
