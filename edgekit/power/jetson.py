"""NVIDIA Jetson on-board INA3221 power monitors (rails), both sysfs layouts.

* JetPack 5/6 (hwmon): ``/sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*/`` with ``in{N}_label``
  (rail name), ``in{N}_input`` (bus voltage, mV) and ``curr{N}_input`` (current, mA), N = 1..3.
  Power mW = mV x mA / 1000.
* JetPack 4 (iio): ``/sys/bus/i2c/drivers/ina3221x/*/iio:device*/`` with ``rail_name_{N}``,
  ``in_power{N}_input`` (mW), ``in_voltage{N}_input`` (mV), ``in_current{N}_input`` (mA), N = 0..2.

Total power: the board input rail (``VDD_IN``, or ``POM_5V_IN`` on Nano/TX) when present, else
the sum of all rails, which misses what no INA3221 channel sees: :attr:`JetsonMeter.total_method`
says which. There is no energy counter: energy is integrated from polled power.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from edgekit.power.base import PowerMeter, Reading

INPUT_RAILS = ("VDD_IN", "POM_5V_IN")  # board input, in order of preference
NORAILS_WHY = "no Jetson INA3221 power monitor (not a Jetson, or the ina3221 driver is not bound)"
NORAILS_FIX = "on a Jetson: check `ls /sys/bus/i2c/drivers/ina3221*/`; elsewhere use another meter"


def _read(path: Path) -> str:
    with open(path) as f:
        return f.read().strip()


def is_jetson(sysfs_root: str | Path = "/") -> bool:
    root = Path(sysfs_root)
    if (root / "etc/nv_tegra_release").exists():
        return True
    try:
        return "jetson" in (root / "proc/device-tree/model").read_bytes().decode(errors="replace").lower()
    except OSError:
        return False


@dataclass
class Rail:
    name: str
    layout: str  # "hwmon" | "iio"
    voltage_path: Path  # mV
    current_path: Path  # mA
    power_path: Path | None = None  # mW (iio only)

    def power_mw(self) -> float:
        if self.power_path is not None:
            return float(_read(self.power_path))
        return float(_read(self.voltage_path)) * float(_read(self.current_path)) / 1000.0

    def voltage_mv(self) -> float:
        return float(_read(self.voltage_path))

    def current_ma(self) -> float:
        return float(_read(self.current_path))


def find_rails(sysfs_root: str | Path = "/") -> list[Rail]:
    root = Path(sysfs_root) / "sys/bus/i2c/drivers"
    rails: list[Rail] = []
    for hw in sorted(root.glob("ina3221/*/hwmon/hwmon*")):
        for n in (1, 2, 3):
            label, volt, curr = hw / f"in{n}_label", hw / f"in{n}_input", hw / f"curr{n}_input"
            if not (label.exists() and volt.exists() and curr.exists()):
                continue
            name = _read(label)
            if name and name.upper() != "NC":
                rails.append(Rail(name, "hwmon", volt, curr))
    for dev in sorted(root.glob("ina3221x/*/iio:device*")):
        for n in (0, 1, 2):
            label = dev / f"rail_name_{n}"
            if not label.exists():
                continue
            name = _read(label)
            pw = dev / f"in_power{n}_input"
            volt, curr = dev / f"in_voltage{n}_input", dev / f"in_current{n}_input"
            if name and name.upper() != "NC" and (pw.exists() or (volt.exists() and curr.exists())):
                rails.append(Rail(name, "iio", volt, curr, pw if pw.exists() else None))
    seen: dict[str, int] = {}
    for r in rails:  # two chips with the same label: keep both, distinct names
        seen[r.name] = seen.get(r.name, 0) + 1
        if seen[r.name] > 1:
            r.name = f"{r.name}#{seen[r.name]}"
    return rails


class JetsonMeter(PowerMeter):
    name = "jetson-ina3221"
    has_energy_counter = False

    def __init__(self, sysfs_root: str | Path = "/"):
        self.root = Path(sysfs_root)
        self.available, self.why_unavailable, self.fix = False, None, None
        self.total_method = ""
        self.input_rail: str | None = None
        try:
            self.rails = find_rails(self.root)
        except PermissionError:
            self.rails = []
        if not self.rails:
            self.why_unavailable, self.fix = NORAILS_WHY, NORAILS_FIX
            return
        names = [r.name for r in self.rails]
        self.input_rail = next((n for n in INPUT_RAILS if n in names), None)
        self.total_method = f"{self.input_rail} rail" if self.input_rail else "sum of rails: " + " + ".join(names)
        try:
            self.read()
        except PermissionError:
            self.why_unavailable, self.fix = "INA3221 rail files are not readable by this user", "run as root"
            return
        except (OSError, ValueError) as e:
            self.why_unavailable, self.fix = f"INA3221 rail read failed: {e}", NORAILS_FIX
            return
        self.available = True

    def read(self) -> Reading:
        t = time.monotonic()
        comps = {r.name: r.power_mw() for r in self.rails}
        total = comps[self.input_rail] if self.input_rail else sum(comps.values())
        return Reading(t=t, power_mw=total, components_power_mw=comps)

    def read_power_mw(self) -> float | None:
        return self.read().power_mw if self.available else None

    def read_components_power_mw(self) -> dict[str, float]:
        return self.read().components_power_mw if self.available else {}

    def read_energy_mj(self) -> float | None:
        return None  # no counter: use window(), which integrates polled power
