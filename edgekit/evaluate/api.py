"""`evaluate()`: what `edgekit eval` calls -- load the engine (a local model, an OpenAI-compatible
server, or any registered engine) behind a Runtime and run the resumable evaluation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from edgekit import engines
from edgekit.errors import UsageError
from edgekit.evaluate.humaneval import FIX, sandbox_status
from edgekit.evaluate.replay import add_stop_rows
from edgekit.evaluate.runner import Progress, check_resume, run_eval, task_settings
from edgekit.evaluate.tasks import load_task
from edgekit.host.threads import check_threads as check_usable_threads
from edgekit.runtime import Runtime
from edgekit.schemas.checks import check_base_url, check_output_path, check_threads
from edgekit.schemas.formats import check_format
from edgekit.schemas.options import SamplingOptions
from edgekit.schemas.table import AccuracyTable


def default_output(
    task: str, model: str, template: str | None, temperature: float, answer_format: str | None = None
) -> Path:
    safe = lambda s: "".join(c if c.isalnum() or c in ".-_" else "_" for c in s)
    name = safe(Path(model).stem if model.endswith(".gguf") else model)
    fmt = "+" + safe(answer_format) if answer_format else ""
    return Path("tables") / f"{safe(task)}--{name}--{template or 'default'}{fmt}--t{temperature:g}.json"


def evaluate(
    task: str,
    model: str,
    *,
    backend: str = "llama.cpp",
    base_url: str | None = None,
    api_key: str | None = None,
    out_path: str | Path | None = None,
    n_samples: int = 8,
    temperature: float = 0.8,
    top_p: float = 0.95,
    seed: int = 0,
    max_tokens: int = 256,
    limit: int | None = None,
    split: str | None = None,
    template: str | None = None,
    threads: int | None = None,
    resume: bool = True,
    progress: Progress | None = None,
    runtime: Runtime | None = None,
    answer_format: str | None = None,
    allow_code_execution: bool = False,
    notice: Callable[[str], None] | None = None,
    target_width: float | None = None,
    batch: int = 10,
    stop_rules: Sequence[str] = (),
    time_limit_s: float | None = None,
) -> AccuracyTable:
    """``backend``: a registered engine name (``llama.cpp``, ``openai``, or a plugin's).

    Every argument is checked before a model loads or any problem runs: sampling values, threads,
    the task, the answer format, the output path, whether a partial run of ``out_path`` can be
    continued (same settings, same problems), the engine and its URL, and (code tasks) the sandbox.
    ``notice`` gets one line about how model-written code runs, once all of that passed."""
    SamplingOptions.build(n=n_samples, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)
    for rule in stop_rules:  # a misspelt rule fails here, before a model loads
        SamplingOptions.build(n=n_samples, stop_rule=rule)
    check_threads(threads)
    check_usable_threads(threads)
    t = load_task(task, template=template, split=split, limit=limit)  # bad task -> clear error before loading a model
    if answer_format:
        check_format(answer_format, t.kind)
    out = check_output_path(out_path if out_path else default_output(task, model, template, temperature, answer_format))
    name = engines.canonical(backend)
    # the settings a resumed run must share with the partial table are the ones this run uses
    sampling = dict(n_samples=n_samples, temperature=temperature, top_p=top_p, seed=seed, max_tokens=max_tokens)
    if resume:
        check_resume(out, task_settings(t, answer_format=answer_format, greedy=True, **sampling))
    own = runtime is None
    if runtime is None:
        engines.get(name)  # unknown engine -> the list of registered ones, before anything loads
        if base_url is not None:
            check_base_url(base_url)
            if name == "llama.cpp":
                raise UsageError(
                    "--base-url applies to a server engine (--engine openai), not to llama.cpp, which runs "
                    "the model in this process",
                    fix="add --engine openai, or drop --base-url",
                )
    if t.has_verifier:  # model-written code runs: in a sandbox, or only when the user says so
        ok, desc = sandbox_status()
        if not ok and not allow_code_execution:
            raise UsageError("refusing to run model-written code without a sandbox", fix=FIX)
        t.allow_unsandboxed = allow_code_execution
    if runtime is None:
        kw = {"base_url": base_url, "api_key": api_key} if name == "openai" else {}
        runtime = Runtime(
            model,
            engine=name,
            threads=threads,
            n_ctx=max(4096, 1024 + n_samples * max_tokens),
            max_n=max(n_samples, 1),
            **kw,
        )
    if t.has_verifier and notice:  # once the model loaded: a bad argument's error stays the only line on stderr
        notice(f"code execution: {sandbox_status()[1]}")
    rt = runtime
    label = getattr(rt.engine, "label", rt.engine.name)
    try:
        table = run_eval(
            t,
            rt,
            model_id=rt.model_id,
            out_path=out,
            sha256=rt.model_info.sha256,
            quant=rt.model_info.quant,
            backend=label,
            resume=resume,
            progress=progress,
            answer_format=answer_format,
            target_width=target_width,
            batch=batch,
            time_limit_s=time_limit_s,
            **sampling,
        )
    finally:
        if own:
            rt.close()
    if stop_rules:  # replayed stopping-rule rows (edgekit.evaluate.replay), saved with the table
        table = add_stop_rows(table, stop_rules)
        table.save(out)
    return table
