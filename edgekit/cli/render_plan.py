"""A plan in the terminal: the frontier as a rich table, the accuracy and why-lines (`edgekit plan` prints them).

The Pareto plot file (``plan --plot``) is written by :mod:`edgekit.plan.pareto_plot`."""

from __future__ import annotations

import math

import numpy as np
from rich import box
from rich.table import Table

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


WIDE = 150  # below this terminal width the frontier is printed in the narrow layout


def _model(mid: str) -> str:
    return mid[: -len("-instruct")] if mid.endswith("-instruct") else mid


def short_label(res: PlanResult, i: int) -> str:
    """A configuration in a few words: model (quant when the plan has several), budget, n, aggregation."""
    c = res.config(i)
    quants = {res.tables[int(t)].quant for t in np.unique(res.table[res.frontier])} if res.frontier.size else set()
    q = f" {c['quant']}" if len(quants) > 1 and c["quant"] else ""
    agg = {"majority": "maj", "greedy": "greedy", "pass@k": "pass@k", "first_verified": "1st-verified"}[
        c["aggregation"]
    ]
    stop = f" stop:{c['stop_rule']}" if c.get("stop_rule") else ""
    return f"{_model(c['model_id'])}{q} B={c['budget']} n={c['n']} {agg}{stop}"


def render_frontier(res: PlanResult, width: int | None = None) -> Table:
    """The frontier as a table; narrower than ``WIDE`` columns: five columns (configuration, accuracy, latency,
    source), the rest in the plan file."""
    if width is not None and width < WIDE:
        return _narrow(res)
    p = f"p{res.percentile}"
    title = (
        f"Accuracy vs latency frontier on {res.profile.device.name} ({res.profile.kind} profile), "
        f"target {res.target_s:g} s at {p}"
    )
    tab = Table(title=title)
    for col in (
        "",
        "model",
        "quant",
        "B",
        "n",
        "aggregation",
        "accuracy [95 % CI]",
        "acc. from",
        f"latency {p}",
        "p50 (interval)",
        "energy",
        "memory",
        "method",
    ):
        tab.add_column(col, justify="right" if col in ("B", "n", "accuracy") else "left")
    for i in res.frontier:
        i = int(i)
        c = res.config(i)
        mark = "*" if res.chosen == i else ("ok" if res.feasible[i] else "")
        pred = res.pred
        tab.add_row(
            mark,
            c["model_id"],
            c["quant"] or "",
            str(c["budget"]),
            str(c["n"]),
            c["aggregation"] + (f", stop {c['stop_rule']}" if c.get("stop_rule") else ""),
            _acc(res, i),
            "prior" if "accuracy: prior" in res.rests_on(i) else "table",
            _fmt(res.latency[i], "s"),
            f"{pred['total_s'][i]:.3g} ({pred['lo_s'][i]:.3g}-{pred['hi_s'][i]:.3g})",
            _fmt(pred["energy_j"][i], "J"),
            _fmt(pred["memory_bytes"][i] / 1e9, "GB"),
            _short(res.method(i)),
        )
    return tab


def _narrow(res: PlanResult) -> Table:
    p = f"p{res.percentile}"
    tab = Table(
        title=f"Frontier on {res.profile.device.name}, target {res.target_s:g} s at {p}",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
        padding=(0, 1),
        title_justify="left",
        caption_justify="left",
    )
    caps = [("energy", "energy_j", "J", 1.0)] if res.energy_cap_j is not None else []
    caps += [("memory", "memory_bytes", "GB", 1e9)] if res.memory_cap_gb is not None else []
    for col in ["", "configuration", "acc % [CI]", f"{p} s (range)"] + [c[0] for c in caps]:
        tab.add_column(col, no_wrap=True)
    s = lambda x: f"{x:.2f}" if x < 10 else f"{x:.1f}"
    for i in res.frontier:
        i = int(i)
        mark = "*" if res.chosen == i else ("ok" if res.feasible[i] else "")
        rests = res.rests_on(i)
        acc = f"{100 * res.accuracy[i]:.1f}"
        if res.acc_lo is not None and res.acc_hi is not None:
            acc += f" [{100 * res.acc_lo[i]:.0f}-{100 * res.acc_hi[i]:.0f}]"
        acc += "~" if "accuracy: prior" in rests else ""
        lat = f"{s(res.latency[i])} ({s(res.pred['lo_s'][i])}-{s(res.pred['hi_s'][i])})"
        lat += "~" if any(r.startswith("latency") for r in rests) else ""
        tab.add_row(mark, short_label(res, i), acc, lat, *[_fmt(res.pred[k][i] / d, u, 2) for _, k, u, d in caps])
    tab.caption = (
        "~ estimated (latency: cross-model or block-slice estimate; accuracy: a prior), else measured; "
        "* chosen, ok meets the target; every column in plan.json `frontier`"
    )
    return tab


def why_lines(res: PlanResult) -> list[str]:
    """Why the chosen configuration: the rule that chose it, then the chosen one against each feasible competitor
    (accuracy difference chosen - competitor with its 95 % interval, paired or not, the verdict, the saving)."""
    if res.chosen is None:
        return []
    if res.why_chosen:
        out = [f"why: {res.why_chosen}"]
    elif res.chosen != res.most_accurate:
        out = [
            "why: chosen with offload planned jointly (see the notes)"
            if res.joint is not None
            else "why: not the most accurate feasible configuration (see the notes)"
        ]
    elif res.prefer == "cheaper":
        out = [
            "why: the most accurate feasible configuration; no cheaper one is both tied with it and cheaper beyond "
            "the latency prediction intervals"
        ]
    else:
        out = ["why: the most accurate feasible configuration (--prefer most-accurate)"]
    for cm in res.competitors():
        how = (
            f"paired, {cm.n_shared} problems"
            if cm.paired
            else "unpaired: " + cm.how.split(";")[0].removeprefix("unpaired: ")
        )
        out.append(
            f"  vs {short_label(res, cm.other)} ({100 * res.accuracy[cm.other]:.1f} %): "
            f"{100 * cm.diff:+.1f} pts [{100 * cm.lo:+.1f}, {100 * cm.hi:+.1f}] ({how}): {cm.verdict}; {cm.saving_how}"
        )
    return out


def chance_line(res: PlanResult) -> str | None:
    """The chosen table accuracy against answering blind (the same answers, other problems' targets)."""
    c = res.chance()
    return None if c is None else f"against chance: {c.line()}"


def accuracy_line(res: PlanResult, heldout: tuple | None = None) -> str | None:
    """The chosen table accuracy is the best of many noisy estimates: say so, with the held-out figure if any."""
    o = res.optimism()
    if o is None:
        return None
    line = (
        f"the table accuracy {100 * res.accuracy[res.chosen]:.1f} % is the best of {o[1]} feasible estimates on the "
        f"same problems: optimistic (estimated +{100 * o[0]:.1f} pts by bootstrap)"
    )
    if heldout is not None:
        line += f"; held out: {100 * heldout[0]:.1f} % [{100 * heldout[1]:.1f}, {100 * heldout[2]:.1f}] ({heldout[3]})"
    else:
        line += "; held out: not measured"
    return line
