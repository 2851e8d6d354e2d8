"""Is the profile this device, and how much of it is free? (``edgekit plan``'s checks.)

* :func:`device_notes` -- one line each when the profile was measured on another CPU (model or
  instruction sets) or with another llama.cpp kernel configuration than this machine would use:
  its latencies may not hold here.
* :func:`cores_scale` -- ``--cores-available K``: the (prefill, decode) slowdown when only K of
  the profile's usable cores are free, from the profile's *measured* thread scaling of the
  reference decode (decode) and the compute-bound share of cores (prefill, estimated).
"""

from __future__ import annotations

import statistics

from edgekit.device.sysinfo import cpu_model
from edgekit.errors import UsageError
from edgekit.host import kernels
from edgekit.host.cpu import isa_flags
from edgekit.schemas.profile import DeviceProfile


def device_notes(profile: DeviceProfile, procfs_root: str = "/proc") -> list[str]:
    d, out = profile.device, []
    if d.jetson_model or d.gpus:  # a reference or GPU profile: its CPU is not what the latencies rest on
        return out
    here = cpu_model(procfs_root)
    if d.cpu_model and here and d.cpu_model != here:
        out.append(
            f"warning: this profile was measured on another CPU ({d.cpu_model}); this machine is {here}: "
            "its latencies may not hold here (fix: edgekit profile --quick on this machine)"
        )
    elif d.cpu_isa is not None:
        mine = sorted(k for k, v in isa_flags(procfs_root).items() if v)
        if mine and sorted(d.cpu_isa) != mine:
            out.append(
                f"warning: this profile's CPU had {', '.join(sorted(d.cpu_isa)) or 'no listed'} instruction sets, "
                f"this one has {', '.join(mine)}: llama.cpp may use other kernels here (fix: profile this machine)"
            )
    try:
        forced = kernels.MODES[kernels.requested_mode()]
    except UsageError:
        forced = None
    for m in profile.complete_models():
        if forced and m.kernels and m.kernels != forced:
            out.append(
                f"warning: {m.model.id} was profiled with the '{m.kernels}' kernel configuration; "
                f"EDGEKIT_EXTRA_BUFFERS forces '{forced}' here (fix: profile it again, or unset EDGEKIT_EXTRA_BUFFERS)"
            )
    return out


def cores_scale(profile: DeviceProfile, cores: int | None) -> tuple[tuple[float, float] | None, str | None]:
    """((prefill, decode) slowdown factors, note) for ``--cores-available``; (None, None) without it."""
    if cores is None:
        return None, None
    if not isinstance(cores, int) or cores < 1:
        raise UsageError(f"--cores-available must be an integer >= 1, got {cores!r}", fix="pass --cores-available 1")
    ratios, full = [], None
    for m in profile.complete_models():
        ts = {int(k): v.value for k, v in (m.thread_scaling or {}).items() if v.value}
        if not ts:
            continue
        full = max(ts)
        if cores > full:
            raise UsageError(
                f"--cores-available {cores} is more than the {full} cores the profile used",
                fix=f"pass --cores-available 1..{full}",
            )
        if cores in ts:
            ratios.append(ts[cores] / ts[full])
    if not ratios or full is None:
        raise UsageError(
            "--cores-available needs a profile with measured thread scaling (made by this version of edgekit profile)",
            fix="profile again: edgekit profile --quick (or measure under load: --background N)",
        )
    decode = statistics.median(ratios)
    prefill = full / cores
    return (prefill, decode), (
        f"--cores-available {cores} of {full}: decode x{decode:.2f} (measured thread scaling of the "
        f"profile's reference decode, median over {len(ratios)} model(s)), prefill x{prefill:.2f} "
        "(estimated: compute-bound, proportional to cores)"
    )
