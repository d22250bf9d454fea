"""The ``/ai`` REST routes for jobs, rules, models and explicit triggers.

Routes stay thin: they parse, call the job store / rules / routing service, and shape JSON.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError
from pydantic import ValidationError

from ainode.jobs import Destination, DestinationKind, JobState, JobUpdate, OutputKind
from ainode.registry import Registry, UnknownModelError
from ainode.routing import RulesError, RulesWatcher, Trigger
from ainode.routing.conditions import AllOf
from ainode.routing.destinations import destination_label
from ainode.routing.rules import Decision, Rule
from ainode_plugin.dispatcher import Dispatcher
from ainode_plugin.facts import FactsError, fetch_series_facts
from ainode_plugin.http import HttpError, Request, Response, Router
from ainode_plugin.jobstore import (
    MAX_PAGE,
    InvalidTransition,
    Job,
    JobNotFound,
    JobStore,
    NotificationState,
    is_current_attempt,
)
from ainode_plugin.routing_service import RoutingService

ORTHANC_ID = r"([0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{8})"
JOB_ID = r"([0-9a-f]{32}|[0-9a-f-]{36})"

log = logging.getLogger(__name__)


def job_json(job: Job) -> dict[str, Any]:
    return job.model_dump(mode="json", exclude={"request"}) | {
        "outputs_requested": [o.value for o in job.request.outputs] if job.request else [],
    }


@dataclass
class JobRoutes:
    store: JobStore
    watcher: RulesWatcher
    registry: Registry
    routing: RoutingService
    dispatcher: Dispatcher
    celery: Celery

    def register(self, router: Router) -> None:
        router.add(r"/ai/jobs", "GET", self.list_jobs)
        router.add(rf"/ai/jobs/{JOB_ID}", "GET", self.get_job)
        router.add(rf"/ai/jobs/{JOB_ID}/updates", "POST", self.job_update)
        router.add(rf"/ai/jobs/{JOB_ID}/retry", "POST", self.retry)
        router.add(rf"/ai/jobs/{JOB_ID}/cancel", "POST", self.cancel)
        router.add(r"/ai/notifications", "GET", self.notifications)
        router.add(r"/ai/models", "GET", self.models)
        router.add(r"/ai/rules", "GET", self.rules)
        router.add(r"/ai/rules/reload", "POST", self.reload_rules)
        router.add(r"/ai/rules/validate", "POST", self.validate_rules)
        router.add(rf"/ai/series/{ORTHANC_ID}/jobs", "GET", self.series_jobs)
        router.add(rf"/ai/series/{ORTHANC_ID}/complete", "POST", self.series_complete)
        router.add(rf"/ai/series/{ORTHANC_ID}/run", "POST", self.series_run)
        router.add(rf"/ai/studies/{ORTHANC_ID}/complete", "POST", self.study_complete)

    # -- jobs -------------------------------------------------------------------------------

    def list_jobs(self, request: Request) -> Response:
        query = request.query
        try:
            states = [JobState(s) for s in query.get("state", "").split(",") if s]
            limit = int(query.get("limit", 100))
            offset = int(query.get("offset", 0))
            jobs = self.store.list_jobs(
                state=states or None,
                series=query.get("series") or None,
                study=query.get("study") or None,
                rule=query.get("rule") or None,
                limit=limit,
                offset=offset,
            )
        except ValueError as error:
            raise HttpError(
                400, f"{error} (limit 1..{MAX_PAGE}, offset >= 0, known states, comma-separated)"
            ) from None
        counts = {state.value: n for state, n in self.store.counts_by_state().items()}
        return Response.json({"jobs": [job_json(j) for j in jobs], "counts": counts})

    def get_job(self, request: Request) -> Response:
        """One job, with the webhook notifications about it and how each delivery went."""
        job = self._job(request.groups[0])
        notifications = self.store.list_notifications(job_id=job.id, limit=MAX_PAGE)
        return Response.json(
            job_json(job)
            | {
                "notifications": [
                    n.model_dump(mode="json", exclude={"payload"}) for n in notifications
                ]
            }
        )

    def notifications(self, request: Request) -> Response:
        """Webhook notifications, oldest first: ``?state=failed``, ``webhook=``, ``job=``."""
        query = request.query
        try:
            state = NotificationState(query["state"]) if query.get("state") else None
            found = self.store.list_notifications(
                job_id=query.get("job") or None,
                state=state,
                webhook=query.get("webhook") or None,
                limit=int(query.get("limit", 100)),
            )
        except ValueError as error:
            states = ", ".join(s.value for s in NotificationState)
            raise HttpError(400, f"{error} (limit 1..{MAX_PAGE}; state: {states})") from None
        counts = {state.value: n for state, n in self.store.notification_counts().items()}
        return Response.json(
            {"notifications": [n.model_dump(mode="json") for n in found], "counts": counts}
        )

    def series_jobs(self, request: Request) -> Response:
        jobs = self.store.list_jobs(series=request.groups[0], limit=MAX_PAGE)
        return Response.json({"jobs": [job_json(j) for j in jobs]})

    def job_update(self, request: Request) -> Response:
        try:
            update = JobUpdate.model_validate(request.json())
        except ValidationError as error:
            raise HttpError(400, f"not a job update: {error}") from None
        if update.job_id != request.groups[0]:
            raise HttpError(400, "the update's job_id differs from the URL's")
        with _store_errors():
            job, applied = self.store.apply_update(update)
        # ``current``: the reporting worker holds the job's live attempt and should go on.
        current = is_current_attempt(job, update.attempt) and not job.state.is_final
        return Response.json({"applied": applied, "state": job.state.value, "current": current})

    def retry(self, request: Request) -> Response:
        with _store_errors():
            job = self.store.retry(request.groups[0])
        self.dispatcher.wake()
        return Response.json(job_json(job))

    def cancel(self, request: Request) -> Response:
        with _store_errors():
            job = self.store.cancel(request.groups[0])
        # Publishing waits for a broker that is down, and this is Orthanc's request thread:
        # the revoke goes on a thread of its own, and the cancel answers at once.
        threading.Thread(
            target=_revoke,
            args=(self.celery, job.id, job.attempt_id or job.id),
            name=f"revoke-{job.id[:8]}",
            daemon=True,
        ).start()
        return Response.json(job_json(job))

    def _job(self, job_id: str) -> Job:
        with _store_errors():
            return self.store.get(job_id)

    # -- models and rules -------------------------------------------------------------------

    def models(self, request: Request) -> Response:
        availability = self.registry.availability()
        models = []
        for spec in self.registry:
            entry = spec.model_dump(mode="json")
            entry["availability"] = availability[spec.id].model_dump(mode="json")
            models.append(entry)
        return Response.json({"models": models})

    def rules(self, request: Request) -> Response:
        status = self.watcher.status().as_dict()
        rules = self.watcher.rules
        matches = self.store.match_counts_by_rule()
        status["rules"] = (
            [rule_summary(rule) | {"matches": matches.get(rule.name, 0)} for rule in rules.rules]
            if status["loaded"]
            else []
        )
        status["decisions"] = self.store.counts_by_decider()
        return Response.json(status)

    def reload_rules(self, request: Request) -> Response:
        self.watcher.check()
        status = self.watcher.status().as_dict()
        return Response.json(status, 200 if status["error"] is None else 422)

    def validate_rules(self, request: Request) -> Response:
        """Check a rules file sent as the body, as the node would load it; change nothing."""
        if not request.body.strip():
            raise HttpError(400, "send the rules file (YAML) as the request body")
        try:
            rules = self.watcher.validate(request.body)
        except RulesError as error:
            return Response.json({"valid": False, "error": error.as_dict()}, 422)
        return Response.json(
            {
                "valid": True,
                "mode": rules.mode.value,
                "sha256": rules.sha256,
                "rules": [rule_summary(rule) for rule in rules.rules],
            }
        )

    # -- explicit triggers ------------------------------------------------------------------

    def series_complete(self, request: Request) -> Response:
        """The caller declares the series complete: decide now, without waiting for stability."""
        decided = self._decide(request.groups[0], Trigger.SERIES)
        return Response.json({"jobs": decided})

    def study_complete(self, request: Request) -> Response:
        """A whole study arrived (e.g. one STOW-RS request): decide for each of its series."""
        try:
            study = self.routing.get_json(f"/studies/{request.groups[0]}")
        except LookupError:
            raise HttpError(404, f"no study {request.groups[0]}") from None
        decided = []
        for series_id in study.get("Series", []):
            decided += self._decide(series_id, Trigger.SERIES)
            decided += self._decide(series_id, Trigger.STUDY)
        return Response.json({"jobs": decided})

    def series_run(self, request: Request) -> Response:
        """Run a pipeline on a series by hand (the "Run AI" action), outside the rules."""
        body = request.json() or {}
        if not isinstance(body, dict) or not isinstance(body.get("pipeline"), str):
            raise HttpError(400, 'expected {"pipeline": "<model or cascade id>", ...}')
        try:
            spec = self.registry.get(body["pipeline"])
            outputs = tuple(OutputKind(o) for o in body.get("outputs", ["SEG"]))
        except UnknownModelError as error:
            raise HttpError(404, str(error).strip("'\"")) from None
        except ValueError as error:
            raise HttpError(400, f"unknown output: {error}") from None
        rule = Rule(
            name=f"manual:{spec.id}",
            condition=AllOf(()),
            pipeline=spec.id,
            outputs=outputs,
            destinations=(Destination(kind=DestinationKind.ORTHANC),),
        )
        facts = self._facts(request.groups[0])
        decision = Decision(run=True, decided_by=rule.name, reason="requested by a user", rule=rule)
        job, created = self.store.record_decision(facts, decision)
        self.dispatcher.wake()
        return Response.json(job_json(job) | {"created": created})

    def _decide(self, series_id: str, trigger: Trigger) -> list[dict[str, Any]]:
        decided = self.routing.decide(self._facts(series_id), trigger)
        if any(new and job.request for job, new in decided):
            self.dispatcher.wake()
        return [job_json(job) | {"created": new} for job, new in decided]

    def _facts(self, series_id: str) -> Any:
        try:
            return fetch_series_facts(self.routing.get_json, series_id)
        except LookupError:
            raise HttpError(404, f"no series {series_id}") from None
        except FactsError as error:
            raise HttpError(422, str(error)) from None


def rule_summary(rule: Rule) -> dict[str, Any]:
    """A rule as the REST routes show it."""
    return {
        "name": rule.name,
        "line": rule.line,
        "enabled": rule.enabled,
        "action": rule.action.value,
        "trigger": rule.trigger.value,
        "pipeline": rule.pipeline,
        "when": rule.condition.describe(),
        "outputs": [o.value for o in rule.outputs],
        "destinations": [d.model_dump(mode="json") for d in rule.destinations],
        "destination_labels": [destination_label(d) for d in rule.destinations],
        "notify": [
            {"webhook": n.webhook, "events": [e.value for e in n.events]} for n in rule.notify
        ],
        "queue": rule.queue,
    }


def _revoke(celery: Celery, job_id: str, task_id: str) -> None:
    """Stop a cancelled attempt mid-step: a waiting task is dropped, a running one's pool
    process terminated. Without it (broker down) the attempt's heartbeat learns of the cancel
    (:class:`ainode_worker.jobrunner.Lease`)."""
    try:
        celery.control.revoke(task_id, terminate=True, signal="SIGTERM")
    except (OperationalError, OSError) as error:
        log.warning("job %s cancelled; the broker did not take the revoke: %s", job_id, error)


@contextmanager
def _store_errors() -> Iterator[None]:
    """The job store's refusals as HTTP answers: unknown job 404, impossible change 409."""
    try:
        yield
    except JobNotFound as error:
        raise HttpError(404, str(error)) from None
    except InvalidTransition as error:
        raise HttpError(409, str(error)) from None
