"""`edgekit profile`: measure a model on this device and save a device profile."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgekit.cli.output import console, err_console, print_json
from edgekit.models.catalog import DEFAULT_MODEL


def _ints(s: Optional[str]) -> Optional[list[int]]:
    if not s:
        return None
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        from edgekit.errors import UsageError

        raise UsageError(f"expected comma-separated integers, got {s!r}", fix="e.g. --ns 1,2,4,8")


def register(app: typer.Typer) -> None:
    @app.command("profile")
    def profile(
        model: str = typer.Option(DEFAULT_MODEL, "--model", "-m"),
        output: Optional[str] = typer.Option(None, "--output", "-o", help="profile JSON (default: profiles/<host>-<model>.json)"),
        quick: bool = typer.Option(False, "--quick", help="small sweep (about 1-2 min for a 0.5B model on 2 cores)"),
        prompt_lengths: Optional[str] = typer.Option(None, help="e.g. 32,128,512,2048"),
        contexts: Optional[str] = typer.Option(None, help="decode context depths, e.g. 0,512,2048,4096"),
        ns: Optional[str] = typer.Option(None, help="parallel samples, e.g. 1,2,4,8,16"),
        steps: Optional[int] = typer.Option(None, help="decode steps timed per point"),
        reps: Optional[int] = typer.Option(None, help="repetitions per point (median, IQR)"),
        cooldown: float = typer.Option(0.0, help="seconds to rest between repetitions"),
        threads: Optional[int] = typer.Option(None),
        device_name: Optional[str] = typer.Option(None, help="name of this device in the profile"),
        append: bool = typer.Option(False, help="add the model to an existing profile at --output"),
        json_out: bool = typer.Option(False, "--json"),
        csv_out: bool = typer.Option(False, "--csv", help="print the points as CSV"),
    ):
        """Measure load, prefill, decode (context depth x parallel samples), memory, energy, drift."""
        import socket

        from edgekit.schemas.profile import load_profile
        from edgekit.profile.sweep import SweepConfig, profile_model

        cfg = SweepConfig.quick() if quick else SweepConfig()
        cfg.prompt_lengths = _ints(prompt_lengths) or cfg.prompt_lengths
        cfg.contexts = _ints(contexts) if contexts is not None else cfg.contexts
        cfg.ns = _ints(ns) or cfg.ns
        cfg.decode_steps = steps or cfg.decode_steps
        cfg.reps = reps or cfg.reps
        cfg.cooldown_s, cfg.threads = cooldown, threads
        out = Path(output) if output else Path("profiles") / f"{socket.gethostname()}-{Path(model).stem}.json"
        existing = load_profile(out) if append and out.exists() else None
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err_console) as bar:
            task = bar.add_task("profiling", total=None)

            def progress(stage, done, total):
                bar.update(task, description=stage, completed=done, total=total)

            prof = profile_model(model, cfg, output=out, progress=progress, device_name=device_name, existing=existing)
        mp = prof.models[-1]
        if json_out:
            return print_json(prof)
        if csv_out:
            w = csv.writer(sys.stdout)
            w.writerow(["kind", "prompt_tokens", "context_tokens", "n", "median_s", "iqr_s", "tok_s", "reps"])
            for p in mp.prefill:
                w.writerow(["prefill", p.prompt_tokens, "", 1, p.prefill_s.value, p.prefill_s.iqr, p.prefill_tok_s.value, p.prefill_s.reps])
            for d in mp.decode:
                w.writerow(["decode_step", "", d.context_tokens, d.n, d.step_s.value, d.step_s.iqr, d.decode_tok_s.value, d.step_s.reps])
            return
        render_profile(prof, mp, out)


def render_profile(prof, mp, out) -> None:
    t = Table(title=f"{mp.model.id} on {prof.device.name} (measured: median of reps, IQR)")
    for c in ("point", "time", "IQR", "tok/s", "reps"):
        t.add_column(c)
    if mp.load_s:
        t.add_row("load", f"{mp.load_s.value:.2f} s", f"{mp.load_s.iqr:.2f}", "", str(mp.load_s.reps))
    for p in mp.prefill:
        t.add_row(f"prefill {p.prompt_tokens} tok", f"{p.prefill_s.value * 1e3:.0f} ms", f"{p.prefill_s.iqr * 1e3:.0f}",
                  f"{p.prefill_tok_s.value:.0f}", str(p.prefill_s.reps))
    for d in mp.decode:
        t.add_row(f"decode ctx={d.context_tokens} n={d.n}", f"{d.step_s.value * 1e3:.1f} ms/step", f"{d.step_s.iqr * 1e3:.1f}",
                  f"{d.decode_tok_s.value:.1f}", str(d.step_s.reps))
    console.print(t)
    if mp.peak_rss_mb:
        console.print(f"peak RSS {mp.peak_rss_mb.value:.0f} MB ({mp.peak_rss_mb.describe()})")
    if mp.energy:
        e = mp.energy
        console.print(f"energy: idle {e.idle_power_mw.fmt()} · prefill {e.prefill_energy_per_token_mj.fmt()} · "
                      f"decode {e.decode_energy_per_token_mj.fmt()} [{e.decode_energy_per_token_mj.describe()}]")
    if mp.drift and mp.drift.flagged:
        console.print("[yellow]drift flagged: " + "; ".join(mp.drift.reasons) + "[/yellow]")
    elif mp.drift and mp.drift.decode_drift_pct is not None:
        console.print(f"decode drift {mp.drift.decode_drift_pct:+.1f} % (first vs last reference run): stable")
    for g in mp.gaps:
        console.print(f"[yellow]gap: {g}[/yellow]")
    console.print(f"saved {out}")
