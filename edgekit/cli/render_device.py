"""`edgekit device` in the terminal: a :class:`DeviceReport` as rich tables."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from edgekit.device.detect import DeviceReport


def _v(x, unit: str = "", fmt: str = "{}") -> str:
    return "—" if x is None else (fmt.format(x) + (f" {unit}" if unit else ""))


def render_device(report: DeviceReport) -> Group:
    r = report
    t = Table(title=r.name, show_header=False, title_justify="left")
    t.add_column("field", style="bold")
    t.add_column("value")
    t.add_row("host", _v(r.hostname))
    t.add_row("CPU", _v(r.cpu_model))
    t.add_row("cores", f"{_v(r.cpu_cores_physical)} physical / {_v(r.cpu_cores_logical)} logical")
    t.add_row("CPU frequency", f"{_v(r.cpu_freq_mhz, 'MHz', '{:.0f}')} (max {_v(r.cpu_freq_max_mhz, 'MHz', '{:.0f}')})")
    t.add_row("RAM", _v(r.ram_total_mb, "MB", "{:.0f}"))
    if r.gpus:
        for g in r.gpus:
            t.add_row(
                f"GPU {g.index}",
                f"{g.name}, {_v(g.memory_total_mb, 'MB', '{:.0f}')}, "
                f"limit {_v(None if g.power_limit_mw is None else g.power_limit_mw / 1000, 'W', '{:.0f}')}, "
                f"driver {_v(g.driver)}",
            )
    else:
        t.add_row("NVIDIA GPU", f"none ({r.nvml_note})" if r.nvml_note else "none")
    if r.is_jetson:
        t.add_row("Jetson", _v(r.jetson_model))
        t.add_row("L4T", _v(r.jetson_release))
        t.add_row("nvpmodel", f"{_v(r.nvpmodel_mode)}" + (f" ({r.nvpmodel_note})" if r.nvpmodel_note else ""))
    llama = f"{_v(r.llama_build)} build, llama-cpp-python {_v(r.llama_cpp_python)}, GPU offload {_v(r.gpu_offload)}"
    t.add_row("llama.cpp", llama + (f" ({r.llama_note})" if r.llama_note else ""))

    c = _cpu_support(r)

    s = Table(title="power sensors", title_justify="left")
    for col in ("sensor", "status", "how / why", "fix"):
        s.add_column(col)
    for p in r.power_sensors:
        status = Text("available", style="green") if p.available else Text("unavailable", style="yellow")
        how = (p.method or ("energy counter" if p.energy_counter else "")) if p.available else (p.why_unavailable or "")
        s.add_row(p.name, status, how, "" if p.available else (p.fix or ""))
    parts = [t, c, s] + [Text(f"note: {n}", style="dim") for n in r.notes]
    return Group(*parts)


def _cpu_support(r: DeviceReport) -> Table:
    t = Table(title="CPU support (llama.cpp kernels and threads)", show_header=False, title_justify="left")
    t.add_column("field", style="bold")
    t.add_column("value")
    have = [k for k, v in r.cpu_isa.items() if v]
    t.add_row("instruction sets", ", ".join(have) or "—")
    t.add_row("llama.cpp built with", ", ".join(r.llama_features) or "—")
    u = r.usable_cpus
    if u:
        quota = f", cgroup quota {u['quota_cpus']:g} CPUs" if u.get("quota_cpus") else ""
        t.add_row(
            "usable CPUs",
            f"{u['usable']} (affinity {len(u['affinity'])} of {u['logical']}{quota}; limited by {u['why']})",
        )
    if r.threading:
        t.add_row(
            "threading",
            f"{r.threading.get('policy')}: {r.threading.get('wait')}"
            + (f" — {r.threading['why']}" if r.threading.get("why") else ""),
        )
    t.add_row("kernel mode", f"{_v(r.kernel_mode)} (EDGEKIT_EXTRA_BUFFERS=auto|on|off)")
    for rec in r.kernel_probes[:6]:
        key, vs = rec["key"], rec["verdicts"]
        what = "; ".join(
            f"{n}: {v['how']}" + (f", {v['decode_tok_s']:.1f} tok/s" if v.get("decode_tok_s") else "")
            for n, v in vs.items()
        )
        types = ",".join(str(x) for x in key.get("tensor_types", []))
        t.add_row(
            "probe", f"tensor types [{types}]{' GPU' if key.get('gpu') else ''}: {what} (measured in a child process)"
        )
    if not r.kernel_probes:
        t.add_row("probe", "no verdicts yet (the first model load probes in a child process)")
    if r.edgekit_peers:
        t.add_row(
            "other edgekit processes", ", ".join(f"pid {p.get('pid')} ({p.get('what', '?')})" for p in r.edgekit_peers)
        )
    return t
