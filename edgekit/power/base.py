"""Power meter interface, background sampler and measurement windows.

One module per sensor kind implements :class:`PowerMeter` (style of ml-energy/zeus). A meter
that has no sensor is *unavailable* and says why and how to fix it; it never invents a reading.

Usage::

    with meter.window() as w:
        run_something()
    w.energy_mj, w.duration_s, w.mean_power_mw, w.method  # "counter" | "integrated" | "unavailable"

Units are in every name: ``energy_mj`` (millijoule), ``power_mw`` (milliwatt), ``_s`` seconds.
mW x s = mJ.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from edgekit.figures import Figure, unavailable
from edgekit.power.periodic import PeriodicThread


@dataclass
class Reading:
    """One poll of a meter. ``t`` is ``time.monotonic()`` seconds."""

    t: float
    energy_mj: float | None = None  # cumulative, monotonic (counter meters)
    power_mw: float | None = None  # instantaneous total
    components_energy_mj: dict[str, float] = field(default_factory=dict)  # cumulative per domain
    components_power_mw: dict[str, float] = field(default_factory=dict)  # instantaneous per rail


class PowerMeter(ABC):
    """A power/energy sensor. Subclasses set the attributes in ``__init__``."""

    name: str = "meter"
    available: bool = False
    why_unavailable: str | None = None
    fix: str | None = None
    has_energy_counter: bool = False  # True: read_energy_mj() is a hardware counter

    @abstractmethod
    def read_energy_mj(self) -> float | None:
        """Cumulative energy since an arbitrary origin (wrap-around handled); None without a counter."""

    @abstractmethod
    def read_power_mw(self) -> float | None:
        """Instantaneous power (or mean over the last short interval); None when unavailable."""

    def read(self) -> Reading:
        """One poll for the sampler. Meters override it to read every domain/rail at once."""
        t = time.monotonic()
        e = self.read_energy_mj() if self.has_energy_counter else None
        p = self.read_power_mw()
        return Reading(t=t, energy_mj=e, power_mw=p)

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def describe(self) -> dict:
        return {
            "name": self.name,
            "available": self.available,
            "why_unavailable": self.why_unavailable,
            "fix": self.fix,
        }

    @contextmanager
    def window(self, interval_s: float = 0.05) -> Iterator[EnergyWindow]:
        """Measure energy over the ``with`` block (background sampling thread)."""
        w = EnergyWindow(meter=self.name)
        sampler = PowerSampler(self, interval_s=interval_s)
        sampler.start()
        try:
            yield w
        finally:
            sampler.stop()
            w.fill(sampler)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        state = "available" if self.available else f"unavailable: {self.why_unavailable}"
        return f"<{type(self).__name__} {self.name} ({state})>"


def trapezoid_mj(samples: list[tuple[float, float]]) -> float:
    """Integrate (t_s, power_mw) samples by the trapezoid rule; result in mJ."""
    total = 0.0
    for (t0, p0), (t1, p1) in zip(samples, samples[1:]):
        total += (t1 - t0) * (p0 + p1) / 2.0
    return total


class PowerSampler:
    """Polls a meter every ``interval_s`` in a daemon thread.

    A failing read (sensor vanished, permission lost, driver error) never kills the thread:
    it is recorded in :attr:`errors` and starts a new *segment*; integration never bridges a gap.
    """

    def __init__(self, meter: PowerMeter, interval_s: float = 0.05):
        self.meter = meter
        self.interval_s = float(interval_s)
        self.readings: list[tuple[int, Reading]] = []  # (segment, reading)
        self.errors: list[tuple[float, str]] = []  # (t, "ErrorType: message")
        self.t_start: float | None = None
        self.t_stop: float | None = None
        self._segment = 0
        self._ticker = PeriodicThread(self.poll, self.interval_s, f"edgekit-power-{meter.name}")
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._ticker.running

    def poll(self) -> None:
        if not self.meter.available:
            return
        try:
            r = self.meter.read()
        except Exception as e:  # a sensor failure must not crash the run
            with self._lock:
                self.errors.append((time.monotonic(), f"{type(e).__name__}: {e}"))
                self._segment += 1
            return
        with self._lock:
            self.readings.append((self._segment, r))

    def start(self) -> PowerSampler:
        self.t_start = time.monotonic()
        self._ticker.start()
        return self

    def stop(self) -> PowerSampler:
        self._ticker.stop()
        self.t_stop = time.monotonic()
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def samples(self) -> list[tuple[float, float]]:
        """(t, power_mw) samples. Counter meters without a power reading: mean power between polls."""
        out: list[tuple[float, float]] = []
        prev: tuple[int, Reading] | None = None
        for seg, r in self.readings:
            if r.power_mw is not None:
                out.append((r.t, r.power_mw))
            elif r.energy_mj is not None and prev is not None and prev[0] == seg and prev[1].energy_mj is not None:
                dt = r.t - prev[1].t
                if dt > 0:
                    out.append(((r.t + prev[1].t) / 2, (r.energy_mj - prev[1].energy_mj) / dt))
            prev = (seg, r)
        return out

    def segments(self) -> list[list[Reading]]:
        segs: dict[int, list[Reading]] = {}
        for seg, r in self.readings:
            segs.setdefault(seg, []).append(r)
        return list(segs.values())


@dataclass
class EnergyWindow:
    """Energy over a time window. Filled when the ``with meter.window()`` block exits."""

    meter: str
    energy_mj: float | None = None
    duration_s: float | None = None  # wall time of the window
    covered_s: float | None = None  # time the energy figure actually covers (< duration on gaps)
    mean_power_mw: float | None = None  # energy_mj / covered_s
    method: str = "unavailable"  # "counter" | "integrated" | "unavailable"
    components: dict[str, float] = field(default_factory=dict)  # energy per domain/rail, mJ
    samples: list[tuple[float, float]] = field(default_factory=list)  # (t, power_mw)
    complete: bool = False
    gap_reason: str | None = None
    errors: list[tuple[float, str]] = field(default_factory=list)

    def fill(self, s: PowerSampler) -> EnergyWindow:
        m = s.meter
        self.duration_s = (s.t_stop or 0.0) - (s.t_start or 0.0)
        self.samples = s.samples
        self.errors = list(s.errors)
        if not m.available:
            self.gap_reason = m.why_unavailable or "meter unavailable"
            return self
        segs = [seg for seg in s.segments() if seg]
        if m.has_energy_counter:
            good = [r for seg in segs for r in seg if r.energy_mj is not None]
            if len(good) >= 2:
                first, last = good[0], good[-1]
                self.method = "counter"
                self.energy_mj = last.energy_mj - first.energy_mj
                self.covered_s = last.t - first.t
                self.components = {
                    k: last.components_energy_mj[k] - v
                    for k, v in first.components_energy_mj.items()
                    if k in last.components_energy_mj
                }
        else:
            pairs_ok = False
            energy = covered = 0.0
            comps: dict[str, float] = {}
            for seg in segs:
                pts = [(r.t, r.power_mw) for r in seg if r.power_mw is not None]
                if len(pts) < 2:
                    continue
                pairs_ok = True
                energy += trapezoid_mj(pts)
                covered += pts[-1][0] - pts[0][0]
                for k in seg[0].components_power_mw:
                    rail = [(r.t, r.components_power_mw[k]) for r in seg if k in r.components_power_mw]
                    comps[k] = comps.get(k, 0.0) + trapezoid_mj(rail)
            if pairs_ok:
                self.method = "integrated"
                self.energy_mj, self.covered_s, self.components = energy, covered, comps
        if self.energy_mj is not None and self.covered_s:
            self.mean_power_mw = self.energy_mj / self.covered_s
        gaps = []
        if self.errors:
            t0 = s.t_start or 0.0
            first_err = self.errors[0]
            gaps.append(
                f"{len(self.errors)} failed sensor read(s), first at +{first_err[0] - t0:.2f} s: {first_err[1]}"
            )
        if self.energy_mj is None:
            gaps.append("fewer than two good readings in the window")
        elif self.errors and self.duration_s:
            gaps.append(f"energy covers {self.covered_s:.2f} s of {self.duration_s:.2f} s")
        self.complete = not gaps
        self.gap_reason = "; ".join(gaps) or None
        return self

    def energy_figure(self) -> Figure:
        return self._figure(self.energy_mj, "mJ", "no energy reading", f"{self.meter} ({self.method})")

    def power_figure(self) -> Figure:
        source = f"{self.meter} ({self.method}, mean over {self.covered_s or 0:.2f} s)"  # shown only with a reading
        return self._figure(self.mean_power_mw, "mW", "no power reading", source)

    def _figure(self, value: float | None, unit: str, missing: str, source: str) -> Figure:
        """One window reading as a figure: measured once (noted incomplete after a gap), or unavailable."""
        if value is None:
            return unavailable(unit, self.gap_reason or missing)
        return Figure(
            value=value,
            unit=unit,
            method="measured",
            reps=1,
            source=source,
            note=None if self.complete else f"incomplete: {self.gap_reason}",
        )
