"""`edgekit eval`: build an accuracy table (model x task x template x temperature)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from edgekit.cli.options import Priority
from edgekit.cli.output import console, err_console, print_json, stop_progress
from edgekit.errors import UsageError
from edgekit.host.threads import set_priority
from edgekit.models.catalog import DEFAULT_MODEL


def _width(text: str | None) -> float | None:
    """'10pts', '10%' or '0.1' -> 0.10."""
    if text is None:
        return None
    t = text.strip().lower()
    try:
        if t.endswith(("pts", "pt", "%")):
            return float(t.rstrip("pts%").strip()) / 100
        return float(t)
    except ValueError:
        raise UsageError(f"cannot read --target-width {text!r}", fix="write it like 10pts, 10% or 0.1") from None


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_cmd(
        task: str | None = typer.Argument(
            None,
            help=(
                "bigbench:object_counting | bigbench:date_understanding | bigbench:strategyqa | humaneval | "
                "jsonl:PATH (or --perplexity MODEL)"
            ),
        ),
        model: str = typer.Option(
            DEFAULT_MODEL, "--model", "-m", help="model id/path, or the server's model name with --backend openai"
        ),
        n: int = typer.Option(8, "--n", help="samples drawn per problem (one batch)"),
        max_tokens: int = typer.Option(
            256, "--max-tokens", help="largest token budget (smaller ones come from the same pool)"
        ),
        temperature: float = typer.Option(0.8),
        top_p: float = typer.Option(0.95, "--top-p"),
        seed: int = typer.Option(0),
        template: str | None = typer.Option(None, help="prompt template: cot | terse (default: the task's)"),
        limit: int | None = typer.Option(
            None, help="first N problems (of the split); with --perplexity: first N tokens of the text"
        ),
        split: str | None = typer.Option(None, help="problem range a:b"),
        output: str | None = typer.Option(None, "--output", "-o", help="accuracy table JSON"),
        backend: str = typer.Option(
            "llama.cpp", "--backend", "--engine", help="engine: llama.cpp | openai | onnx | a plugin's name"
        ),
        base_url: str | None = typer.Option(
            None, "--base-url", help="OpenAI-compatible server, e.g. http://127.0.0.1:8080/v1"
        ),
        threads: int | None = typer.Option(None),
        priority: Priority = "normal",
        constrain: str | None = typer.Option(
            None,
            "--constrain",
            help=(
                "grammar-constrained answers: 'answer' (just the answer) or 'reason:<chars>' (bounded reasoning, "
                "then the answer)"
            ),
        ),
        target_width: str | None = typer.Option(
            None,
            "--target-width",
            help=(
                "add problems in batches until the 95 % intervals of the configurations near the best are this "
                "narrow (e.g. 10pts) or separate"
            ),
        ),
        batch: int = typer.Option(10, "--batch", help="with --target-width: problems added between checks"),
        stop_rule: list[str] | None = typer.Option(
            None,
            "--stop-rule",
            help="also replay this stopping rule over the samples (repeatable): decided | beta:<c> | "
            "adaptive:<n0>,<n_max>[,<c>]; its rows (accuracy, steps, rows live per step) are saved with the table",
        ),
        allow_code_execution: bool = typer.Option(
            False,
            "--allow-code-execution",
            help="code tasks without a sandbox (bubblewrap): run model-written code with rlimits only",
        ),
        no_resume: bool = typer.Option(False, "--no-resume", help="start over instead of continuing a killed run"),
        json_out: bool = typer.Option(False, "--json"),
        perplexity: str | None = typer.Option(
            None,
            "--perplexity",
            help=(
                "instead of a task: perplexity of this model (id/path) on a fixed text, and KL divergence to "
                "--reference"
            ),
        ),
        text: str | None = typer.Option(
            None, "--text", help="with --perplexity: UTF-8 text file (default: the shipped public-domain text)"
        ),
        reference: str | None = typer.Option(
            None,
            "--reference",
            help=(
                "with --perplexity: reference .npz (from --make-reference) to measure KL divergence and top-1 "
                "agreement against"
            ),
        ),
        make_reference: bool = typer.Option(
            False,
            "--make-reference",
            help="with --perplexity: save this model's top-k distributions as a reference (-o REF.npz)",
        ),
        n_ctx: int = typer.Option(
            512, "--n-ctx", help="with --perplexity: window length in tokens (the second half of each window is scored)"
        ),
        top_k: int = typer.Option(64, "--top-k", help="with --make-reference: tokens kept per position"),
    ):
        """Draw N samples per problem once; derive accuracy for every budget and every k <= N.
        With --perplexity MODEL: perplexity on a fixed text, and KL divergence to a reference."""
        set_priority(priority)  # before any thread starts: llama.cpp's threads inherit it
        if perplexity is not None:
            if task is not None:
                raise UsageError(f"pass either a task ({task!r}) or --perplexity, not both", fix="drop one of them")
            return _perplexity(
                perplexity, text, reference, make_reference, n_ctx, top_k, limit, output, threads, json_out
            )
        if task is None:
            raise UsageError(
                "missing the task", fix="pass a task such as bigbench:object_counting, or --perplexity MODEL"
            )
        from edgekit.evaluate.api import evaluate

        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err_console,
        )
        state = {}

        def progress(done, total, *rest):  # the bar appears once work starts (errors come first, alone)
            if "tid" not in state:
                bar.start()
                state["tid"] = bar.add_task(f"eval {task}", total=total)
            bar.update(state["tid"], completed=done, total=total)

        failed = True
        try:
            table = evaluate(
                task,
                model,
                backend=backend,
                base_url=base_url,
                out_path=output,
                n_samples=n,
                temperature=temperature,
                top_p=top_p,
                seed=seed,
                max_tokens=max_tokens,
                limit=limit,
                split=split,
                template=template,
                threads=threads,
                resume=not no_resume,
                progress=progress,
                answer_format=constrain,
                target_width=_width(target_width),
                batch=batch,
                stop_rules=list(stop_rule or []),
                allow_code_execution=allow_code_execution,
                notice=lambda m: err_console.print(m, highlight=False, soft_wrap=True),
            )
            failed = False
        except KeyboardInterrupt as e:  # Ctrl-C: one line saying what was kept, exit 130
            if "tid" in state:
                stop_progress(bar, failed=True)
                state.pop("tid")
            kept = getattr(e, "kept", 0)
            what = getattr(e, "message", None) or "eval stopped before a problem finished; nothing new was saved"
            fix = (
                "run the same command again to continue from there, or add --no-resume to start over"
                if kept
                else "run the command again"
            )
            print(f"interrupted: {' '.join(what.split())} (fix: {fix})", file=sys.stderr)
            raise typer.Exit(130) from None
        finally:
            if "tid" in state:  # never started: stopping would print a blank line above the error
                stop_progress(bar, failed)
        if json_out:
            return print_json(
                table.model_dump(mode="json", exclude_none=True, exclude={"problems"})
            )  # the file, less its pool
        render_table(table)


def _perplexity(model, text, reference, make_reference, n_ctx, top_k, limit, output, threads, json_out) -> None:
    from edgekit.quantize import quality

    if make_reference and reference:
        raise UsageError(
            "--make-reference and --reference exclude each other",
            fix="make the reference first, then measure against it",
        )
    saved = None
    if make_reference:
        out = output or f"{Path(model).stem if model.endswith('.gguf') else model}.quality-ref.npz"
        saved, rep = quality.reference_topk(
            model, out, text=text, n_ctx=n_ctx, top_k=top_k, limit_tokens=limit, threads=threads
        )
    elif reference:
        if limit is not None or n_ctx != 512:
            raise UsageError(
                "--limit and --n-ctx come from the reference file", fix="drop them, or make a new reference"
            )
        rep = quality.measure_quality(model, reference, text=text, threads=threads)
    else:
        rep = quality.perplexity(model, text=text, n_ctx=n_ctx, limit_tokens=limit, threads=threads)
    if json_out:
        return print_json({**rep.model_dump(mode="json"), **({"reference_file": str(saved)} if saved else {})})
    console.print(
        f"{model} on {rep.text_name}: {rep.n_tokens} tokens scored, windows of {rep.n_ctx} "
        f"(measured, llama.cpp logits)",
        highlight=False,
    )
    console.print(f"  perplexity  {rep.ppl.value:.4f}  ({rep.ppl.note})", highlight=False)
    if rep.kl_mean is not None:
        console.print(
            f"  KL(ref||model) mean {rep.kl_mean.value:.5f} nats, p99 {rep.kl_p99.value:.5f} nats ({rep.kl_mean.note})",
            highlight=False,
        )
        console.print(
            f"  top-1 agreement {100 * rep.top1_agree.value:.2f} %   reference: {rep.reference}", highlight=False
        )
    if rep.note:
        console.print(f"  {rep.note}", highlight=False)
    if saved:
        console.print(f"reference saved to {saved}", highlight=False)


def render_table(t) -> None:
    import numpy as np

    from edgekit.evaluate.chance import summary as chance_summary
    from edgekit.evaluate.paired import separation
    from edgekit.figures import wilson

    rows = sorted(
        (r for r in t.rows if r.budget == t.max_tokens), key=lambda r: (r.aggregation, r.stop_rule or "", r.k)
    )
    tab = Table(
        title=(
            f"{t.task} · {t.model_id} · {t.prompt_template}{' + ' + t.answer_format if t.answer_format else ''} · "
            f"T={t.temperature} · {t.n_problems} problems "
            f"(measured on this eval set; budget {t.max_tokens})"
        )
    )
    for c in (
        "aggregation",
        "k",
        "accuracy [95 % CI]",
        "E\\[steps]",
        "method",
    ):  # escaped: "[steps]" would be rich markup
        tab.add_column(c)
    lo, hi = wilson(np.array([r.accuracy for r in rows]), np.full(len(rows), t.n_problems))
    for r, a, b in zip(rows, lo, hi):
        tab.add_row(
            r.aggregation + (f", stop {r.stop_rule}" if r.stop_rule else ""),
            str(r.k),
            f"{100 * r.accuracy:.1f} % [{100 * a:.1f}, {100 * b:.1f}]",
            f"{r.expected_steps:.0f}",
            r.method,
        )
    console.print(tab)
    console.print(
        f"95 % Wilson intervals over the {t.n_problems} problems (the eval set's sampling noise only)", highlight=False
    )
    for line in (separation(t), chance_summary(t)):
        if line:
            console.print(line, highlight=False)
    console.print(f"{len(t.rows)} rows over budgets {sorted({r.budget for r in t.rows})}")
