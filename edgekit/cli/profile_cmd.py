"""`edgekit profile`: measure a model on this device and save a device profile."""

from __future__ import annotations

import csv
import os
import re
import sys
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgekit.cli.options import GpuLayers, Priority
from edgekit.cli.output import console, err_console, print_json
from edgekit.host.threads import set_priority
from edgekit.models.catalog import DEFAULT_MODEL


def _ints(s: str | None) -> list[int] | None:
    if not s:
        return None
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        from edgekit.errors import UsageError

        raise UsageError(f"expected comma-separated integers, got {s!r}", fix="e.g. --ns 1,2,4,8") from None


def default_output(model: str, host: str) -> Path:
    """profiles/<host>-<model>.json: a .gguf path gives its stem, any other spec its whole id
    (``qwen2.5-coder-0.5b-instruct`` keeps its dots), with unsafe characters replaced by ``-``."""
    p = Path(model)
    name = p.stem if p.suffix == ".gguf" else (p.name if os.sep in model else model)

    def safe(x: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "-", x).strip("-.") or "unknown"

    return Path("profiles") / f"{safe(host)}-{safe(name)}.json"


def register(app: typer.Typer) -> None:
    @app.command("profile")
    def profile(
        model: str = typer.Option(DEFAULT_MODEL, "--model", "-m"),
        output: str | None = typer.Option(
            None,
            "--output",
            "-o",
            help="profile JSON (default: profiles/<host>-<model id>.json); a run that stops early never overwrites it",
        ),
        quick: bool = typer.Option(False, "--quick", help="small sweep (about 1-2 min for a 0.5B model on 2 cores)"),
        prompt_lengths: str | None = typer.Option(None, help="e.g. 32,128,512,2048"),
        contexts: str | None = typer.Option(None, help="decode context depths, e.g. 0,512,2048,4096"),
        ns: str | None = typer.Option(None, help="parallel samples, e.g. 1,2,4,8,16"),
        steps: int | None = typer.Option(None, help="decode steps timed per point"),
        reps: int | None = typer.Option(None, help="repetitions per point (median, IQR)"),
        cooldown: float = typer.Option(0.0, help="seconds to rest between repetitions"),
        threads: int | None = typer.Option(None),
        priority: Priority = "normal",
        gpu_layers: GpuLayers = None,
        engine: str = typer.Option(
            "llama.cpp", "--engine", help="llama.cpp | onnx (an exported folder or variant id as --model)"
        ),
        ctx: int | None = typer.Option(None, "--ctx", help="context size in tokens (default: what the sweep needs)"),
        device_name: str | None = typer.Option(None, help="name of this device in the profile"),
        append: bool = typer.Option(
            False,
            help=(
                "add the model to an existing profile at --output (a run that stops early adds a partial entry and "
                "keeps the complete one)"
            ),
        ),
        slices: bool = typer.Option(
            False,
            "--slices",
            help="estimate instead of measure: sweep a 1-block and a "
            "k-block slice of the GGUF and extrapolate to its depth (seconds for a large model; "
            "labelled estimate; never replaces a measured entry)",
        ),
        slice_blocks: int = typer.Option(8, "--slice-blocks", help="blocks in the larger slice (with --slices)"),
        background: str | None = typer.Option(
            None,
            "--background",
            help="measure beside other load: N busy "
            "workers, or a command (stopped when the sweep ends); the profile records the slowdown",
        ),
        json_out: bool = typer.Option(False, "--json"),
        csv_out: bool = typer.Option(False, "--csv", help="print the points as CSV"),
    ):
        """Measure load, prefill, decode (context depth x parallel samples), memory, energy, drift."""
        import socket

        from edgekit.profile.sweep import SweepConfig, profile_model
        from edgekit.schemas.checks import check_output_path
        from edgekit.schemas.profile import load_profile

        set_priority(priority)  # before any thread starts: llama.cpp's threads inherit it
        cfg = SweepConfig.quick() if quick else SweepConfig()
        cfg.prompt_lengths = _ints(prompt_lengths) or cfg.prompt_lengths
        cfg.contexts = _ints(contexts) if contexts is not None else cfg.contexts
        cfg.ns = _ints(ns) or cfg.ns
        cfg.decode_steps = steps or cfg.decode_steps
        cfg.reps = reps or cfg.reps
        cfg.cooldown_s, cfg.threads, cfg.n_ctx, cfg.engine = cooldown, threads, ctx, engine
        cfg.background = background
        if background is not None:
            from edgekit.profile.background import Background

            Background(background)  # a malformed --background fails here, in one line
        cfg.gpu_layers = gpu_layers
        out = Path(output) if output else default_output(model, socket.gethostname())
        cfg.validate(None)  # bad sweep values and a bad --output fail before the model is touched
        check_output_path(out)
        saved = None
        try:
            existing = load_profile(out) if append and out.exists() else None
            # The bar leaves nothing behind (transient; none at all when stderr is not a terminal), so
            # an interruption or error ends in exactly one line on stderr.
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err_console,
                transient=True,
                disable=not err_console.is_terminal,
            ) as bar:
                task = bar.add_task("profiling", total=None)

                def progress(stage, done, total):
                    bar.update(task, description=stage, completed=done, total=total)

                def warn(msg):
                    bar.console.print(f"warning: {msg}", soft_wrap=True, markup=False, highlight=False)

                if slices:
                    from edgekit.profile.slice_estimate import estimate_by_slices

                    prof = estimate_by_slices(
                        model,
                        cfg,
                        blocks=slice_blocks,
                        output=out,
                        existing=existing,
                        progress=progress,
                        device_name=device_name,
                        warn=warn,
                    )
                else:
                    prof = profile_model(
                        model, cfg, output=out, progress=progress, device_name=device_name, existing=existing, warn=warn
                    )
            saved = out
            mp = prof.complete_models()[-1]  # this run's entry: a complete sweep's entry is the last complete one
            if json_out:
                return print_json(prof)
            if csv_out:
                w = csv.writer(sys.stdout)
                w.writerow(["kind", "prompt_tokens", "context_tokens", "n", "median_s", "iqr_s", "tok_s", "reps"])
                for p in mp.prefill:
                    w.writerow(
                        [
                            "prefill",
                            p.prompt_tokens,
                            "",
                            1,
                            p.prefill_s.value,
                            p.prefill_s.iqr,
                            p.prefill_tok_s.value,
                            p.prefill_s.reps,
                        ]
                    )
                for d in mp.decode:
                    w.writerow(
                        [
                            "decode_step",
                            "",
                            d.context_tokens,
                            d.n,
                            d.step_s.value,
                            d.step_s.iqr,
                            d.decode_tok_s.value,
                            d.step_s.reps,
                        ]
                    )
                return
            render_profile(prof, mp, out)
            render_entries(prof, mp, out)
        except (
            KeyboardInterrupt
        ) as e:  # Ctrl-C: one line, exit 130; ProfileInterrupted says where the partial data went
            if saved is not None:
                what = f"the complete profile was already saved to {saved}"
            else:
                what = getattr(e, "message", None) or (
                    "stopped before anything was measured; nothing saved"
                    + (f", {out} unchanged" if out.exists() else "")
                )
            print(f"interrupted: {' '.join(what.split())}", file=sys.stderr)
            raise typer.Exit(130) from None


