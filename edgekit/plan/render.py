"""Rendering a plan: a rich table of the frontier and a Pareto plot (matplotlib, Agg)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from rich.table import Table

from edgekit.errors import UsageError
from edgekit.plan.planner import PlanResult


def _fmt(x: float, unit: str, digits: int = 3) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.{digits}g} {unit}"


def _short(method: str) -> str:
    """Compact label of a prediction method for the table (the plan file keeps the full string)."""
    kind = method.split(" (")[0]
    if "cross-model" in method:
        kind = "cross-model estimate"
    elif "block slices" in method:
        kind = "block-slice estimate"
    if "extended to n=" in method or "extrapolated" in method:
        kind += ", n extrapolated"
    return kind


def _acc(res: PlanResult, i: int) -> str:
    if res.acc_lo is None or res.acc_hi is None:
        return f"{res.accuracy[i]:.3f}"
    return f"{res.accuracy[i]:.3f} [{res.acc_lo[i]:.2f}, {res.acc_hi[i]:.2f}]"


def render_frontier(res: PlanResult) -> Table:
    p = f"p{res.percentile}"
    title = f"Accuracy vs latency frontier on {res.profile.device.name} ({res.profile.kind} profile), target {res.target_s:g} s at {p}"
    tab = Table(title=title)
    for col in ("", "model", "quant", "B", "n", "aggregation", "accuracy [95 % CI]", "acc. from", f"latency {p}",
                "p50 (interval)", "energy", "memory", "method"):
        tab.add_column(col, justify="right" if col in ("B", "n", "accuracy") else "left")
    for i in res.frontier:
        i = int(i)
        c = res.config(i)
        mark = "*" if res.chosen == i else ("ok" if res.feasible[i] else "")
        pred = res.pred
        tab.add_row(mark, c["model_id"], c["quant"] or "", str(c["budget"]), str(c["n"]), c["aggregation"],
                    _acc(res, i), "prior" if "accuracy: prior" in res.rests_on(i) else "table", _fmt(res.latency[i], "s"),
                    f"{pred['total_s'][i]:.3g} ({pred['lo_s'][i]:.3g}-{pred['hi_s'][i]:.3g})",
                    _fmt(pred["energy_j"][i], "J"), _fmt(pred["memory_bytes"][i] / 1e9, "GB"), _short(res.method(i)))
    return tab


def plot_pareto(res: PlanResult, path: str | Path) -> Path:
    """Write a PNG: all candidates (faint), the frontier, the chosen point and the target line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise UsageError("plotting needs matplotlib", fix="pip install 'edgekit[plot]'") from e
    p = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ok = res.caps_ok
    ax.scatter(res.latency[ok], res.accuracy[ok], s=6, alpha=0.15, color="tab:gray", label="candidates")
    if (~ok).any():
        ax.scatter(res.latency[~ok], res.accuracy[~ok], s=6, alpha=0.1, color="tab:red", marker="x", label="over caps")
    fr = res.frontier
    if fr.size:
        ax.step(res.latency[fr], res.accuracy[fr], where="post", color="tab:blue", lw=1.5)
        ax.scatter(res.latency[fr], res.accuracy[fr], s=18, color="tab:blue", label="Pareto frontier")
        if res.acc_lo is not None and res.acc_hi is not None:
            ax.errorbar(res.latency[fr], res.accuracy[fr], yerr=[res.accuracy[fr] - res.acc_lo[fr], res.acc_hi[fr] - res.accuracy[fr]],
                        fmt="none", ecolor="tab:blue", alpha=0.5, capsize=2, lw=0.8, label="95 % interval (eval set)")
    if res.chosen is not None:
        ax.scatter([res.latency[res.chosen]], [res.accuracy[res.chosen]], s=120, marker="*", color="tab:orange",
                   zorder=5, label=f"chosen: {res.label(res.chosen)}")
    ax.axvline(res.target_s, color="tab:green", ls="--", lw=1, label=f"target {res.target_s:g} s")
    lat = res.latency[np.isfinite(res.latency) & (res.latency > 0)]
    if lat.size and lat.max() / lat.min() > 30:
        ax.set_xscale("log")
    ax.set_xlabel(f"predicted latency p{res.percentile} (s)")
    ax.set_ylabel("accuracy")
    kind = "published data" if res.profile.kind == "published" else "measured profile"
    ax.set_title(f"{res.profile.device.name} ({kind})", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, format="png")
    plt.close(fig)
    return p
