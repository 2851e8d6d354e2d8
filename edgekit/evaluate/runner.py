"""`edgekit eval`: draw a sample pool per problem, judge it, and write the accuracy table.

For each problem: one batched call for N samples at the run's temperature plus one greedy
sample (temperature 0). Each sample is recorded with its extracted answer, correctness,
generated tokens and whether it finished by itself within ``max_tokens``; the accuracy
rows for every (budget, k, aggregation) follow exactly from that pool
(:mod:`edgekit.evaluate.estimators`).

Resumable: every finished problem is appended to ``<out>.partial.jsonl`` (first line: the
run settings, including ``task_sha256``, a hash over every selected problem's id, prompt and
target). A rerun with the same settings and the same problems skips those problems; with
different settings, or after the task's problems changed, it refuses (fix: ``--no-resume``).
A run that fails or is stopped before its first problem finishes removes its partial file, and
one that holds no finished problem never blocks a rerun. At the end the table is saved
atomically and the partial file removed.

Any engine works: the runner calls ``Runtime.generate(messages, SamplingOptions(...))`` and
reads ``Result.samples`` (text, tokens, finish reason, whether tokens were estimated).
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from edgekit.errors import BackendError, SchemaError, UsageError
from edgekit.evaluate.estimators import accuracy_rows, default_aggregations, default_budgets
from edgekit.evaluate.tasks import Problem, Task
from edgekit.figures import wilson
from edgekit.jsonio import append_jsonl
from edgekit.runtime import Runtime
from edgekit.runtime.aggregate import get_extractor as default_get_extractor
from edgekit.runtime.aggregate import quantile
from edgekit.runtime.confidence import rescore
from edgekit.schemas import __version__
from edgekit.schemas.checks import check_output_path
from edgekit.schemas.formats import answer_grammar
from edgekit.schemas.options import SamplingOptions
from edgekit.schemas.table import AccuracyTable, ProblemRecord, SampleRecord

PARTIAL_FORMAT = 1
Progress = Callable[[int, int, str], None]  # (problems done, problems total, problem id)


class EvalInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the eval. Still a KeyboardInterrupt; ``message`` says what was kept,
    ``kept`` how many problems are in the partial file ``partial`` (None: nothing was kept)."""

    def __init__(self, message: str, kept: int, partial: Path | None):
        super().__init__(message)
        self.message, self.kept, self.partial = message, kept, partial


def partial_path(out_path: str | Path) -> Path:
    p = Path(out_path)
    return p.with_name(p.name + ".partial.jsonl")


def problem_seed(seed: int, problem_id: str) -> int:
    """Per-problem sampling seed: stable across splits, resumes and machines."""
    return (seed * 1_000_003 + zlib.crc32(problem_id.encode())) % 2**31


def _read_partial(path: Path, settings: dict) -> tuple[dict[str, ProblemRecord], bool] | None:
    """Records already done and whether any used estimated token counts; refuses a partial run made
    for other settings or another task content. None: it holds no finished problem (a run that
    failed or was stopped before its first problem), so there is nothing to keep and it may be
    replaced whatever its settings."""
    lines = path.read_text(encoding="utf-8").split("\n")
    fix = f"rerun with the same settings to continue it, or start over with --no-resume (deletes {path.name})"
    try:
        header = json.loads(lines[0]).get("settings")
    except (json.JSONDecodeError, AttributeError):
        header = None
    done: dict[str, ProblemRecord] = {}
    estimated = False
    body = [ln for ln in lines[1:]]
    for i, ln in enumerate(body):
        if not ln.strip():
            continue
        try:
            d = json.loads(ln)
            rec = ProblemRecord.model_validate(d["problem"])
        except Exception as e:  # any damage: a torn last line is expected after a kill
            if all(not x.strip() for x in body[i + 1 :]):
                _rewrite(path, lines[: i + 1])  # drop the torn tail so appends stay line-aligned
                break
            raise SchemaError(
                f"partial run {path} line {i + 2} is damaged ({e})", fix=f"delete {path} or use --no-resume"
            ) from e
        done[rec.id] = rec
        estimated = estimated or bool(d.get("tokens_estimated"))
    if not done:
        return None
    if not isinstance(header, dict):
        raise SchemaError(f"partial run {path} has no settings header", fix=f"delete {path} or use --no-resume")
    if "task_sha256" in settings:
        had, now = header.get("task_sha256"), settings["task_sha256"]
        if had is None:
            raise UsageError(
                f"partial run {path} ({len(done)} problems done) records no hash of the task's problems, so "
                "they cannot be checked against the task as it is now",
                fix=f"start over with --no-resume (deletes {path.name})",
            )
        if had != now:
            raise UsageError(
                f"the task's problems changed since partial run {path} started ({len(done)} problems done; "
                f"task_sha256 {had[:12]}…, now {now[:12]}…): its records would be mixed with other problems",
                fix="restore the task file as it was to continue, or start over with --no-resume "
                f"(deletes {path.name})",
            )
    diff = [f"{k} {header.get(k)!r} (now {v!r})" for k, v in settings.items() if header.get(k) != v]
    if diff:
        raise UsageError(f"partial run {path} was made with different settings: {', '.join(diff)}", fix=fix)
    return done, estimated


