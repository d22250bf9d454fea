"""Delivery of a job's written results to its destinations: a task of its own on the light
``delivery_queue``, served by CPU worker processes, so a slow or dead PACS never holds the
worker that ran the model (:mod:`ainode_worker.jobrunner` hands off and takes its next series).

Where the results live between the two tasks: in the results folder where the inference task
wrote them (``<data dir>/results/<job id>/``, with its manifest). The delivery queue is
therefore served by workers that share that data directory: ``ainode up`` starts one on the
node's machine, docker-compose's ``worker-delivery`` mounts the workers' volume. A delivery that
finds no results (a queue served on another machine) fails the job with that reason rather
than running the model again. Storing first into Orthanc and fetching from it for remote
destinations would work across machines, but puts results into Orthanc for jobs that did not
ask for it and reads every file twice; one delivery worker per data directory is simpler.

The job's lease covers delivery: the delivery task is the same attempt (same Celery task id,
so the cancel route's revoke stops it, queued or running) and heartbeats as the inference did.
A delivery worker also heartbeats for the deliveries it has reserved and not yet started
(:class:`ReservedHeartbeat`), so a job waiting behind a slow PACS is not taken for a dead one.
A delivery worker killed mid-way: its heartbeats stop, the node sends the job again as a new
attempt, which finds its manifest and hands the same results to delivery again; destinations
keep one copy per SOP Instance UID (results carry deterministic UIDs), so nothing is stored
twice, and the killed attempt's message, given back by Celery, is discarded as superseded.
Cancel: checked before the first send and between rounds of retries; a round under way
finishes its files (the revoke ends it sooner where the broker is up).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace

from ainode.jobs import JobState, JobUpdate
from ainode_worker.destinations import pending_statuses, send_to_destinations
from ainode_worker.jobrunner import (
    DeliveryOrder,
    JobReporter,
    Lease,
    WorkerContext,
    hold_at_test_gate,
    results_folder,
    reuse_results,
    run_leased,
)

log = logging.getLogger(__name__)


def deliver(order: DeliveryOrder, ctx: WorkerContext, reporter: JobReporter) -> JobUpdate:
    """Send the job's written results to its destinations and report the job's end.

    Reports name the worker that ran the model (the job's ``worker``); ``detail`` names this
    delivery worker (``delivered_by``)."""
    as_worker = replace(ctx, hostname=order.worker)
    return run_leased(
        order.request,
        as_worker,
        reporter,
        lambda lease: _deliver(order, as_worker, lease, ctx.hostname),
    )


def _deliver(order: DeliveryOrder, ctx: WorkerContext, lease: Lease, here: str) -> JobUpdate:
    request = order.request
    detail = dict(order.detail)
    steps = dict(detail.get("steps", {}))
    written = reuse_results(results_folder(ctx.settings, request.job_id), request)
    if written is None:
        return JobUpdate(
            job_id=request.job_id,
            state=JobState.FAILED,
            error=(
                f"the results of job {request.job_id} are not on delivery worker "
                f"{here}: the delivery queue must be served by workers sharing the "
                "inference workers' data directory"
            ),
            worker=ctx.hostname,
            attempt=request.attempt,
        )
    files = [w.path for w in written if w.is_dicom]
    hold_at_test_gate(ctx.settings, request, "store")
    lease.check("store")  # as late as can be: a cancel until now stores nothing
    started = time.perf_counter()
    outcome = send_to_destinations(
        files,
        pending_statuses(request.destinations),
        ctx.settings,
        sleep=lease.checked_sleep,  # no new round to a down PACS after a cancel
    )
    steps["store_s"] = round(time.perf_counter() - started, 4)
    failed = outcome.failed
    return JobUpdate(
        job_id=request.job_id,
        state=JobState.DONE if not failed else JobState.FAILED,
        error=None
        if not failed
        else "; ".join(
            f"{s.destination.kind.value}:{s.destination.name}: {s.error}" for s in failed
        ),
        outputs=outcome.orthanc_instance_ids,
        destinations=outcome.statuses,
        worker=ctx.hostname,
        attempt=request.attempt,
        detail={**detail, "steps": steps, "delivered_by": here},
    )


class ReservedHeartbeat:
    """Keeps alive the leases of deliveries a worker holds but has not started (prefetched
    behind a slow destination): without it the node would take them for lost after
    ``job_running_deadline_s`` and send them again. Runs in the worker's main process."""

    def __init__(
        self,
        ctx: WorkerContext,
        waiting: Callable[[], Iterable[DeliveryOrder]],
    ) -> None:
        self.ctx = ctx
        self.waiting = waiting
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="delivery-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        reporter = JobReporter(self.ctx.settings)
        while not self._stop.wait(self.ctx.settings.job_heartbeat_s):
            try:
                orders = list(self.waiting())
            except RuntimeError:  # the set changed while read: next beat
                continue
            for order in orders:
                reporter.report(
                    JobUpdate(
                        job_id=order.request.job_id,
                        state=JobState.RUNNING,
                        worker=order.worker,
                        attempt=order.request.attempt,
                        detail={"delivery": "waiting"},
                    )
                )
