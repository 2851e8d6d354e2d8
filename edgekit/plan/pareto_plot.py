"""The Pareto plot a plan writes (``edgekit plan --plot``): a PNG through matplotlib (Agg), no terminal rendering."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.errors import UsageError
from edgekit.plan.planner import PlanResult


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
            ax.errorbar(
                res.latency[fr],
                res.accuracy[fr],
                yerr=[res.accuracy[fr] - res.acc_lo[fr], res.acc_hi[fr] - res.accuracy[fr]],
                fmt="none",
                ecolor="tab:blue",
                alpha=0.5,
                capsize=2,
                lw=0.8,
                label="95 % interval (eval set)",
            )
    if res.chosen is not None:
        ax.scatter(
            [res.latency[res.chosen]],
            [res.accuracy[res.chosen]],
            s=120,
            marker="*",
            color="tab:orange",
            zorder=5,
            label=f"chosen: {res.label(res.chosen)}",
        )
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
