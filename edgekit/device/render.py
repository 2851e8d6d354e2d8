"""Rich rendering of a :class:`DeviceReport` (the CLI prints it; no CLI code here)."""

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
            t.add_row(f"GPU {g.index}", f"{g.name}, {_v(g.memory_total_mb, 'MB', '{:.0f}')}, "
                      f"limit {_v(None if g.power_limit_mw is None else g.power_limit_mw / 1000, 'W', '{:.0f}')}, driver {_v(g.driver)}")
    else:
        t.add_row("NVIDIA GPU", f"none ({r.nvml_note})" if r.nvml_note else "none")
    if r.is_jetson:
        t.add_row("Jetson", _v(r.jetson_model))
        t.add_row("L4T", _v(r.jetson_release))
        t.add_row("nvpmodel", f"{_v(r.nvpmodel_mode)}" + (f" ({r.nvpmodel_note})" if r.nvpmodel_note else ""))
    llama = f"{_v(r.llama_build)} build, llama-cpp-python {_v(r.llama_cpp_python)}, GPU offload {_v(r.gpu_offload)}"
    t.add_row("llama.cpp", llama + (f" ({r.llama_note})" if r.llama_note else ""))

    s = Table(title="power sensors", title_justify="left")
    for col in ("sensor", "status", "how / why", "fix"):
        s.add_column(col)
    for p in r.power_sensors:
        status = Text("available", style="green") if p.available else Text("unavailable", style="yellow")
        how = (p.method or ("energy counter" if p.energy_counter else "")) if p.available else (p.why_unavailable or "")
        s.add_row(p.name, status, how, "" if p.available else (p.fix or ""))
    parts = [t, s] + [Text(f"note: {n}", style="dim") for n in r.notes]
    return Group(*parts)
