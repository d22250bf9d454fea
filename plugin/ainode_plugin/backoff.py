"""The doubling pause between retries shared by job re-sends and webhook deliveries."""

from __future__ import annotations

from datetime import timedelta

# 2**30 x any positive base already exceeds every sensible maximum; capping the exponent keeps
# a job or notification with a huge attempt count from building an unrepresentable timedelta.
_MAX_EXPONENT = 30


def doubling_backoff(attempts: int, base: timedelta, maximum: timedelta) -> timedelta:
    """Pause after the ``attempts``-th try: ``base``, 2x, 4x... never more than ``maximum``."""
    exponent = min(max(attempts - 1, 0), _MAX_EXPONENT)
    return min(base * (1 << exponent), maximum)
