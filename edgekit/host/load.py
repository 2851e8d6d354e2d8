"""How many of our CPUs are other processes using right now -- and how many threads to run.

:class:`CpuShare` looks at ``/proc/stat`` (busy time of the CPUs in our affinity mask, steal
included) and this process's own CPU time: what is left is what others used, in cores, over the
window since the last look. :class:`ThreadTuner` turns that into llama.cpp's thread count,
re-checked at most every ``interval_s`` between decode steps: a core that a robot's perception
or a second edgekit process takes is given up (one thread fewer, no barrier waiting on a
descheduled thread), and taken back when it is free again. A fixed ``--threads`` is obeyed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class CpuShare:
    """Cores used by other processes on ``cpus`` since the previous :meth:`sample`."""

    def __init__(
        self,
        cpus: list[int],
        procfs_root: str | Path = "/proc",
        own_cpu_s: Callable[[], float] = lambda: sum(os.times()[:2]),
    ):
        self._stat = Path(procfs_root) / "stat"
        self._cpus = {f"cpu{c}" for c in cpus}
        self._own = own_cpu_s
        try:
            self._niced = os.getpriority(os.PRIO_PROCESS, 0) > 0
        except (OSError, AttributeError):
            self._niced = False
        self._last = self._read()

    def _read(self) -> tuple[float, float, float] | None:
        """(wall s, busy CPU-seconds on our CPUs, our own CPU-seconds), None when unreadable."""
        try:
            text = self._stat.read_text()
        except OSError:
            return None
        busy = 0
        for line in text.splitlines():
            name, _, rest = line.partition(" ")
            if name in self._cpus:
                f = [int(x) for x in rest.split()]
                # user nice system idle iowait irq softirq steal [guest guest_nice: inside user]. "nice" is the
                # time of processes at a lower priority (nice > 0): they yield to us, so it counts only when
                # we are niced ourselves (measured: beside two nice-19 busy loops, 2 spinning threads ran
                # at 45 tok/s, 1 thread at 32)
                busy += f[0] + (f[1] if self._niced else 0) + f[2] + f[5] + f[6] + (f[7] if len(f) > 7 else 0)
        return time.monotonic(), busy / _TICK, self._own()

    def age_s(self) -> float:
        """Seconds since the previous look (0 when there was none)."""
        return time.monotonic() - self._last[0] if self._last is not None else 0.0

    def sample(self, min_window_s: float = 0.05) -> float | None:
        now = self._read()
        if now is None or self._last is None:
            self._last = now
            return None
        dt = now[0] - self._last[0]
        if dt < min_window_s:
            return None
        others = ((now[1] - self._last[1]) - (now[2] - self._last[2])) / dt
        self._last = now
        return max(0.0, others)


class ThreadTuner:
    """llama.cpp's thread count from the usable CPUs minus what others use (hysteresis 0.25 core)."""

    def __init__(
        self,
        usable: int,
        set_threads: Callable[[int], None],
        *,
        fixed: int | None = None,
        interval_s: float = 0.2,
        share: CpuShare | None = None,
        cpus: list[int] | None = None,
    ):
        self.usable, self.fixed, self.interval_s = usable, fixed, interval_s
        self._set = set_threads
        self.threads = fixed or usable
        self.pinned: int | None = None  # set by pin(): profiling measures each thread count
        self.others: float | None = None
        self.changes = 0
        self._share = (
            None if fixed else (share or CpuShare(cpus if cpus is not None else list(range(os.cpu_count() or 1))))
        )
        self._next = time.monotonic() + interval_s

    def check(self, force: bool = False) -> int:
        """Re-decide if ``interval_s`` has passed (or now, with ``force``: the engine's first look,
        over its warm-up decode, so a loaded machine's first request does not start with a thread
        too many); returns the thread count in force."""
        if self._share is None or self.usable <= 1 or self.pinned is not None:
            return self.threads
        now = time.monotonic()
        if now < self._next and not force:
            return self.threads
        if force:  # a window of a few clock ticks (10 ms each) at least: a short warm-up waits out the rest
            time.sleep(max(0.0, 0.05 - self._share.age_s()))
        self._next = time.monotonic() + self.interval_s
        others = self._share.sample()
        if others is None:
            return self.threads
        self.others = others
        free = self.usable - others
        want = max(1, min(self.usable, int(free + 0.5)))
        if want > self.threads and free < self.threads + 0.75:  # climb only when a whole core is clearly free
            want = self.threads
        if want != self.threads:
            self.threads = want
            self.changes += 1
            self._set(want)
        return self.threads

    def pin(self, k: int | None) -> None:
        """Hold the thread count at ``k`` (None: back to the fixed or adaptive count)."""
        self.pinned = k
        want = k or self.fixed or self.usable
        if want != self.threads:
            self.threads = want
            self._set(want)

    def describe(self) -> str:
        if self.fixed:
            return f"{self.fixed} (fixed by --threads)"
        seen = f", others used {self.others:.2f} core(s) at the last look" if self.others is not None else ""
        return f"{self.threads} of {self.usable} usable (adaptive{seen})"
