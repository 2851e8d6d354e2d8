"""The meter used when there is no sensor: every reading is None, with the reason and the fix."""

from __future__ import annotations

from edgekit.power.base import PowerMeter


class NullMeter(PowerMeter):
    name = "null"

    def __init__(self, reason: str = "no power sensor found", fix: str | None = None):
        self.available = False
        self.why_unavailable = reason
        self.fix = fix

    def read_energy_mj(self) -> float | None:
        return None

    def read_power_mw(self) -> float | None:
        return None
