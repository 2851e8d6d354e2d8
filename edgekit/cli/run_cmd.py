"""`edgekit run PROMPT`: answer one query with n samples decoded in one batch."""

from __future__ import annotations

from typing import Optional

import typer

from edgekit.cli.output import PullProgress, console, print_json
from edgekit.models.catalog import DEFAULT_MODEL


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(
        prompt: str = typer.Argument(..., help="the question / instruction"),
        model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="catalogue id, .gguf path or hf:<owner>/<repo>/<file>"),
        n: int = typer.Option(1, "--n", "-n", help="parallel samples, decoded in one batch"),
        max_tokens: int = typer.Option(256, "--max-tokens", "-b", help="token budget per sample"),
        temperature: Optional[float] = typer.Option(None, help="default: 0 (greedy) for n=1, 0.8 for n>1"),
        top_p: float = typer.Option(0.95, "--top-p"),
        seed: Optional[int] = typer.Option(None, help="makes sampling reproducible"),
        aggregate: str = typer.Option("majority", help="majority | none"),
        extractor: str = typer.Option("number", help="number | choice | yesno | code | text | regex:<pattern>"),
        stop: list[str] = typer.Option([], "--stop", help="stop sequence (repeatable)"),
        system: Optional[str] = typer.Option(None, help="system message"),
        threads: Optional[int] = typer.Option(None, help="CPU threads (default: physical cores)"),
        ctx: int = typer.Option(8192, "--ctx", help="context size in tokens, shared by prompt and all samples"),
        plan: Optional[str] = typer.Option(None, "--plan", help="plan file from `edgekit plan` (sets model, n, budget...)"),
        json_out: bool = typer.Option(False, "--json", help="print the whole Result as JSON"),
    ):
        """Answer PROMPT on this device; prints the answer, agreement and timings."""
        from edgekit.runtime.run import RunOptions, run_query

        opts = RunOptions(model=model, n=n, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                          aggregate=aggregate, extractor=extractor, stop=list(stop), system=system, threads=threads,
                          n_ctx=ctx, plan=plan)
        with PullProgress() as p:
            res = run_query(prompt, opts, progress=p)
        if json_out:
            return print_json(res)
        render_result(res)


def render_result(res) -> None:
    c, t = res.confidence, res.timings
    ans = res.answer if res.answer is not None else "(no answer extracted)"
    console.print(f"[bold]{ans}[/bold]")
    if res.text and res.text.strip() != str(res.answer).strip():
        console.print(f"[dim]{res.text.strip()}[/dim]")
    agree = f"agreement {c.votes}/{c.n}"
    if c.tied:
        agree += f" (tie between {', '.join(c.tied)}, broken at random)"
    if c.mean_logprob is not None:
        agree += f" · mean token logprob {c.mean_logprob:.2f} (p10 {c.low_logprob:.2f})"
    console.print(agree)
    dec = f"{t.decode_tok_s:.1f} tok/s aggregate" if t.decode_tok_s else "-"
    console.print(
        f"measured (1 run, wall clock): prefill {t.prefill_s:.2f} s ({t.prompt_tokens} tok) · decode {t.decode_s:.2f} s "
        f"({t.generated_tokens} tok over {res.n} samples, {dec}) · total {t.total_s:.2f} s · model load {t.load_s:.2f} s"
    )
    pred = res.extra.get("predicted_latency_s")
    if pred is not None:
        console.print(f"plan: predicted {pred:.2f} s ({res.extra.get('prediction_method', 'estimated')}), measured {t.total_s:.2f} s")
    for f in res.flags:
        console.print(f"[yellow]flag: {f}[/yellow]")
