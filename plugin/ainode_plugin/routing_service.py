"""From Orthanc's events to recorded jobs, off Orthanc's callback threads.

Orthanc's change callback only puts the series id on a queue (:meth:`RoutingService.notify`).
One thread takes it from there: fetch the series' facts, evaluate the rules, record every
decision in the job store and wake the dispatcher. Events Orthanc never delivered (it drops
``STABLE_SERIES`` for a series that became stable while it was stopping) are recovered by a
sweep of Orthanc's change log from the last sequence number handled, at start and every minute.
The sweep never moves that mark past a series that is not stable yet: if Orthanc stops before
its event fires, the sweep after the restart finds it again.

The rules themselves run on one more thread, :class:`RuleRunner`, with a time budget: every
caller (the routing thread, and a REST route deciding on request on Orthanc's HTTP thread)
waits for it without holding Python's lock, and a series whose evaluation overruns the budget
is ignored with that reason instead of holding up everything behind it.

A study becoming stable is evaluated only when some enabled rule is triggered per study;
otherwise every series would get a second, pointless "ignored" record.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ainode.inputcheck import VolumeBudget
from ainode.routing import RULES_OVER_BUDGET, Decision, RuleSet, RulesWatcher, Trigger
from ainode_plugin.dispatcher import Dispatcher
from ainode_plugin.facts import FactsError, SeriesFacts, fetch_series_facts
from ainode_plugin.jobstore import Job, JobStore

log = logging.getLogger(__name__)

# Orthanc reserves global properties >= 1024 for plugins.
LAST_CHANGE_PROPERTY = 41_024
_SERIES_CHANGES = {"NewSeries", "NewChildInstance", "StableSeries"}
_STOP = object()

GetJson = Callable[[str], Any]


@dataclass(frozen=True)
class _Checkpoint:
    """Queued after a sweep's series: the change log is marked handled only once they are."""

    last_change: int


@dataclass(frozen=True)
class Evaluate:
    """Work item: decide about one series, for the series or the study trigger."""

    series_id: str
    trigger: Trigger = Trigger.SERIES
    require_stable: bool = False


@dataclass(frozen=True)
class EvaluateStudy:
    """Work item: a study became stable; decide about each series for the study trigger."""

    study_id: str


@dataclass
class _Evaluation:
    rules: RuleSet
    facts: SeriesFacts
    trigger: Trigger
    done: threading.Event
    decisions: list[Decision] | None = None
    error: Exception | None = None


class RuleRunner:
    """Evaluates rules on its own thread; a caller waits at most ``budget_s`` for the answer.

    RE2 keeps each match linear and values are capped at their VR's length, so the budget is
    a last line: whatever a rule costs, no caller waits longer than it.
    """

    def __init__(self, budget_s: float, volume_budget: VolumeBudget | None = None) -> None:
        self.budget_s = budget_s
        self.volume_budget = volume_budget
        self._queue: queue.Queue[_Evaluation] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="ainode-rules-eval", daemon=True)
        self._thread.start()

    def evaluate(self, rules: RuleSet, facts: SeriesFacts, trigger: Trigger) -> list[Decision]:
        work = _Evaluation(rules, facts, trigger, threading.Event())
        self._queue.put(work)
        if not work.done.wait(self.budget_s):
            log.warning(
                "series %s: rule evaluation took longer than its %.3g s budget; ignored",
                facts.series_id,
                self.budget_s,
            )
            reason = (
                f"the rules took longer than the {self.budget_s:g} s budget (setting "
                "rules_budget_s) to decide; the series was not routed"
            )
            return [Decision(False, RULES_OVER_BUDGET, reason, trigger=trigger)]
        if work.error is not None:
            raise work.error
        return work.decisions or []

    def _run(self) -> None:
        while True:
            work = self._queue.get()
            try:
                work.decisions = work.rules.evaluate(
                    work.facts, trigger=work.trigger.value, budget=self.volume_budget
                )
            except Exception as error:  # handed to the caller, who has the context to log it
                work.error = error
            work.done.set()