def _iqr_ms(f) -> str:
    return "-" if f.iqr is None else f"{f.iqr * 1e3:.{1 if f.unit == 's' and f.value < 0.1 else 0}f}"


def _timed_row(t: Table, point: str, f, time: str, rate: str) -> None:
    """A measured point's row: its time (figure f, formatted), f's IQR in ms, tok/s and f's reps."""
    t.add_row(point, time, _iqr_ms(f), rate, str(f.reps))


def render_profile(prof, mp, out) -> None:
    how = (
        "measured: median of reps, IQR"
        if mp.estimate is None
        else f"ESTIMATED from block slices {mp.estimate.blocks_one} and {mp.estimate.blocks_k} "
        f"of {mp.estimate.n_layer}, extrapolated in depth: median of paired reps"
    )
    t = Table(title=f"{mp.model.id} on {prof.device.name} ({how})")
    for c in ("point", "time", "IQR", "tok/s", "reps"):
        t.add_column(c)
    if mp.load_s and mp.load_s.value is not None:
        t.add_row(
            "load",
            f"{mp.load_s.value:.2f} s",
            "-" if mp.load_s.iqr is None else f"{mp.load_s.iqr:.2f}",
            "",
            str(mp.load_s.reps),
        )
    for p in mp.prefill:
        time, rate = f"{p.prefill_s.value * 1e3:.0f} ms", f"{p.prefill_tok_s.value:.0f}"
        _timed_row(t, f"prefill {p.prompt_tokens} tok", p.prefill_s, time, rate)
    for d in mp.decode:
        time, rate = f"{d.step_s.value * 1e3:.1f} ms/step", f"{d.decode_tok_s.value:.1f}"
        _timed_row(t, f"decode ctx={d.context_tokens} n={d.n}", d.step_s, time, rate)
    console.print(t)
    if mp.estimate is not None:
        console.print(
            f"estimate made in {mp.estimate.seconds} s; the planner widens its intervals by prefill "
            f"{mp.estimate.rel_unc_prefill:.0%} / decode {mp.estimate.rel_unc_decode:.0%} ({mp.estimate.how})",
            highlight=False,
        )
    if mp.peak_rss_mb and mp.peak_rss_mb.value is not None:
        console.print(f"peak RSS {mp.peak_rss_mb.value:.0f} MB ({mp.peak_rss_mb.describe()})")
    if mp.peak_vram_mb and mp.peak_vram_mb.value is not None:
        layers = "all" if mp.gpu_layers is not None and mp.gpu_layers < 0 else mp.gpu_layers
        console.print(
            f"peak GPU memory {mp.peak_vram_mb.value:.0f} MB, {layers} layer(s) offloaded "
            f"({mp.peak_vram_mb.describe()})"
        )
    if mp.energy:
        e = mp.energy
        console.print(
            f"energy: idle {e.idle_power_mw.fmt()} · prefill {e.prefill_energy_per_token_mj.fmt()} · "
            f"decode {e.decode_energy_per_token_mj.fmt()} [{e.decode_energy_per_token_mj.describe()}]"
        )
    if mp.drift and mp.drift.flagged:
        console.print("[yellow]drift flagged: " + "; ".join(mp.drift.reasons) + "[/yellow]")
    elif mp.drift and mp.drift.decode_drift_pct is not None:
        console.print(f"decode drift {mp.drift.decode_drift_pct:+.1f} % (first vs last reference run): stable")
    for g in mp.gaps:
        console.print(f"[yellow]gap: {g}[/yellow]")


def render_entries(prof, mp, out) -> None:
    """Which entries of the saved file are complete and which partial (only complete ones are measured
    profiles; a partial one lists its gaps and is kept only so nothing measured is lost)."""
    console.print(
        f"saved {out} ({len(prof.models)} entr{'y' if len(prof.models) == 1 else 'ies'}):",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    for m in prof.models:
        if m is mp:
            state = "estimated from block slices (this run)" if m.estimate is not None else "complete (this run)"
        elif m.estimate is not None:
            state = "estimated from block slices"
        elif m.is_partial:
            missing = sum(1 for g in m.gaps if g.startswith(("prefill ", "decode ")) and " reps" in g)
            state = f"partial: {m.gaps[0] if m.gaps else 'stopped early'}; {missing} point(s) short of reps"
        else:
            state = "complete"
        console.print(f"  {m.model.id}: {state}", markup=False, highlight=False, soft_wrap=True)
