"""`edgekit deploy`: a labelled task -> a calibrated plan, checked on held-out problems, ready to serve."""

from __future__ import annotations

import math
import os
import sys

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from edgekit.cli.options import CloudModel, CloudUrl, OffloadBudget, Priority, Threads
from edgekit.cli.output import console, err_console, print_json, stop_progress
from edgekit.errors import UsageError
from edgekit.host.threads import set_priority


def parse_time_budget(text: str) -> float:
    """'10m', '90s', '1h', '600' (seconds) -> seconds."""
    t = str(text).strip().lower()
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0}.get(t[-1:], None)
    try:
        v = float(t[:-1] if scale else t) * (scale or 1.0)
    except ValueError:
        v = float("nan")
    if not math.isfinite(v) or v <= 0:
        raise UsageError(f"cannot read --time-budget {text!r}", fix="write it like 10m, 600s or 1h")
    return v


def _models(text: str) -> list[str] | None:
    if text.strip().lower() == "auto":
        return None
    ms = [m.strip() for m in text.split(",") if m.strip()]
    if not ms:
        raise UsageError(f"--models {text!r} names no model", fix="pass auto, or model ids separated by commas")
    return ms


def register(app: typer.Typer) -> None:
    @app.command("deploy")
    def deploy_cmd(
        task: str = typer.Argument(
            ..., help="jsonl:PATH (labelled: prompt, answer, optional id/choices) or a built-in task"
        ),
        target: str = typer.Option(..., "--target", "-t", help="latency target, e.g. 2s or 500ms"),
        p95: bool = typer.Option(False, "--p95", help="the target holds at p95 (default: p50)"),
        cloud_url: CloudUrl = None,
        cloud_model: CloudModel = None,
        alpha: float | None = typer.Option(
            None, "--alpha", help="offload guarantee: local errors kept <= alpha (default 0.1 with a cloud)"
        ),
        delta: float | None = typer.Option(None, "--delta", help="... with probability >= 1 - delta (default 0.05)"),
        offload_budget: OffloadBudget = None,
        time_budget: str = typer.Option("10m", "--time-budget", help="wall time for the whole deployment, e.g. 10m"),
        models: str = typer.Option(
            "auto", "--models", help="auto (cached catalogue models that fit in memory) or ID,ID,..."
        ),
        output: str = typer.Option("deploy", "--output", "-o", help="deployment folder (a rerun continues it)"),
        template: str = typer.Option("terse", "--template", help="prompt template: terse | cot"),
        max_tokens: int | None = typer.Option(None, "--max-tokens", help="token budget of the tune tables"),
        n: int = typer.Option(8, "--n", help="samples per tune problem (majority@k for every k <= n)"),
        profile: str | None = typer.Option(None, "--profile", "-p", help="a device profile to try first"),
        threads: Threads = None,
        priority: Priority = "normal",
        seed: int = typer.Option(0, "--seed"),
        serve: bool = typer.Option(False, "--serve", help="start `edgekit serve --plan DIR/plan.json` when done"),
        host: str = typer.Option("127.0.0.1", "--host", help="with --serve and in the unit file"),
        port: int = typer.Option(8080, "--port", help="with --serve and in the unit file"),
        json_out: bool = typer.Option(False, "--json"),
    ):
        """Profile (or reuse this device's profile), build accuracy tables, plan, calibrate the offload
        threshold, and check the plan on held-out problems; write plan.json, report.md/json, frontier.png
        and a systemd unit."""
        from edgekit.deployment import deploy
        from edgekit.plan.make import parse_duration

        set_priority(priority)
        opts = dict(
            percentile=95 if p95 else 50,
            cloud_url=cloud_url,
            cloud_model=cloud_model,
            alpha=alpha,
            delta=delta,
            offload_budget=offload_budget,
            time_budget_s=parse_time_budget(time_budget),
            models=_models(models),
            out_dir=output,
            template=template,
            max_tokens=max_tokens,
            n_samples=n,
            profile=profile,
            threads=threads,
            seed=seed,
        )
        bar = Progress(
            TextColumn("{task.description:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=err_console,
        )
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if not tasks:
                bar.start()
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        failed = True
        try:
            rep = deploy(
                task,
                parse_duration(target, "--target"),
                progress=progress,
                notice=lambda m: err_console.print(m, highlight=False, soft_wrap=True),
                **opts,
            )
            failed = False
        finally:
            if tasks:
                stop_progress(bar, failed)
        if json_out:
            print_json(rep.to_dict())
        else:
            _print(rep)
        if serve:
            plan = rep.outputs["plan"]
            from edgekit.deployment.report import edgekit_executable

            exe = edgekit_executable()
            console.print(f"serving {plan} at http://{host}:{port}/v1 (Ctrl-C stops it)")
            sys.stdout.flush()
            os.execv(exe, [exe, "serve", "--plan", plan, "--host", host, "--port", str(port)])


def _print(rep) -> None:
    p, v = rep.plan, rep.verify
    console.print(f"[bold]deployed[/bold] {rep.task} -> {rep.outputs['plan']} in {rep.total_s:.0f} s", highlight=False)
    console.print(f"profile: {rep.profile['how']}", highlight=False, soft_wrap=True)
    console.print(
        f"chosen: [bold]{p['config']}[/bold]  table {p['accuracy']:.1%} [{p['accuracy_lo']:.1%}, "
        f"{p['accuracy_hi']:.1%}]  predicted {p['latency_s']:.2f} s [{p['latency_lo_s']:.2f}, {p['latency_hi_s']:.2f}]",
        highlight=False,
    )
    for w in p["why"][:4]:
        console.print(f"  {w}", highlight=False, soft_wrap=True)
    if rep.offload:
        o = rep.offload
        console.print(
            f"offload: {o['score']} >= {o['threshold']:.4g} stays local; {o['guarantee']}",
            highlight=False,
            soft_wrap=True,
        )
    t = Table(title=f"verify: {v['problems']} held-out problems")
    t.add_column("")
    t.add_column("measured")
    t.add_column("predicted")
    t.add_column("")

    def mark(bad: bool) -> str:
        return "[red]contradicted[/red]" if bad else "holds"

    t.add_row(
        "accuracy",
        f"{v['acc']:.1%} [{v['acc_lo']:.1%}, {v['acc_hi']:.1%}]",
        f"{v['acc_pred']:.1%} [{v['acc_pred_lo']:.1%}, {v['acc_pred_hi']:.1%}]",
        mark(v["acc_contradicted"]),
    )
    t.add_row(
        "p50",
        f"{v['p50_s']:.2f} s",
        f"{v['p50_pred_s']:.2f} s [{v['p50_pred_lo_s']:.2f}, {v['p50_pred_hi_s']:.2f}]",
        mark(v["p50_contradicted"]),
    )
    t.add_row("p95", f"{v['p95_s']:.2f} s", f"<= {v['p95_pred_s']:.2f} s", mark(v["p95_contradicted"]))
    console.print(t)
    if "offload" in v:
        o = v["offload"]
        console.print(
            f"offload on verify: rate {o['rate']:.1%}, end-to-end accuracy {o['system_acc']:.1%}", highlight=False
        )
    for f in rep.flags:
        console.print(f"[red]flag:[/red] {f}", highlight=False, soft_wrap=True)
    for n in rep.notes:
        console.print(f"note: {n}", highlight=False, soft_wrap=True)
    stages = ", ".join(f"{k} {s:.0f} s" for k, s in rep.stages.items())
    console.print(f"stages: {stages}", highlight=False)
    console.print(f"files: {', '.join(rep.outputs.values())}", highlight=False, soft_wrap=True)
