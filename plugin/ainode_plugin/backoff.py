"""The doubling pause and attempt limit shared by job re-sends and webhook deliveries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

# 2**30 x any positive base already exceeds every sensible maximum; capping the exponent keeps
# a job or notification with a huge attempt count from building an unrepresentable timedelta.
_MAX_EXPONENT = 30


def doubling_backoff(attempts: int, base: timedelta, maximum: timedelta) -> timedelta:
    """Pause after the ``attempts``-th try: ``base``, 2x, 4x... never more than ``maximum``."""
    exponent = min(max(attempts - 1, 0), _MAX_EXPONENT)
    return min(base * (1 << exponent), maximum)


@dataclass(frozen=True)
class AttemptPolicy:
    """How many tries an outbox row gets and the doubling pause between them (job re-sends:
    ``RetryPolicy``; webhook deliveries: ``DeliveryPolicy``)."""

    max_attempts: int
    backoff_base: timedelta
    backoff_max: timedelta

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if any(duration <= timedelta(0) for duration in self.durations()):
            raise ValueError(f"{type(self).__name__} durations must be positive")

    def durations(self) -> tuple[timedelta, ...]:
        """Every duration of the policy (each must be positive)."""
        return (self.backoff_base, self.backoff_max)

    def backoff(self, attempts: int) -> timedelta:
        """Pause after the ``attempts``-th try: base, 2x base, 4x base... up to the max."""
        return doubling_backoff(attempts, self.backoff_base, self.backoff_max)