def task_settings(
    task: Task,
    *,
    answer_format: str | None,
    temperature: float,
    top_p: float,
    n_samples: int,
    seed: int,
    max_tokens: int,
    greedy: bool,
) -> dict:
    """The resume settings known before a model loads: the task (with a hash of its problems) and
    the sampling. ``run_eval`` adds the model's and the backend's."""
    return {
        "task": task.name,
        "split": task.split,
        "prompt_template": task.prompt_template,
        "answer_format": answer_format,
        "temperature": temperature,
        "top_p": top_p,
        "n_samples": n_samples,
        "seed": seed,
        "max_tokens": max_tokens,
        "greedy": greedy,
        "task_sha256": task.sha256,
    }


def check_resume(out_path: str | Path, settings: dict) -> None:
    """Refuse, before any model loads, a partial run of ``out_path`` that cannot be continued with
    ``settings`` (a subset of the run's; see :func:`task_settings`)."""
    part = partial_path(out_path)
    if part.is_file():
        _read_partial(part, settings)


def _rewrite(path: Path, lines: list[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(ln + "\n" for ln in lines if ln.strip()), encoding="utf-8")
    tmp.replace(path)


def _records(
    task: Task, problem: Problem, res, max_tokens: int, extract, pool: ThreadPoolExecutor | None
) -> list[SampleRecord]:
    items = []
    for s in res.samples:
        answer = task.extract(s.text, problem, extract)
        finished = s.finish_reason == "stop"  # stopped by itself; the budget rule (within_budget) does the rest
        lp = s.logprobs
        feats = (round(sum(lp) / len(lp), 4), round(quantile(lp, 0.10), 4)) if lp else (None, None)
        sc = {k: None if v is None else round(v, 4) for k, v in rescore(s, answer, res.options).items()}
        items.append((answer, int(s.tokens), finished, (*feats, sc)))

    def judge(item) -> bool:
        answer, _, finished, _ = item
        return finished and answer is not None and task.is_correct(problem, answer)

    verdicts = list(pool.map(judge, items)) if pool else [judge(it) for it in items]
    return [
        SampleRecord(answer=a, correct=c, tokens=t, finished=f, mean_logprob=m, low_logprob=lo, **sc)
        for (a, t, f, (m, lo, sc)), c in zip(items, verdicts)
    ]


def _precise_enough(
    records: list[ProblemRecord], budgets: list[int], greedy: bool, verifier: bool, width: float
) -> bool:
    rows = accuracy_rows(records, budgets, None, default_aggregations(verifier, greedy))
    acc = np.array([r.accuracy for r in rows])
    lo, hi = wilson(acc, np.full(len(acc), len(records)))
    best = int(np.argmax(acc))
    near = hi >= lo[best]
    return bool(near.sum() == 1 or (hi[near] - lo[near]).max() <= width)


def run_eval(
    task: Task,
    rt: Runtime,
    *,
    model_id: str,
    out_path: str | Path,
    n_samples: int = 8,
    temperature: float = 0.8,
    top_p: float = 0.95,
    seed: int = 0,
    max_tokens: int = 256,
    sha256: str | None = None,
    quant: str | None = None,
    backend: str | None = None,
    greedy: bool = True,
    answer_format: str | None = None,
    budgets: list[int] | None = None,
    resume: bool = True,
    progress: Progress | None = None,
    get_extractor=None,
    target_width: float | None = None,
    batch: int = 10,
    time_limit_s: float | None = None,
) -> AccuracyTable:
    """Evaluate the runtime's engine on ``task`` (loaded and selected: ``load_task(name, template=...,
    split=..., limit=...)``) and save the accuracy table to ``out_path``.

    ``time_limit_s``: stop adding problems at the first multiple of ``batch`` done after this many
    seconds of this call (``edgekit deploy`` sizes its tune stage with it); the table covers the
    problems evaluated so far, as with ``target_width``.

    ``target_width`` (e.g. 0.10): add problems in batches of ``batch`` (in task order) until the
    95 % Wilson intervals of the configurations near the best (rows whose interval overlaps the
    most accurate row's) are all at most that wide, or the best separates from every other row;
    the table then covers the problems evaluated so far."""
    if target_width is not None and not 0 < target_width < 1:
        raise UsageError(f"target width must be in (0, 1), got {target_width}", fix="pass e.g. --target-width 10pts")
    grammar = answer_grammar(task.kind, answer_format) if answer_format else None  # fails closed on a bad format
    opts = SamplingOptions.build(
        n=n_samples,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        aggregate="none",
        extractor=None,
        grammar=grammar,
    )
    greedy_opts = opts.replace(n=1, temperature=0.0, top_p=1.0)
    budgets = sorted(set(budgets or default_budgets(max_tokens)))
    if budgets[0] < 1 or budgets[-1] > max_tokens:
        raise UsageError(
            f"budgets must lie in 1..max_tokens={max_tokens} (got {budgets})",
            fix=f"pass budgets between 1 and {max_tokens}, or raise max_tokens",
        )
    backend = backend or rt.engine.name
    extract = get_extractor or default_get_extractor
    settings = task_settings(
        task,
        answer_format=answer_format,
        temperature=temperature,
        top_p=top_p,
        n_samples=n_samples,
        seed=seed,
        max_tokens=max_tokens,
        greedy=greedy,
    )
    settings.update({"model_id": model_id, "model_sha256": sha256, "quant": quant, "backend": backend})
    out = check_output_path(out_path)
    part = partial_path(out)
    done: dict[str, ProblemRecord] = {}
    estimated = False
    resumed = _read_partial(part, settings) if part.exists() and resume else None
    if resumed is not None:
        done, estimated = resumed
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        _rewrite(part, [json.dumps({"format": PARTIAL_FORMAT, "settings": settings})])
    total = len(task.problems)
    t_start = time.monotonic()
    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) if task.has_verifier else None
    try:
        for problem in task.problems:
            if problem.id in done:
                continue
            ps = problem_seed(seed, problem.id)
            res = rt.generate(problem.messages(), opts.replace(seed=ps))
            if len(res.samples) != n_samples:
                raise BackendError(
                    f"asked for {n_samples} samples, the backend returned {len(res.samples)}",
                    fix="use an engine that returns every sample it is asked for (an OpenAI-compatible "
                    "server must honour n or answer one request per sample)",
                )
            samples = _records(task, problem, res, max_tokens, extract, pool)
            g = gres = None
            if greedy:
                gres = rt.generate(problem.messages(), greedy_opts.replace(seed=ps))
                g = _records(task, problem, gres, max_tokens, extract, None)[0]
            rec = ProblemRecord(
                id=problem.id,
                target=problem.target,
                prompt_tokens=int(res.timings.prompt_tokens),
                samples=samples,
                greedy=g,
            )
            est = any(smp.tokens_estimated for r in (res, gres) if r is not None for smp in r.samples)
            append_jsonl(part, {"problem": rec.model_dump(exclude_none=True), "tokens_estimated": est})
            done[rec.id] = rec
            estimated = estimated or est
            if progress:
                progress(len(done), total, problem.id)
            if time_limit_s is not None and len(done) % batch == 0 and time.monotonic() - t_start >= time_limit_s:
                break
            if (
                target_width is not None
                and len(done) % batch == 0
                and _precise_enough(
                    [done[p.id] for p in task.problems if p.id in done],
                    budgets,
                    greedy,
                    task.has_verifier,
                    target_width,
                )
            ):
                break
    except BaseException as e:
        if not done:  # nothing finished: a partial file would only block the next run (other settings, a fixed URL)
            part.unlink(missing_ok=True)
        if isinstance(e, KeyboardInterrupt):
            if not done:
                raise EvalInterrupted(
                    f"eval of {task.name} stopped before its first problem finished; nothing was saved", 0, None
                ) from e
            raise EvalInterrupted(
                f"eval of {task.name} stopped after {len(done)} of {total} problems; they are kept in {part}",
                len(done),
                part,
            ) from e
        raise
    finally:
        if pool:
            pool.shutdown()
    if len(done) < len(task.problems):  # stopped early (--target-width): the table covers the prefix evaluated
        task = task.select(None, sum(1 for p in task.problems if p.id in done))
        settings["task_sha256"] = task.sha256
    records = [done[p.id] for p in task.problems]
    table = AccuracyTable(
        edgekit_version=__version__,
        task=task.name,
        split=task.split,
        model_id=model_id,
        model_sha256=sha256,
        quant=quant,
        backend=backend + (" (tokens estimated)" if estimated else ""),
        prompt_template=task.prompt_template,
        answer_format=answer_format,
        task_sha256=settings["task_sha256"],
        task_file_sha256=task.source_sha256,
        temperature=temperature,
        top_p=top_p,
        n_samples=n_samples,
        seed=seed,
        max_tokens=max_tokens,
        n_problems=len(records),
        prompt_tokens_mean=sum(r.prompt_tokens for r in records) / len(records),
        has_verifier=task.has_verifier,
        rows=accuracy_rows(records, budgets, None, default_aggregations(task.has_verifier, greedy)),
        problems=records,
    )
    table.save(out)
    part.unlink(missing_ok=True)
    return table
