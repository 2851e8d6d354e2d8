"""Run a command and record the GPU memory and energy it used (NVML), for one configuration.

    python benchmarks/vram_peak.py --out vram.json [--label NAME] -- edgekit run "..." --n 8 --gpu-layers -1

Polls NVML every --interval seconds while the command runs: device memory in use (the whole GPU,
every process; the figure is the highest reading minus the reading before the command started)
and, where NVML lists processes, the command's own memory (its pid or a child's). The GPU's
energy counter over the whole command (model load included) is recorded too. Without NVML the
command still runs and the file says why nothing was measured. Exits with the command's code.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from _common import log, parser, run_main, write_json


def _children(pid: int) -> set[int]:
    try:
        import psutil

        return {pid} | {c.pid for c in psutil.Process(pid).children(recursive=True)}
    except Exception:  # the process may be gone
        return {pid}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        if "-h" in argv or "--help" in argv:
            print(__doc__)
            return 0
        log("usage: vram_peak.py --out FILE [--label L] [--interval S] -- COMMAND...")
        return 2
    cut = argv.index("--")
    ap = parser(__doc__, json_flag=False, out=True, helps={"out": "write the record (JSON) to this file"})
    ap.add_argument("--label", default=None)
    ap.add_argument("--interval", type=float, default=0.02)
    a = ap.parse_args(argv[:cut])
    cmd = argv[cut + 1 :]
    from edgekit.power.nvml import NvmlMeter

    m = NvmlMeter(0)
    rec: dict = {"label": a.label, "command": cmd, "interval_s": a.interval, "available": m.handle is not None}
    if m.handle is None:
        rec["why_unavailable"] = m.why_unavailable
    nv = m._nvml
    base = m.memory_used_mb() if m.handle is not None else None
    e0 = m.read_energy_mj() if m.available and m.has_energy_counter else None
    peak = [base, None]  # device used MiB, this command's own MiB (NVML process list)
    stop = threading.Event()
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd)

    def poll():
        while not stop.is_set():
            used = m.memory_used_mb()
            if used is not None and (peak[0] is None or used > peak[0]):
                peak[0] = used
            if nv is not None:
                try:
                    pids = _children(proc.pid)
                    own = (
                        sum(
                            (p.usedGpuMemory or 0)
                            for p in nv.nvmlDeviceGetComputeRunningProcesses(m.handle)
                            if p.pid in pids
                        )
                        / 2**20
                    )
                    if own and (peak[1] is None or own > peak[1]):
                        peak[1] = own
                except Exception:  # not supported in every VM / container
                    pass
            stop.wait(a.interval)

    th = threading.Thread(target=poll, daemon=True)
    if m.handle is not None:
        th.start()
    rc = proc.wait()
    stop.set()
    if th.is_alive():
        th.join()
    wall = time.monotonic() - t0
    e1 = m.read_energy_mj() if e0 is not None else None
    rec.update(
        {
            "returncode": rc,
            "wall_s": round(wall, 3),
            "gpu_mem_used_before_mib": base,
            "gpu_mem_used_peak_mib": peak[0],
            "gpu_mem_peak_minus_before_mib": None if base is None or peak[0] is None else round(peak[0] - base, 1),
            "process_gpu_mem_peak_mib": peak[1],
            "gpu_energy_j": None if e1 is None else round((e1 - e0) / 1e3, 3),
            "gpu_mean_power_w": None if e1 is None or wall <= 0 else round((e1 - e0) / 1e3 / wall, 1),
            "method": "NVML nvmlDeviceGetMemoryInfo.used (whole GPU) polled; process list where NVML gives it; "
            "energy: NVML total energy counter over the whole command, model load included",
        }
    )
    m.close()
    write_json(a.out, rec)
    log(
        f"vram_peak[{a.label or cmd[0]}]: peak-before {rec['gpu_mem_peak_minus_before_mib']} MiB, process "
        f"{rec['process_gpu_mem_peak_mib']} MiB, energy {rec['gpu_energy_j']} J, {wall:.1f} s, rc {rc}"
    )
    return rc


if __name__ == "__main__":
    run_main(main)
