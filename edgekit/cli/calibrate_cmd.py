"""`edgekit calibrate`: choose the offload threshold on labelled data and save it into the plan."""

from __future__ import annotations

import typer
from rich.table import Table

from edgekit.cli.options import OffloadBudget
from edgekit.cli.output import console, err_console, print_json


def register(app: typer.Typer) -> None:
    @app.command("calibrate")
    def calibrate_cmd(
        task: str = typer.Option(
            ..., "--task", help="labelled calibration set: bigbench:<task> | jsonl:PATH (held out from the tables)"
        ),
        plan: str = typer.Option(..., "--plan", help="plan file from `edgekit plan`; the threshold is saved into it"),
        alpha: float | None = typer.Option(
            None, "--alpha", help="at most this share of queries answered locally and wrong"
        ),
        delta: float | None = typer.Option(
            None, "--delta", help="... with probability >= 1 - delta over the calibration set"
        ),
        offload_budget: OffloadBudget = None,
        score: str | None = typer.Option(
            None,
            "--score",
            help="auto (choose or fit on a fitting split, calibrate on the rest) | vote_share | mean_logprob | "
            "low_logprob | answer_logprob | answer_min_logprob | group_conf | tail_conf | low_entropy | answered | "
            "p_true (default: auto when the set is large enough, else vote_share / answer_logprob)",
        ),
        split: str | None = typer.Option(None, help="problem range a:b (keep it disjoint from the accuracy tables')"),
        limit: int | None = typer.Option(None, help="first N problems of the split"),
        cloud_url: str | None = typer.Option(
            None, "--cloud-url", help="also ask the cloud, for the system-accuracy curve"
        ),
        cloud_model: str | None = typer.Option(None, "--cloud-model"),
        output: str | None = typer.Option(
            None, "--output", "-o", help="write the calibrated plan here (default: update --plan)"
        ),
        plot: str | None = typer.Option(None, "--plot", help="accuracy-vs-offload curve as PNG"),
        threads: int | None = typer.Option(None),
        json_out: bool = typer.Option(False, "--json"),
    ):
        """Run the plan on a labelled set; pick the threshold by Learn-then-Test (alpha, delta) or the
        conformal quantile (offload budget); save threshold, guarantee and curve into the plan."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        from edgekit.plan.offload_threshold import CalibrationRun, calibrate

        run = CalibrationRun(
            plan_path=plan,
            task=task,
            alpha=alpha,
            delta=delta,
            offload_budget=offload_budget,
            score=score,
            split=split,
            limit=limit,
            cloud_url=cloud_url,
            cloud_model=cloud_model,
            output=output,
            threads=threads,
        )
        bar = Progress(TextColumn("calibrate"), BarColumn(), MofNCompleteColumn(), console=err_console)
        state: dict = {}

        def progress(done: int, total: int) -> None:
            if "t" not in state:
                bar.start()
                state["t"] = bar.add_task("calibrate", total=total)
            bar.update(state["t"], completed=done, total=total)

        try:
            cal, path = calibrate(run, progress=progress)
        finally:
            if "t" in state:  # a bar never started must not print its (blank) last frame above an error
                bar.stop()
        if plot:
            _plot(cal, plot)
        if json_out:
            return print_json({"plan": str(path), "calibration": cal.model_dump(mode="json")})
        _render(cal, path)


def _render(cal, path) -> None:
    tab = Table(title=f"offload curve on {cal.n_calibration} calibration queries (measured), score {cal.score}")
    for c in ("threshold", "offload rate", "local & wrong", "system accuracy", "p-value"):
        tab.add_column(c)
    pts = cal.curve
    step = max(1, len(pts) // 15)
    for i, pt in enumerate(pts):
        chosen = pt.get("threshold") == cal.threshold
        if i % step and not chosen:
            continue
        acc = pt.get("system_accuracy")
        pv = pt.get("p_value")
        tab.add_row(
            ("→ " if chosen else "") + f"{pt['threshold']:.4g}",
            f"{100 * pt['offload_rate']:.1f} %",
            f"{100 * pt['local_wrong_rate']:.1f} %",
            "-" if acc is None else f"{100 * acc:.1f} %",
            "-" if pv is None else f"{pv:.3g}",
        )
    console.print(tab)
    console.print(
        f"chosen: keep local iff {cal.score} >= {cal.threshold:.4g} · offload {100 * (cal.offload_rate or 0):.1f} % · "
        f"local & wrong {100 * (cal.local_wrong_rate or 0):.1f} % ({cal.method})",
        highlight=False,
    )
    if cal.fit_split:
        console.print(
            f"score chosen on {cal.fit_split}; threshold calibrated on {cal.calibration_split}", highlight=False
        )
        console.print(f"why {cal.score}: {cal.score_choice}", highlight=False)
    console.print(f"guarantee: {cal.guarantee}", highlight=False)
    if cal.self_check_s is not None and cal.self_check_s.value is not None:
        from edgekit.schemas.plan import load_plan

        console.print(self_check_line(cal, load_plan(path)), highlight=False)
    console.print(f"saved into {path}")


def self_check_line(cal, plan) -> str:
    """What the P(True) self-check adds to every local answer, against the plan's target."""
    base = plan.predicted.latency_at_percentile_s
    total = base + cal.self_check_s.value
    over = total > plan.target_s
    return (
        f"{cal.score} reads P(True): each local answer adds one self-check prefill, {cal.self_check_s.value:.3f} s "
        f"({cal.self_check_s.describe()}); predicted local latency {base:.2f} s -> {total:.2f} s"
        + (f", above the plan's {plan.target_s:g} s target" if over else f", target {plan.target_s:g} s")
    )


def _plot(cal, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    off = [p["offload_rate"] for p in cal.curve]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(off, [p["local_wrong_rate"] for p in cal.curve], label="local & wrong (risk)")
    if cal.curve and cal.curve[0].get("system_accuracy") is not None:
        ax.plot(off, [p["system_accuracy"] for p in cal.curve], label="system accuracy")
    if cal.alpha is not None:
        ax.axhline(cal.alpha, ls="--", c="grey", lw=0.8, label=f"alpha = {cal.alpha}")
    ax.scatter([cal.offload_rate], [cal.local_wrong_rate], c="red", zorder=3, label="chosen")
    ax.set_xlabel("offload rate")
    ax.set_title(f"{cal.score}: measured on {cal.n_calibration} calibration queries")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
