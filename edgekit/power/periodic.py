"""One background thread that calls a function every ``interval_s``: the power sampler
(:class:`edgekit.power.base.PowerSampler`) and the thermal sampler
(:class:`edgekit.device.thermal.ThermalSampler`) both run on it.

Kept on the power floor (below ``edgekit.device``) so both can use it; standard library only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class PeriodicThread:
    """Calls ``tick()`` once in :meth:`start`, then every ``interval_s`` seconds in a daemon thread,
    and once more in :meth:`stop` after joining the thread: a sampler's readings span the whole
    interval between the two calls.

    ``tick`` handles the failures it expects (a sampler records a failed sensor read and goes on).
    Anything it lets escape ends the thread and is raised again by :meth:`stop`, in the caller's
    thread: never lost in the background."""

    def __init__(self, tick: Callable[[], object], interval_s: float, name: str):
        self.tick = tick
        self.interval_s = float(interval_s)
        self.name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self.name} is already running")
        self.tick()
        self._stop.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Join the thread (if started) and tick once more; first raise what ``tick`` raised in the thread."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        error, self._error = self._error, None
        if error is not None:
            raise error
        self.tick()

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval_s):
                self.tick()
        except BaseException as e:  # raised again by stop(), in the caller's thread
            self._error = e
