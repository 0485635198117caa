"""Exponential back-off with jitter: how every loop waits for the database to come back."""

from __future__ import annotations

import random
from collections.abc import Iterator


def backoff_delays(*, first: float = 0.05, maximum: float = 5.0) -> Iterator[float]:
    """Endless delays in seconds: `first`, then doubling up to `maximum`, each scaled by a
    random factor from 0.5 to 1.5 so that many waiters do not retry in step."""
    delay = first
    while True:
        yield delay * random.uniform(0.5, 1.5)
        delay = min(delay * 2, maximum)
