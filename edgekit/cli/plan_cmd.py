"""`edgekit plan`: the most accurate configuration that meets a latency target on a device."""

from __future__ import annotations

import typer

from edgekit.cli.options import OffloadBudget
from edgekit.cli.output import console, err_console, print_json
from edgekit.errors import UsageError


def table_args(accuracy: list[str] | None, extra: list[str] | None) -> list[str]:
    """The -a values, then the positional ones (the rest of `-a a.json b.json`); those must be .json
    files, so a stray word is named instead of being read as a table."""
    for x in extra or []:
        if not x.lower().endswith(".json"):
            raise UsageError(
                f"unexpected argument {x!r}: only accuracy tables (*.json) may follow --accuracy",
                fix="pass tables as -a A.json B.json (or repeat -a), and every other value after its option",
            )
    paths = list(accuracy or []) + list(extra or [])
    if not paths:
        raise UsageError(
            "missing option --accuracy / -a", fix="pass --accuracy TABLE.json (build one with `edgekit eval`)"
        )
    return paths


def register(app: typer.Typer) -> None:
    @app.command("plan")
    def plan_cmd(
        tables: list[str] | None = typer.Argument(
            None,
            metavar="[TABLE.json]...",
            show_default=False,
            help="more accuracy tables, so that `-a a.json b.json` and `-a tables/*.json` work as typed",
        ),
        profile: str = typer.Option(
            ..., "--profile", "-p", help="device profile JSON (edgekit profile, or profiles/*.json)"
        ),
        accuracy: list[str] | None = typer.Option(
            None,
            "--accuracy",
            "-a",
            show_default=False,
            help="accuracy table(s) from edgekit eval: repeat -a, or list several after one -a",
        ),
        latency_target: str = typer.Option(..., "--latency-target", "-t", help="e.g. 2s or 500ms"),
        percentile: int = typer.Option(50, help="50 or 95: which end of the prediction interval must meet the target"),
        energy_cap: float | None = typer.Option(None, "--energy-cap", help="joules per query"),
        memory_cap: float | None = typer.Option(None, "--memory-cap", help="GB"),
        output: str = typer.Option("plan.json", "--output", "-o", help="plan file for `edgekit run --plan`"),
        plot: str | None = typer.Option(None, "--plot", help="write a Pareto plot (PNG)"),
        sequences_leave: bool = typer.Option(
            False, help="model finished samples leaving the batch (less conservative)"
        ),
        prefer: str = typer.Option(
            "cheaper",
            "--prefer",
            help="cheaper: a cheaper configuration only when tied with the most accurate (paired over shared "
            "problems) and cheaper beyond the latency prediction intervals | most-accurate",
        ),
        stop_rules: str = typer.Option(
            "decided",
            "--stop-rules",
            help="stopping rules to consider for majority votes, ';'-separated: none | decided | beta:<c> | "
            "adaptive:<n0>,<n_max>[,<c>] (replayed from each table's samples)",
        ),
        cloud_table: str | None = typer.Option(
            None,
            "--cloud-table",
            help="the cloud's accuracy table on the same problems (edgekit eval --engine openai): plan offload jointly",
        ),
        cloud_latency: str | None = typer.Option(
            None, "--cloud-latency", help="the cloud's measured latency, e.g. 1.2s"
        ),
        offload_budget: OffloadBudget = None,
        cloud_url: str | None = typer.Option(None, "--cloud-url", help="recorded in the plan for `edgekit run`"),
        cloud_model: str | None = typer.Option(None, "--cloud-model"),
        variants: str = typer.Option(
            "auto",
            "--variants",
            help="folder of quantized-variant cards (*.card.json) to plan "
            "as candidates; auto: the edgekit quantize cache; none: no variants",
        ),
        confirm: bool = typer.Option(
            False,
            "--confirm",
            help="if the chosen model's latency is a cross-model or block-slice estimate, "
            "quick-profile it here (appended to --profile) and plan again",
        ),
        cores_available: int | None = typer.Option(
            None,
            "--cores-available",
            help="plan for a shared CPU: only this many of the profile's cores are free (scaled by the profile's "
            "measured thread scaling)",
        ),
        json_out: bool = typer.Option(False, "--json"),
    ):
        """Enumerate model x quantization x budget x n x aggregation; keep what fits; pick the most accurate."""
        from edgekit.cli.render_plan import accuracy_line, chance_line, render_frontier, why_lines
        from edgekit.plan.export import to_plan_file
        from edgekit.plan.make import make_plan, parse_duration, parse_rule_list

        res, written = make_plan(
            profile,
            table_args(accuracy, tables),
            parse_duration(latency_target),
            percentile=percentile,
            energy_cap_j=energy_cap,
            memory_cap_gb=memory_cap,
            output=output,
            plot=plot,
            sequences_leave=sequences_leave,
            prefer=prefer,
            stop_rules=parse_rule_list(stop_rules),
            cloud_table=cloud_table,
            cloud_latency_s=parse_duration(cloud_latency, "--cloud-latency") if cloud_latency is not None else None,
            offload_budget=offload_budget,
            cloud_url=cloud_url,
            cloud_model=cloud_model,
            variants=None if variants.lower() == "none" else variants,
            confirm=confirm,
            cores_available=cores_available,
        )
        pf = to_plan_file(res)
        for w in res.all_warnings():
            err_console.print(f"warning: {w}", highlight=False, soft_wrap=True)
        if json_out:
            return print_json(pf)
        console.print(render_frontier(res, console.width))
        c, p = pf.chosen, pf.predicted
        console.print(
            f"[bold]chosen:[/bold] {c.model_id} (quant {c.quant}) · {c.prompt_template} · budget {c.budget} · "
            f"n={c.n} · {c.aggregation}{f' (stop {c.stop_rule})' if c.stop_rule else ''} · T={c.temperature}"
        )
        console.print(
            f"predicted: latency {p.latency_s.value:.2f} s [{p.latency_lo_s:.2f}, {p.latency_hi_s:.2f}] ({p.method}); "
            f"accuracy {100 * p.accuracy:.1f} % [{100 * (p.accuracy_lo or 0):.1f}, {100 * (p.accuracy_hi or 0):.1f}] "
            f"({p.accuracy_source}); energy {p.energy_j.fmt()}; memory {p.memory_gb.fmt()}"
        )
        ho = (
            (p.heldout_accuracy, p.heldout_accuracy_lo, p.heldout_accuracy_hi, p.heldout_how)
            if p.heldout_accuracy is not None
            else None
        )
        if p.replayed_latency:
            rl = p.replayed_latency
            console.print(
                f"stop rule {c.stop_rule}, replayed on the table's problems (estimated): p50 {rl['p50_s']:.2f} s, "
                f"p95 {rl['p95_s']:.2f} s (a problem the rule does not settle runs to the budget)",
                highlight=False,
            )
        for line in [accuracy_line(res, ho), chance_line(res)] + why_lines(res):
            if line:
                console.print(line, highlight=False)
        if p.system_accuracy is not None and pf.offload is not None:
            console.print(
                f"with offload: system accuracy {100 * p.system_accuracy:.1f} % [{100 * p.system_accuracy_lo:.1f}, "
                f"{100 * p.system_accuracy_hi:.1f}], offload {100 * p.offload_rate:.0f} % (keep local iff "
                f"{pf.offload.score} >= {pf.offload.threshold:.4g}), expected {p.expected_latency_s:.2f} s, "
                f"p95 {p.mixture_p95_s:.2f} s; {pf.offload.guarantee}",
                highlight=False,
            )
        for why in p.rests_on:
            what = "a " + why.split(": ", 1)[1] if why.startswith("latency") else "an accuracy prior (heuristic)"
            m = c.model_path or c.model_id
            hint = (
                f"; `--confirm` quick-profiles {m} here and re-plans"
                if why.startswith("latency")
                else "; evaluate the variant (`edgekit eval -m ...`) for a measured table"
            )
            if "cross-model" in why:
                hint += (
                    f" (on a large model, `edgekit profile --model {c.model_id} --slices --append -o {profile}` "
                    "estimates it from two block slices of its file in seconds)"
                )
            console.print(
                f"[yellow]note:[/yellow] the chosen {why.split(':')[0]} rests on {what}{hint}", highlight=False
            )
        for b in (b for b in pf.based_on if not b.startswith("warning: ")):  # warnings went to stderr
            console.print(f"[dim]· {b}[/dim]")
        console.print(f"plan written to {written}" + (f"; plot {plot}" if plot else ""))
