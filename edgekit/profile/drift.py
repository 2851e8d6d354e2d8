"""What changed on the device while a profile sweep ran: drift of the reference decode step between
its first and last runs, the CPU clock, temperature and GPU throttle reasons, and the peak GPU memory
(the last three from :class:`edgekit.device.thermal.ThermalSampler`'s summary)."""

from __future__ import annotations

from edgekit.figures import Figure, measured, unavailable
from edgekit.schemas.profile import DriftReport


def drift_report(first: float | None, last: float | None, thermal) -> DriftReport:
    """``first``/``last``: median step times of the reference decode; ``thermal``: the sampler or None."""
    rep = DriftReport()
    if first and last:
        rep.decode_drift_pct = 100.0 * (last - first) / first
        if abs(rep.decode_drift_pct) > 5:
            rep.reasons.append(
                f"decode step time drifted {rep.decode_drift_pct:+.1f} % between the first and last reference runs "
                "(median of 3 each)"
            )
    if thermal is not None:
        s = thermal.summary()
        rep.cpu_freq_start_mhz = s.get("cpu_freq_start_mhz")
        rep.cpu_freq_min_mhz = s.get("cpu_freq_min_mhz")
        rep.max_temp_c = s.get("max_temp_c")
        rep.throttle_reasons = list(s.get("throttle_reasons") or [])
        if rep.cpu_freq_start_mhz and rep.cpu_freq_min_mhz and rep.cpu_freq_min_mhz < 0.9 * rep.cpu_freq_start_mhz:
            rep.reasons.append(f"CPU clock dropped from {rep.cpu_freq_start_mhz:.0f} to {rep.cpu_freq_min_mhz:.0f} MHz")
        if rep.throttle_reasons:
            rep.reasons.append("GPU throttle reasons: " + ", ".join(rep.throttle_reasons))
    rep.flagged = bool(rep.reasons)
    return rep


def vram_figure(summary: dict, build: str | None, interval_s: float) -> Figure:
    """Peak GPU memory of the sweep from the thermal sampler's NVML readings: the highest reading
    minus the first (taken before the first load), in MB (1e6 bytes). A CPU build uses none."""
    if build in (None, "cpu"):
        return unavailable("MB", "CPU build: no GPU memory used")
    start, peak = summary.get("gpu_mem_used_start_mb"), summary.get("gpu_mem_used_peak_mb")
    if start is None or peak is None:
        return unavailable("MB", f"{build} build, but no NVML memory reading (not an NVIDIA GPU, or NVML unavailable)")
    return measured(
        [max(peak - start, 0.0) * 2**20 / 1e6],
        "MB",
        source=f"NVML device memory used, highest reading of the sweep (every {interval_s:g} s) minus the "
        "reading before the first load: the whole GPU, this process's CUDA context included",
    )