class RoutingService:
    def __init__(
        self,
        orthanc: Any,
        store: JobStore,
        watcher: RulesWatcher,
        dispatcher: Dispatcher,
        rules_budget_s: float = 1.0,
        volume_budget: VolumeBudget | None = None,
    ) -> None:
        self.orthanc = orthanc
        self.store = store
        self.watcher = watcher
        self.dispatcher = dispatcher
        self.rules = RuleRunner(rules_budget_s, volume_budget)
        self._queue: queue.Queue[object] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._sweep_lock = threading.Lock()
        self._settled_at = 0.0  # monotonic time from which the sweep may route stable series

    # -- called from Orthanc's threads: enqueue only --------------------------------------

    def notify(self, item: Evaluate | EvaluateStudy) -> None:
        self._queue.put(item)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, restart_grace_s: float = 0.0) -> None:
        """Start the routing thread; for ``restart_grace_s`` the change sweep routes nothing
        (a series Orthanc calls stable may be one whose sender the restart cut off)."""
        self._settled_at = time.monotonic() + restart_grace_s
        self._thread = threading.Thread(target=self._run, name="ainode-routing", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(10)
            self._thread = None

    def drain(self, timeout_s: float = 10.0) -> None:
        """Wait until every queued item is handled (tests and explicit triggers)."""
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout_s)

    # -- the routing thread ------------------------------------------------------------------

    def _run(self) -> None:
        failed = False  # an item failed since the last checkpoint: keep the mark where it is
        failures = 0  # in a row: the first is logged with its traceback, the others in a line
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            try:
                if isinstance(item, threading.Event):
                    item.set()
                elif isinstance(item, Evaluate):
                    self._handle(item)
                elif isinstance(item, EvaluateStudy):
                    self._expand(item)
                elif isinstance(item, _Checkpoint):
                    if not failed:
                        self.orthanc.SetGlobalProperty(LAST_CHANGE_PROPERTY, str(item.last_change))
                        if failures:
                            log.warning("routing: working again after %d failure(s)", failures)
                            failures = 0
                    failed = False
            except Exception as error:  # e.g. the disk is full: this thread must outlive it
                # The change sweep finds the series again from the unmoved mark.
                if failures:
                    log.warning(
                        "routing: %s failed again (%s); the sweep will try again", item, error
                    )
                else:
                    log.exception("routing: %s failed; the change sweep will try again", item)
                failures += 1
                failed = True

    def _handle(self, item: Evaluate) -> None:
        try:
            if item.require_stable and not self.get_json(f"/series/{item.series_id}").get(
                "IsStable"
            ):
                return  # its STABLE_SERIES event will come
            facts = fetch_series_facts(self.get_json, item.series_id)
        except (FactsError, LookupError, ValueError) as error:
            log.warning("series %s not routed: %s", item.series_id, error)
            return
        created = [job for job, new in self.decide(facts, item.trigger) if new]
        if any(job.request is not None for job in created):
            self.dispatcher.wake()

    def _expand(self, item: EvaluateStudy) -> None:
        if not self._has_study_rules():
            return
        try:
            series = self.get_json(f"/studies/{item.study_id}").get("Series", [])
        except LookupError as error:
            log.warning("study %s not routed: %s", item.study_id, error)
            return
        for series_id in series:
            self._handle(Evaluate(str(series_id), Trigger.STUDY))

    def decide(self, facts: SeriesFacts, trigger: Trigger) -> list[tuple[Job, bool]]:
        """Evaluate the current rules and record every decision (duplicates are no-ops).

        Nothing is recorded for the study trigger when no enabled rule uses it.
        """
        if trigger == Trigger.STUDY and not self._has_study_rules():
            return []
        decisions = self.rules.evaluate(self.watcher.rules, facts, trigger)
        return [self.store.record_decision(facts, decision) for decision in decisions]

    def _has_study_rules(self) -> bool:
        return any(
            rule.enabled and rule.trigger == Trigger.STUDY for rule in self.watcher.rules.rules
        )

    def get_json(self, uri: str) -> Any:
        try:
            return json.loads(self.orthanc.RestApiGet(uri))
        except self.orthanc.OrthancException as error:  # e.g. the series was deleted: 404
            raise LookupError(f"GET {uri} failed: {error}") from error

    # -- recovering events Orthanc did not deliver -------------------------------------------

    def sweep_changes(self, page: int = 500) -> int:
        """Queue every stable series changed since the last sweep; returns how many.

        The mark saved afterwards stays before the first change of any series still
        receiving instances, so the next sweep (after a restart too) looks at it again.
        """
        with self._sweep_lock:
            start = int(self.orthanc.GetGlobalProperty(LAST_CHANGE_PROPERTY, "0") or 0)
            since = start
            first_seen: dict[str, int] = {}  # series id -> sequence number of its first change
            while True:
                answer = self.get_json(f"/changes?since={since}&limit={page}")
                for change in answer.get("Changes", []):
                    if (
                        change.get("ResourceType") == "Series"
                        and change.get("ChangeType") in _SERIES_CHANGES
                    ):
                        first_seen.setdefault(str(change["ID"]), int(change.get("Seq", since)))
                since = int(answer.get("Last", since))
                if answer.get("Done", True):
                    break
            checkpoint = since
            queued = arriving = 0
            for series_id, seq in sorted(first_seen.items(), key=lambda item: item[1]):
                try:
                    stable = bool(self.get_json(f"/series/{series_id}").get("IsStable"))
                except LookupError:
                    continue  # deleted since: nothing to route
                if stable and time.monotonic() >= self._settled_at:
                    self.notify(Evaluate(series_id, require_stable=True))
                    queued += 1
                else:
                    arriving += 1
                    checkpoint = min(checkpoint, max(seq - 1, start))
            self._queue.put(_Checkpoint(checkpoint))
            if queued or arriving:
                log.info(
                    "change sweep: %d stable series to check, %d still arriving",
                    queued,
                    arriving,
                )
            return queued
