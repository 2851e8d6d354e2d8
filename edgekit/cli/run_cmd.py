"""`edgekit run PROMPT`: answer one query with n samples decoded in one batch."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from edgekit.cli.options import CloudModel, CloudUrl, Engine, GpuLayers, Model, Offload, Priority, Threads
from edgekit.cli.output import PullProgress, console, err_console, print_json
from edgekit.errors import UsageError
from edgekit.host.threads import set_priority
from edgekit.schemas.checks import check_text
from edgekit.schemas.options import SamplingOptions

_D = SamplingOptions.model_fields


def _json_arg(value: str, what: str) -> Any:
    """Inline JSON or a path to a JSON file."""
    fix = f"pass {what} as inline JSON or a path to a JSON file"
    shown = repr(value[:60])
    p = Path(value)
    inline = value.lstrip().startswith(("{", "["))
    if not inline and p.is_dir():
        raise UsageError(f"{what} {shown} is a directory", fix=fix)
    if not inline and p.is_file():
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read {what} file {shown}: {e}", fix=fix) from None
        where = f"file {shown}"
    else:
        text, where = check_text(value, what), shown
    try:
        return json.loads(text)
    except ValueError as e:
        if not inline and not p.exists():
            raise UsageError(f"{what} {shown} is neither inline JSON nor an existing file", fix=fix) from None
        raise UsageError(f"{what} {where} is not valid JSON ({e})", fix=fix) from None


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(
        prompt: str = typer.Argument(..., help="the question / instruction"),
        model: Model = None,
        n: int | None = typer.Option(
            None, "--n", "-n", help=f"parallel samples, decoded in one batch [default: {_D['n'].default}]"
        ),
        max_tokens: int | None = typer.Option(
            None, "--max-tokens", "-b", help=f"token budget per sample [default: {_D['max_tokens'].default}]"
        ),
        temperature: float | None = typer.Option(None, help="default: 0 (greedy) for n=1, 0.8 for n>1"),
        top_p: float | None = typer.Option(None, "--top-p", help=f"[default: {_D['top_p'].default}]"),
        seed: int | None = typer.Option(None, help="makes sampling reproducible"),
        aggregate: str | None = typer.Option(None, help="majority | none [default: majority]"),
        extractor: str | None = typer.Option(
            None, help="number | choice | yesno | code | text | json | regex:<pattern> [default: number]"
        ),
        stop_rule: str | None = typer.Option(
            None,
            "--stop-rule",
            help="stop the vote early: none | decided (exact) | beta:<c> | adaptive:<n0>,<n_max>[,<c>] "
            "[default: the plan's, else none]",
        ),
        stop: list[str] | None = typer.Option(None, "--stop", help="stop sequence (repeatable)"),
        system: str | None = typer.Option(None, help="system message"),
        deadline: float | None = typer.Option(
            None, "--deadline", help="seconds; unfinished samples are cancelled after it"
        ),
        json_schema: str | None = typer.Option(
            None, "--json-schema", help="constrain every sample to this JSON schema (inline or a file)"
        ),
        grammar: str | None = typer.Option(
            None, "--grammar", help="constrain every sample to this GBNF grammar (a file)"
        ),
        engine: Engine = "llama.cpp",
        base_url: str | None = typer.Option(
            None,
            "--base-url",
            help="openai engine: the server, e.g. http://127.0.0.1:8080/v1 (key: EDGEKIT_CLOUD_API_KEY)",
        ),
        cloud_url: CloudUrl = None,
        cloud_model: CloudModel = None,
        offload: Offload = None,
        score: str | None = typer.Option(
            None,
            "--score",
            help="offload score: vote_share | answer_logprob | low_entropy | p_true | ... (docs/offload.md)",
        ),
        threshold: float | None = typer.Option(
            None,
            "--threshold",
            help="keep local iff score >= threshold (default: the plan's calibrated one; "
            "else a default with no guarantee)",
        ),
        self_check: bool = typer.Option(
            False,
            "--self-check",
            help="also score the answer by P(True): one extra prefill, timed "
            "(automatic when the offload score needs it)",
        ),
        threads: Threads = None,
        priority: Priority = "normal",
        gpu_layers: GpuLayers = None,
        ctx: int = typer.Option(8192, "--ctx", help="context size in tokens, shared by prompt and all samples"),
        plan: str | None = typer.Option(
            None, "--plan", help="plan file from `edgekit plan` (sets model, prompt, n, budget...)"
        ),
        json_out: bool = typer.Option(False, "--json", help="print the whole Result as JSON"),
    ):
        """Answer PROMPT on this device; prints the answer, agreement and timings."""
        from edgekit.runtime.query import Query, check_query, run_query

        check_text(prompt, "the prompt")
        check_text(system, "--system")
        for one in stop or []:
            check_text(one, "--stop")
        given = {
            "n": n,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "seed": seed,
            "aggregate": aggregate,
            "extractor": extractor,
            "stop": list(stop) if stop else None,
            "system": system,
            "deadline_s": deadline,
            "stop_rule": stop_rule,
            "self_check": True if self_check else None,
        }
        if json_schema is not None:
            given["json_schema"] = _json_arg(json_schema, "--json-schema")
            if given["extractor"] not in (None, "json"):
                raise UsageError(
                    f"--extractor {extractor} does not apply with --json-schema: the answer is the sample's "
                    "parsed JSON",
                    fix="drop --extractor (or pass --extractor json)",
                )
            given["extractor"] = "json"
        if grammar is not None:
            try:
                given["grammar"] = Path(grammar).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise UsageError(
                    f"cannot read grammar file {grammar}: {e}", fix="pass --grammar PATH to a GBNF file"
                ) from None
        explicit = {k: v for k, v in given.items() if v is not None}
        SamplingOptions.build(**explicit)  # bad values fail here, before any model loads
        q = Query(
            prompt=prompt,
            model=model,
            options=explicit,
            plan=plan,
            engine=engine,
            threads=threads,
            n_ctx=ctx,
            gpu_layers=gpu_layers,
            engine_options={"base_url": base_url} if base_url is not None else {},
            cloud_url=cloud_url,
            cloud_model=cloud_model,
            offload=offload,
            score=score,
            threshold=threshold,
        )
        set_priority(priority)  # before any thread starts: llama.cpp's threads inherit it
        check_query(q)  # threads, context, engine, --base-url, cloud options: before any model loads
        with PullProgress() as p:
            res = run_query(q, progress=p, warn=lambda msg: print(f"warning: {msg}", file=sys.stderr, flush=True))
        if json_out:
            return print_json(res)
        render_result(res)


def render_result(res) -> None:
    c, t = res.confidence, res.timings
    ans = res.answer if res.answer is not None else "(no answer extracted)"
    console.print(f"[bold]{ans}[/bold]", markup=True, highlight=False)
    if res.text and res.text.strip() != str(res.answer).strip():
        console.print(f"[dim]{res.text.strip()}[/dim]", highlight=False)
    agree = f"agreement {c.votes}/{c.n}"
    if c.tied:
        agree += f" (tie between {', '.join(c.tied)}, broken at random)"
    if c.mean_logprob is not None:
        agree += f" · mean token logprob {c.mean_logprob:.2f} (p10 {c.low_logprob:.2f})"
    console.print(agree)
    extra = [
        f"{label} {v:.2f}"
        for label, v in (
            ("answer logprob", c.answer_logprob),
            ("group conf", c.group_conf),
            ("tail conf", c.tail_conf),
            ("answer entropy", c.answer_entropy),
        )
        if v is not None
    ]
    if c.p_true is not None:
        extra.append(f"P(True) {c.p_true:.2f}" + (f" (self-check {t.self_check_s:.2f} s)" if t.self_check_s else ""))
    if extra:
        console.print("confidence: " + " · ".join(extra), highlight=False)
    st = res.stopping
    if st is not None:
        what = (
            f"stopped the vote after {st.counted} of {res.n} samples (the rest cancelled)"
            if st.stopped
            else f"all {st.counted} samples counted"
        )
        grown = (
            f"; started {st.started} ({'grew' if st.grown else 'no growth'})" if st.rule.startswith("adaptive") else ""
        )
        console.print(f"stop rule {st.rule}: {what}{grown}")
    dec = f"{t.decode_tok_s:.1f} tok/s aggregate" if t.decode_tok_s else "-"
    console.print(
        f"measured (1 run, wall clock): prefill {t.prefill_s:.2f} s ({t.prompt_tokens} tok) · "
        f"decode {t.decode_s:.2f} s ({t.generated_tokens} tok over {res.n} samples, {dec}) · "
        f"total {t.total_s:.2f} s · model load {t.load_s:.2f} s"
    )
    pred = res.extra.get("predicted_latency_s")
    if pred is not None:
        console.print(
            f"plan: predicted p{res.extra.get('prediction_percentile', 50)} {pred:.2f} s "
            f"({res.extra.get('prediction_method', 'estimated')}), measured {t.total_s:.2f} s"
        )
    if res.offload is not None:
        o = res.offload
        cloud = f" · cloud {o.cloud_s:.2f} s" if o.cloud_s is not None else ""
        console.print(f"source: {res.source} ({o.reason}){cloud}", highlight=False)
    for note in res.extra.get("notes", []):
        err_console.print(f"note: {note}", highlight=False, soft_wrap=True)
    for f in res.flags:
        console.print(f"[yellow]flag: {f}[/yellow]")
