"""Live reloading of the rules file that never leaves the node without rules.

An engineer edits ``routing-rules.yaml`` while series keep arriving. :meth:`RulesWatcher.check`
(called at intervals by the plugin's scheduler) reloads when the file's modification time, size
or content changed; a file that does not validate is refused, the last good rules stay in force
and the error is kept for the REST route to show. Until a first valid file loads, every series
is ignored with the load error as the reason, so nothing runs on rules nobody could read.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ainode.jobs import utcnow

from .destinations import KnownDestinations
from .errors import Problem, RulesError
from .loader import parse_rules
from .rules import RuleSet

log = logging.getLogger(__name__)

_Signature = tuple[int, int, int]  # mtime_ns, size, inode


@dataclass(frozen=True)
class RulesStatus:
    """What the REST route shows about the rules in force and the last attempt to load."""

    path: str
    loaded: bool  # some valid rules are in force
    sha256: str | None  # of the file whose rules are in force
    loaded_at: datetime | None
    rule_count: int
    mode: str | None
    error: RulesError | None  # why the file on disk is not in force (None: it is)
    checked_at: datetime | None

    def as_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "loaded": self.loaded,
            "sha256": self.sha256,
            "loaded_at": self.loaded_at.isoformat() if self.loaded_at else None,
            "rule_count": self.rule_count,
            "mode": self.mode,
            "error": self.error.as_dict() if self.error else None,
            "checked_at": self.checked_at.isoformat() if self.checked_at else None,
        }


class RulesWatcher:
    """Holds the rules in force and reloads them when the file changes."""

    def __init__(
        self,
        path: Path | str,
        *,
        known_pipelines: Iterable[str] | None = None,
        destinations: KnownDestinations | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.path = Path(path)
        self._known_pipelines = frozenset(known_pipelines) if known_pipelines is not None else None
        self._destinations = destinations
        self._clock = clock
        self._lock = threading.Lock()
        self._rules: RuleSet | None = None
        self._loaded_at: datetime | None = None
        self._error: RulesError | None = None
        self._checked_at: datetime | None = None
        self._signature: _Signature | None = None
        self._refused_sha256: str | None = None
        self.check()

    @property
    def rules(self) -> RuleSet:
        """The rules in force (rules that ignore everything until a valid file has loaded)."""
        with self._lock:
            if self._rules is not None:
                return self._rules
            reason = f"no valid routing rules loaded: {self._error}" if self._error else "no rules"
            return RuleSet.unavailable_rules(reason, source=str(self.path))

    @property
    def error(self) -> RulesError | None:
        with self._lock:
            return self._error

    def status(self) -> RulesStatus:
        with self._lock:
            rules = self._rules
            return RulesStatus(
                path=str(self.path),
                loaded=rules is not None,
                sha256=rules.sha256 if rules else None,
                loaded_at=self._loaded_at,
                rule_count=len(rules.rules) if rules else 0,
                mode=rules.mode.value if rules else None,
                error=self._error,
                checked_at=self._checked_at,
            )

    def validate(self, content: str | bytes, source: str = "<request body>") -> RuleSet:
        """Check rules text against the same registry and settings, without putting it in force.

        Raises :class:`RulesError` with every problem; the rules in force are left untouched.
        """
        return parse_rules(
            content,
            source=source,
            known_pipelines=self._known_pipelines,
            destinations=self._destinations,
        )

    def check(self) -> bool:
        """Reload if the file changed; True when new rules came into force."""
        with self._lock:
            self._checked_at = self._clock()
            try:
                stat = self.path.stat()
            except OSError as error:
                self._signature = None
                self._refused_sha256 = None
                if isinstance(error, FileNotFoundError):
                    message = "the rules file does not exist"
                else:
                    message = f"cannot read the rules file: {error.strerror or error}"
                if self._error is None or self._error.message != message:
                    self._refuse(RulesError(self.path, [Problem(None, "", message)]), None)
                return False
            signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            if signature == self._signature:
                return False
            self._signature = signature
            try:
                raw = self.path.read_bytes()
            except OSError as error:
                problem = Problem(
                    None, "", f"cannot read the rules file: {error.strerror or error}"
                )
                self._refuse(RulesError(self.path, [problem]), None)
                return False
            digest = hashlib.sha256(raw).hexdigest()
            if self._rules is not None and digest == self._rules.sha256:
                self._error = None  # the file is back to the rules in force
                return False
            if digest == self._refused_sha256:
                return False
            try:
                rules = parse_rules(
                    raw,
                    source=self.path,
                    known_pipelines=self._known_pipelines,
                    destinations=self._destinations,
                )
            except RulesError as error:
                self._refuse(error, digest)
                return False
            self._rules = rules
            self._loaded_at = self._clock()
            self._error = None
            self._refused_sha256 = None
            log.info(
                "routing rules loaded from %s: %d rules, %s (sha256 %s)",
                self.path,
                len(rules.rules),
                rules.mode.value,
                digest[:12],
            )
            return True

    def _refuse(self, error: RulesError, digest: str | None) -> None:
        self._error = error
        self._refused_sha256 = digest
        kept = "the previous rules stay in force" if self._rules else "every series is ignored"
        log.error("routing rules refused (%s): %s", kept, error)
