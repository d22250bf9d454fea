"""How a rule's priority and pool become a Celery queue name: the one place that decides it.

Workers subscribe to the queues they can serve (``celery worker -Q ainode.gpu.high,...``), so a
queue name must be predictable from the rule alone. The scheme is::

    ainode.<level>            when the rule names no pool  (ainode.high, ainode.default, ainode.low)
    ainode.<pool>.<level>     when it does                 (ainode.gpu.high, ainode.cpu.low, ...)

where ``<level>`` is ``high``, ``default`` (priority ``normal``) or ``low``. Written results
are delivered from :data:`DELIVERY_QUEUE`, a light queue that CPU worker processes serve.
"""

from __future__ import annotations

from enum import StrEnum

QUEUE_PREFIX = "ainode"
DELIVERY_QUEUE = f"{QUEUE_PREFIX}.cpu.delivery"  # no rule sends here: jobs' deliveries do


class Priority(StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class Pool(StrEnum):
    """Which kind of worker may run the job; ``None`` on a rule means any worker."""

    GPU = "gpu"
    CPU = "cpu"


_LEVEL = {Priority.HIGH: "high", Priority.NORMAL: "default", Priority.LOW: "low"}


def queue_name(priority: Priority | str = Priority.NORMAL, pool: Pool | str | None = None) -> str:
    """The Celery queue for a job of this priority, for this pool of workers."""
    level = _LEVEL[Priority(priority)]
    if pool is None:
        return f"{QUEUE_PREFIX}.{level}"
    return f"{QUEUE_PREFIX}.{Pool(pool).value}.{level}"


def all_queue_names(pool: Pool | str | None = None) -> list[str]:
    """Every queue a worker of ``pool`` should consume, most urgent first."""
    return [queue_name(priority, pool) for priority in Priority]


def every_queue_name() -> list[str]:
    """All queues, most urgent first: what the one worker of a single-machine node consumes."""
    pools: list[Pool | None] = [None, *Pool]
    return [queue_name(priority, pool) for priority in Priority for pool in pools]


def is_delivery_queue(name: str) -> bool:
    """A delivery queue: the node's, or a worker machine's own (``ainode.cpu.delivery.<name>``)."""
    return name == DELIVERY_QUEUE or name.startswith(f"{DELIVERY_QUEUE}.")
