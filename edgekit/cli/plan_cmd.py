"""`edgekit plan`: the most accurate configuration that meets a latency target on a device."""

from __future__ import annotations

from typing import Optional

import typer

from edgekit.cli.output import console, print_json
from edgekit.errors import UsageError


def table_args(accuracy: Optional[list[str]], extra: Optional[list[str]]) -> list[str]:
    """The -a values, then the positional ones (the rest of `-a a.json b.json`); those must be .json
    files, so a stray word is named instead of being read as a table."""
    for x in extra or []:
        if not x.lower().endswith(".json"):
            raise UsageError(f"unexpected argument {x!r}: only accuracy tables (*.json) may follow --accuracy",
                             fix="pass tables as -a A.json B.json (or repeat -a), and every other value after its option")
    paths = list(accuracy or []) + list(extra or [])
    if not paths:
        raise UsageError("missing option --accuracy / -a", fix="pass --accuracy TABLE.json (build one with `edgekit eval`)")
    return paths


def register(app: typer.Typer) -> None:
    @app.command("plan")
    def plan_cmd(
        tables: Optional[list[str]] = typer.Argument(None, metavar="[TABLE.json]...", show_default=False,
                                                     help="more accuracy tables, so that `-a a.json b.json` and "
                                                          "`-a tables/*.json` work as typed"),
        profile: str = typer.Option(..., "--profile", "-p", help="device profile JSON (edgekit profile, or profiles/*.json)"),
        accuracy: Optional[list[str]] = typer.Option(None, "--accuracy", "-a", show_default=False,
                                                     help="accuracy table(s) from edgekit eval: repeat -a, or list "
                                                          "several after one -a"),
        latency_target: str = typer.Option(..., "--latency-target", "-t", help="e.g. 2s or 500ms"),
        percentile: int = typer.Option(50, help="50 or 95: which end of the prediction interval must meet the target"),
        energy_cap: Optional[float] = typer.Option(None, "--energy-cap", help="joules per query"),
        memory_cap: Optional[float] = typer.Option(None, "--memory-cap", help="GB"),
        output: str = typer.Option("plan.json", "--output", "-o", help="plan file for `edgekit run --plan`"),
        plot: Optional[str] = typer.Option(None, "--plot", help="write a Pareto plot (PNG)"),
        sequences_leave: bool = typer.Option(False, help="model finished samples leaving the batch (less conservative)"),
        json_out: bool = typer.Option(False, "--json"),
    ):
        """Enumerate model x quantization x budget x n x aggregation; keep what fits; pick the most accurate."""
        from edgekit.plan.export import to_plan_file
        from edgekit.plan.make import make_plan, parse_duration
        from edgekit.plan.render import render_frontier

        res, written = make_plan(profile, table_args(accuracy, tables), parse_duration(latency_target), percentile=percentile,
                                 energy_cap_j=energy_cap, memory_cap_gb=memory_cap, output=output, plot=plot,
                                 sequences_leave=sequences_leave)
        pf = to_plan_file(res)
        if json_out:
            return print_json(pf)
        console.print(render_frontier(res))
        c, p = pf.chosen, pf.predicted
        console.print(
            f"[bold]chosen:[/bold] {c.model_id} ({c.quant}) · {c.prompt_template} · budget {c.budget} · n={c.n} · "
            f"{c.aggregation} · T={c.temperature}"
        )
        console.print(
            f"predicted: latency {p.latency_s.value:.2f} s [{p.latency_lo_s:.2f}, {p.latency_hi_s:.2f}] ({p.method}); "
            f"accuracy {100 * p.accuracy:.1f} % ({p.accuracy_source}); energy {p.energy_j.fmt()}; memory {p.memory_gb.fmt()}"
        )
        for b in pf.based_on:
            console.print(f"[dim]· {b}[/dim]")
        console.print(f"plan written to {written}" + (f"; plot {plot}" if plot else ""))
