"""Energy per token of a profile sweep: each timed run's energy window minus the idle baseline
(mW x s = mJ), per prompt token (prefill) or generated token (n=1 decode). Windows with sensor gaps
are left out and counted; work shorter than the meter resolves is reported as not resolvable."""

from __future__ import annotations

from edgekit.figures import Figure, measured, unavailable
from edgekit.schemas.profile import EnergyInfo


class EnergyWindows:
    def __init__(self, meter):
        self.meter = meter
        self.idle_mw: float | None = None  # the idle baseline, once measured
        self.rows: dict[str, list] = {"prefill": [], "decode": []}  # (energy above idle mJ, tokens, window)
        self.skipped = 0  # windows left out for sensor gaps

    def add(self, phase: str, w, tokens: int) -> None:
        if w.energy_mj is None or self.idle_mw is None or not w.covered_s or not w.complete:
            self.skipped += 1
            return
        above = w.energy_mj - self.idle_mw * w.covered_s  # mW x s = mJ
        self.rows[phase].append((above, tokens, w))

    def info(self, idle_fig: Figure) -> EnergyInfo:
        name = self.meter.name
        if idle_fig.value is None:
            why = idle_fig.note or getattr(self.meter, "why_unavailable", None) or "no power sensor"
            return EnergyInfo(
                meter=name,
                idle_power_mw=idle_fig,
                prefill_energy_per_token_mj=unavailable("mJ/token", why),
                decode_energy_per_token_mj=unavailable("mJ/token", why),
                note=f"no energy figures: {why}",
            )

        def per_token(rows, label):
            vals = [e / t for e, t, _ in rows if t > 0]
            skipped = self.skipped
            note = f"{skipped} incomplete window(s) left out (sensor gaps)" if skipped else None
            low = [v for v in vals if v <= 0]
            if low:  # at or below idle: the work was shorter than the meter resolves (a GPU prefill of a few ms)
                ms = sorted(1000 * w.covered_s for _, _, w in rows)[len(rows) // 2]
                return unavailable(
                    "mJ/token",
                    f"not resolvable: {len(low)} of {len(vals)} {label} read at or below the "
                    f"idle baseline (median window {ms:.0f} ms; {name}'s counter is coarser than the work)",
                )
            return (
                measured(vals, "mJ/token", source=f"{name}, {label}, idle {self.idle_mw:.0f} mW subtracted", note=note)
                if vals
                else unavailable("mJ/token", "no complete energy window" + (f" ({note})" if note else ""))
            )

        return EnergyInfo(
            meter=name,
            idle_power_mw=idle_fig,
            prefill_energy_per_token_mj=per_token(self.rows["prefill"], "prefill windows"),
            decode_energy_per_token_mj=per_token(self.rows["decode"], "n=1 decode windows (incl. its short prefill)"),
            note="energy above the idle baseline",
        )
