"""What a remote engine needs to fail well: a circuit breaker and a moving latency estimate.

The circuit breaker opens after ``failures_to_open`` consecutive failures; while open, calls fail
at once (no waiting on a dead endpoint inside a robot's deadline); after ``cooldown_s`` one probe
is let through (half-open): success closes the circuit, failure opens it again.

The latency tracker keeps the last ``window`` successful call latencies and reports p50 / p95,
which the runtime uses to decide whether the cloud can still answer before a deadline.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable


class CircuitBreaker:
    def __init__(
        self, failures_to_open: int = 3, cooldown_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ):
        self.failures_to_open = failures_to_open
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self.failures = 0
        self.opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        with self._lock:
            return self._state()

    def _state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self._clock() - self.opened_at >= self.cooldown_s else "open"

    def allow(self) -> bool:
        """May a call go out now? In half-open state only one probe at a time."""
        with self._lock:
            st = self._state()
            if st == "closed":
                return True
            if st == "half-open" and not self._probing:
                self._probing = True
                return True
            return False

    def retry_in_s(self) -> float:
        with self._lock:
            if self.opened_at is None:
                return 0.0
            return max(0.0, self.cooldown_s - (self._clock() - self.opened_at))

    def record_success(self) -> None:
        with self._lock:
            self.failures = 0
            self.opened_at = None
            self._probing = False

    def record_failure(self) -> None:
        with self._lock:
            self.failures += 1
            if self._probing or self.failures >= self.failures_to_open:
                self.opened_at = self._clock()
            self._probing = False


class LatencyTracker:
    def __init__(self, window: int = 50, prior_s: float | None = None):
        self._xs: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()
        self.prior_s = prior_s  # e.g. the plan's measured cloud latency, until calls are seen

    def add(self, seconds: float) -> None:
        with self._lock:
            self._xs.append(float(seconds))

    @property
    def count(self) -> int:
        return len(self._xs)

    def quantile(self, q: float) -> float | None:
        with self._lock:
            xs = sorted(self._xs)
        if not xs:
            return self.prior_s
        pos = q * (len(xs) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    def p50(self) -> float | None:
        return self.quantile(0.5)

    def p95(self) -> float | None:
        return self.quantile(0.95)

    def describe(self) -> str:
        if not self._xs:
            return (
                f"prior {self.prior_s:.2f} s (no calls yet)" if self.prior_s is not None else "unknown (no calls yet)"
            )
        return f"p50 {self.p50():.2f} s, p95 {self.p95():.2f} s over the last {len(self._xs)} calls (measured)"
