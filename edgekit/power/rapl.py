"""Intel/AMD RAPL energy counters through the Linux powercap interface.

Layout: ``/sys/class/powercap/intel-rapl:N`` are top-level zones (``name`` = ``package-N``, or on
some servers/laptops ``dram`` / ``psys``); ``intel-rapl:N:M`` are subzones (``core``, ``uncore``,
``dram``). Each zone has ``energy_uj`` (wraps at ``max_energy_range_uj``).

Total energy = the sum of the ``package-N`` zones. This is a choice, stated here and in
:attr:`RaplMeter.total_method`: the RAPL package domain covers cores + uncore but *not* DRAM,
and ``psys`` (platform) already contains the packages. So DRAM and psys are reported as
components only, never added in (``include_dram=True`` adds the DRAM zones to the total).
Subzones are reported as components named ``package-0/core``, ``package-0/dram``...

Wrap-around: each poll adds the difference to a per-zone accumulator; a reading smaller than
the previous one adds ``max_energy_range_uj``. This is exact as long as the counter is polled
at least once per wrap period (tens of minutes at idle, about a minute at full power on large
servers); the sampler's 50 ms default is far inside that.

``energy_uj`` is readable by root only since CVE-2020-8694 (Linux 5.10 and backports).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edgekit.power.base import PowerMeter, Reading

NOPERM_WHY = "RAPL energy_uj is readable by root only (CVE-2020-8694)"
NOPERM_FIX = "run as root or `sudo chmod o+r /sys/class/powercap/intel-rapl:*/energy_uj`"
NODIR_WHY = "no RAPL powercap interface (not Intel/AMD x86 or module not loaded)"
NODIR_FIX = "on x86 Linux: `sudo modprobe intel_rapl_msr` (AMD Zen: kernel >= 5.8)"

_ZONE = re.compile(r"^intel-rapl:(\d+)(?::(\d+))?$")


def _read_text(path: Path) -> str:
    with open(path) as f:
        return f.read()


class _Zone:
    def __init__(self, path: Path, label: str, kind: str, max_range_uj: int):
        self.path = path
        self.label = label  # "package-0", "package-0/dram", "dram"
        self.kind = kind  # "package" | "dram" | "psys" | "sub"
        self.max_range_uj = max_range_uj
        self.last_raw_uj: int | None = None
        self.acc_uj = 0  # cumulative since the first read


class RaplMeter(PowerMeter):
    """RAPL meter. ``reader`` (path -> text) is injectable for tests."""

    name = "rapl"
    has_energy_counter = True

    def __init__(
        self, sysfs_root: str | Path = "/", include_dram: bool = False, reader: Callable[[Path], str] | None = None
    ):
        self.root = Path(sysfs_root)
        self.include_dram = include_dram
        self._read = reader or _read_text
        self._lock = threading.Lock()
        self.zones: list[_Zone] = []
        self.total_method = ""
        self._last: tuple[float, float] | None = None  # (t, energy_mj) of the last poll
        self.available, self.why_unavailable, self.fix = False, None, None
        if not self._readable(self._discover, "RAPL powercap files unreadable", NODIR_FIX):
            return
        if not self.zones:
            self.why_unavailable, self.fix = NODIR_WHY, NODIR_FIX
            return
        if not any(z.kind == "package" for z in self.zones):
            self.why_unavailable, self.fix = "RAPL has no package-N zone", NODIR_FIX
            return
        # the first read sets the counter origin; PermissionError surfaces here
        if not self._readable(self.read, "RAPL energy_uj unreadable", NOPERM_FIX):
            return
        self.available = True
        summed = [z.label for z in self.zones if self._in_total(z)]
        self.total_method = "sum of RAPL zones: " + " + ".join(summed)
        if not self.include_dram and any(z.kind in ("dram",) or z.label.endswith("/dram") for z in self.zones):
            self.total_method += " (DRAM reported as a component, not in the total)"

    def _readable(self, step: Callable[[], object], unreadable: str, fix: str) -> bool:
        """Run ``step``; on a read failure mark the meter unavailable (why and fix) and return False."""
        try:
            step()
        except PermissionError:
            self.why_unavailable, self.fix = NOPERM_WHY, NOPERM_FIX
            return False
        except (OSError, ValueError) as e:
            self.why_unavailable, self.fix = f"{unreadable}: {e}", fix
            return False
        return True

    def _discover(self) -> None:
        base = self.root / "sys/class/powercap"
        if not base.is_dir():
            return
        top: dict[int, str] = {}
        found = []
        for d in base.iterdir():
            m = _ZONE.match(d.name)
            if not m or not (d / "energy_uj").exists():
                continue
            name = self._read(d / "name").strip()
            found.append((int(m.group(1)), None if m.group(2) is None else int(m.group(2)), d, name))
        for n, sub, _d, name in found:
            if sub is None:
                top[n] = name
        for n, sub, d, name in sorted(found, key=lambda x: (x[0], -1 if x[1] is None else x[1])):
            rng = int(self._read(d / "max_energy_range_uj").strip())
            if sub is None:
                kind = "package" if name.startswith("package") else name  # "dram", "psys"
                self.zones.append(_Zone(d, name, kind, rng))
            else:
                self.zones.append(_Zone(d, f"{top.get(n, f'zone-{n}')}/{name}", "sub", rng))

    def _in_total(self, z: _Zone) -> bool:
        if z.kind == "package":
            return True
        if self.include_dram:
            return z.kind == "dram" or z.label.endswith("/dram")
        return False

    def read(self) -> Reading:
        with self._lock:
            t = time.monotonic()
            raws = [int(self._read(z.path / "energy_uj").strip()) for z in self.zones]
            for z, raw in zip(self.zones, raws):
                if z.last_raw_uj is not None:
                    delta = raw - z.last_raw_uj
                    if delta < 0:  # wrapped
                        delta += z.max_range_uj
                    z.acc_uj += delta
                z.last_raw_uj = raw
            comps = {z.label: z.acc_uj / 1000.0 for z in self.zones}
            total = sum(z.acc_uj for z in self.zones if self._in_total(z)) / 1000.0
            self._last = (t, total)
        return Reading(t=t, energy_mj=total, components_energy_mj=comps)

    def read_energy_mj(self) -> float | None:
        if not self.available:
            return None
        return self.read().energy_mj

    def read_components_energy_mj(self) -> dict[str, float]:
        return self.read().components_energy_mj if self.available else {}

    def read_power_mw(self) -> float | None:
        """Mean power since the previous poll if it was 10 ms - 5 s ago, else over a fresh 50 ms."""
        if not self.available:
            return None
        prev = self._last
        r = self.read()
        if prev is None or not (0.01 <= r.t - prev[0] <= 5.0):
            time.sleep(0.05)
            prev = (r.t, r.energy_mj)
            r = self.read()
        return (r.energy_mj - prev[1]) / (r.t - prev[0])
