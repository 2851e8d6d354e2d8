"""`edgekit calibrate`: run the local configuration on a labelled calibration set, record each
query's confidence scores and correctness, and choose the offload threshold (Learn-then-Test for
a risk guarantee; the conformal quantile for an offload budget alone). Saved into the plan.

Resumable: each finished query is appended to ``<plan>.calibration.partial.jsonl`` (first line:
the settings, including a hash of the calibration problems); a rerun continues it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.calibrate import (
    FIT_MIN,
    check_disjoint,
    check_fit_size,
    choose_score,
    conformal_offload_threshold,
    ltt_threshold,
    min_calibration_size,
    selection_split,
)
from edgekit.engines.openai import OpenAIEngine
from edgekit.errors import FetchError, UsageError
from edgekit.evaluate.tasks import load_task
from edgekit.figures import measured
from edgekit.jsonio import append_jsonl, read_records, save_atomic
from edgekit.runtime import Runtime
from edgekit.runtime.query import check_plan_model
from edgekit.runtime.routing import score_of
from edgekit.schemas.offload import SCORES, SINGLE_SCORES, OffloadCalibration
from edgekit.schemas.options import SamplingOptions
from edgekit.schemas.plan import CloudRef, load_plan

Progress = Callable[[int, int], None]


@dataclass
class CalibrationRun:
    plan_path: str
    task: str
    alpha: float | None = None
    delta: float | None = None
    offload_budget: float | None = None
    # a SINGLE_SCORES name; "auto": chosen (or fitted, "combined") on a fit split, calibrated on the rest;
    # None: auto when the set is large enough for both splits, else vote_share (n > 1) / answer_logprob (n = 1)
    score: str | None = None
    fit_fraction: float = 0.4  # auto: share of the labelled problems that choose / fit the score
    split: str | None = None
    limit: int | None = None
    cloud_url: str | None = None
    cloud_model: str | None = None
    output: str | None = None  # default: the plan file itself (written atomically)
    threads: int | None = None
    seed: int = 0
    records: list[dict] = field(default_factory=list)


def check_offload_settings(alpha: float | None, delta: float | None, offload_budget: float | None) -> None:
    """The risk levels (alpha and delta together, each in (0, 1)) and the offload budget (in [0, 1])."""
    if (alpha is None) != (delta is None):
        raise UsageError("--alpha and --delta go together", fix="pass both, e.g. --alpha 0.1 --delta 0.05")
    for name, v in (("alpha", alpha), ("delta", delta)):
        if v is not None and not 0 < v < 1:
            raise UsageError(f"--{name} must be in (0, 1), got {v}", fix=f"pass e.g. --{name} 0.1")
    if offload_budget is not None and not 0 <= offload_budget <= 1:
        raise UsageError(
            f"--offload-budget must be in [0, 1], got {offload_budget}", fix="pass e.g. --offload-budget 0.2"
        )


def _check_settings(c: CalibrationRun) -> None:
    if c.alpha is None and c.offload_budget is None:
        raise UsageError(
            "nothing to calibrate for", fix="pass --alpha A --delta D (risk guarantee) and/or --offload-budget B"
        )
    check_offload_settings(c.alpha, c.delta, c.offload_budget)
    if c.score is not None and c.score not in SCORES:
        raise UsageError(f"unknown score {c.score!r}", fix=f"use one of {', '.join(SCORES)}")
    if c.score == "combined":
        raise UsageError("a combined score is fitted, not named", fix="pass --score auto (fits it on a split)")


def _problems_hash(problems) -> str:
    h = hashlib.sha256()
    for p in problems:
        h.update(json.dumps([p.id, p.prompt, p.target]).encode())
    return h.hexdigest()


def _load_partial(path: Path, settings: dict) -> dict[str, dict]:
    if not path.exists():
        return {}
    head, done = read_records(path)
    if head is None or head.get("settings") != settings:
        raise UsageError(
            f"{path} holds a calibration run with other settings or problems",
            fix=f"delete {path} to start over, or rerun with the same plan, task and split",
        )
    return done


def _cloud(c: CalibrationRun, plan) -> OpenAIEngine | None:
    url = c.cloud_url or (plan.cloud.base_url if plan.cloud else None)
    if not url:
        return None
    model = c.cloud_model or (plan.cloud.model if plan.cloud else None)
    if not model:
        raise UsageError("the cloud needs a model name", fix="pass --cloud-model NAME")
    eng = OpenAIEngine(model, base_url=url, max_retries=1)
    try:  # reachable now? (one token) -- fail before hours of local work, not after
        list(eng.generate([{"role": "user", "content": "hi"}], SamplingOptions(max_tokens=1)))
    except FetchError as e:
        eng.close()
        raise UsageError(
            f"the cloud is unreachable at calibration time: {e.message}",
            fix="start the server / check --cloud-url, or calibrate without --cloud-url",
        ) from None
    return eng


def calibrate(c: CalibrationRun, progress: Progress | None = None) -> tuple[OffloadCalibration, Path]:
    _check_settings(c)
    plan = load_plan(c.plan_path)
    # the problems rendered with the plan's template: the same prompts its accuracy table measured
    task = load_task(c.task, template=plan.chosen.prompt_template, split=c.split, limit=c.limit)
    n = len(task.problems)
    need = min_calibration_size(c.alpha, c.delta) if c.alpha is not None else 1
    n_cal = n - int(round(c.fit_fraction * n)) if c.score == "auto" else n
    if n_cal < need:
        raise UsageError(
            f"the calibration set has {n_cal} labelled problems"
            + (f" after the fitting split ({n - n_cal})" if c.score == "auto" else "")
            + f"; alpha={c.alpha}, delta={c.delta} need at least {need}",
            fix="use more problems (--split/--limit) or a larger alpha/delta",
        )
    model = plan.planned_model()
    check_plan_model(plan, model)
    cloud = _cloud(c, plan)
    opts = plan.chosen.options.replace(seed=c.seed)
    if c.score == "p_true" or (c.score in (None, "auto") and c.alpha is not None):
        opts = opts.replace(self_check=True)  # P(True) is a candidate: one prefill per query, timed
    settings = {
        "plan_model": model,
        "model_sha256": plan.chosen.model_sha256,
        "options": opts.model_dump(mode="json"),
        "task": task.name,
        "split": task.split,
        "problems_sha256": _problems_hash(task.problems),
        "cloud": cloud.label if cloud else None,
    }
    out = Path(c.output or c.plan_path)
    part = out.with_name(out.name + ".calibration.partial.jsonl")
    done = _load_partial(part, settings)
    if not part.exists():
        part.write_text(json.dumps({"settings": settings}) + "\n", encoding="utf-8")
    with Runtime(model, threads=c.threads, max_n=opts.n, n_ctx=max(2048, 1024 + opts.n * opts.max_tokens)) as rt:
        cloud_rt = Runtime(cloud) if cloud else None
        try:
            for p in task.problems:
                if p.id in done:
                    continue
                r = rt.generate(p.messages(), opts)
                rec: dict[str, Any] = {
                    "id": p.id,
                    "answer": r.answer,
                    "correct": task.is_correct(p, r.answer),
                    **{s: score_of(r, s) for s in SINGLE_SCORES},
                    "latency_s": r.timings.total_s,
                    "self_check_s": r.timings.self_check_s,
                }
                if cloud_rt is not None:
                    cr = cloud_rt.generate(p.messages(), opts.replace(n=1, temperature=0.0, self_check=False))
                    rec["cloud_correct"] = task.is_correct(p, cr.answer)
                append_jsonl(part, rec)
                done[p.id] = rec
                if progress:
                    progress(len(done), n)
        finally:
            if cloud_rt is not None:
                cloud_rt.close()
    records = [done[p.id] for p in task.problems]
    cal, extra = choose(records, c, n_samples=opts.n)
    d = {**cal.to_dict(), **extra}
    step = max(1, len(d["curve"]) // 200)  # a plan keeps at most ~200 curve points
    d["curve"] = [pt for i, pt in enumerate(d["curve"]) if i % step == 0 or pt["threshold"] == d["threshold"]]
    cal_model = OffloadCalibration(**d, model_sha256=plan.chosen.model_sha256)
    checks = [float(r["self_check_s"]) for r in records if r.get("self_check_s")]
    if cal_model.reads_p_true() and checks:  # every local answer will pay the self-check: the runtime adds it
        cal_model.self_check_s = measured(checks, "s", source="P(True) self-check prefill, one per calibration query")
    new = plan.model_copy(
        update={
            "offload": cal_model,
            "cloud": CloudRef(
                base_url=cloud.base_url if cloud else (plan.cloud.base_url if plan.cloud else None),
                model=cloud.model if cloud else (plan.cloud.model if plan.cloud else None),
                latency_s=(
                    cloud.latency.p95()
                    if cloud and cloud.latency.count
                    else (plan.cloud.latency_s if plan.cloud else None)
                ),
            ),
        }
    )
    path = save_atomic(new, out, "plan")
    part.unlink(missing_ok=True)
    c.records = records
    return cal_model, path


def _column(records: list[dict], name: str) -> list[float]:
    # no answer -> below every real score (the runtime always offloads those: only less risk)
    vals = [float(r[name]) for r in records if r.get(name) is not None]
    floor = (min(vals) if vals else 0.0) - 1.0
    return [floor if r.get(name) is None else float(r[name]) for r in records]


def _fit(records: list[dict], ids: list[str], seed: int):
    """Choose (or fit) the score on the fitting records: the single scores every answered record
    carries, and their logistic combination when it beats them out of fold."""
    answered = [r for r in records if r["answer"] is not None]
    check_fit_size([bool(r["correct"]) for r in answered])
    names = [nm for nm in SINGLE_SCORES if all(r.get(nm) is not None for r in answered)]
    names = [nm for nm in names if len({r[nm] for r in answered}) > 1]  # a constant says nothing
    if not names:
        raise UsageError("no confidence score varies over the fitting split", fix="name one score with --score")
    X = np.array([[float(r[nm]) for nm in names] for r in answered])
    choice = choose_score(X, [bool(r["correct"]) for r in answered], names, seed=seed)
    choice.fit_ids = list(ids)  # type: ignore[attr-defined]
    return choice


def choose(records: list[dict], c: CalibrationRun, n_samples: int = 1):
    """(calibration, what fitted it): the score (named; or chosen on a fit split) and the threshold
    on the calibration records."""
    n = len(records)
    auto = c.score == "auto"
    if c.score is None:  # auto when both splits are big enough; never a choice made on the calibration rows
        need = min_calibration_size(c.alpha, c.delta) if c.alpha is not None else 1
        auto = n - int(round(c.fit_fraction * n)) >= need and int(round(c.fit_fraction * n)) >= FIT_MIN
    fit_split = cal_split = None
    weights = features = why = None
    n_fit = 0
    if auto:
        fit_i, cal_i = selection_split(n, fraction=c.fit_fraction, seed=c.seed)
        fit_recs, cal_recs = [records[i] for i in fit_i], [records[i] for i in cal_i]
        choice = _fit(fit_recs, [r["id"] for r in fit_recs], c.seed)
        check_disjoint(choice.fit_ids, [r["id"] for r in cal_recs])
        name, why, n_fit = choice.name, choice.reason, len(fit_recs)
        fit_split = f"{n_fit} of {n} problems (random, seed {c.seed}): ids " + ",".join(r["id"] for r in fit_recs[:8])
        fit_split += "..." if n_fit > 8 else ""
        cal_split = f"the other {len(cal_recs)} problems"
        if choice.weights is not None:
            weights, features = [float(w) for w in choice.weights], list(choice.names)
            vals = [
                score_of(_AsResult(r), "combined", weights, features) if r["answer"] is not None else None
                for r in cal_recs
            ]
            col = _column([{"v": v} for v in vals], "v")
        else:
            col = _column(cal_recs, name)
        records = cal_recs
    else:
        name = c.score or _fallback_score(records, n_samples)
        col = _column(records, name)
    correct = [bool(r["correct"]) for r in records]
    cloud = [bool(r["cloud_correct"]) for r in records] if records and "cloud_correct" in records[0] else None
    if c.alpha is not None:
        cal = ltt_threshold(
            col, correct, c.alpha, c.delta, score_name=name, cloud_correct=cloud, max_offload=c.offload_budget
        )
    else:
        cal = conformal_offload_threshold(col, c.offload_budget, score_name=name, cloud_correct=cloud, correct=correct)
    return cal, {
        "weights": weights,
        "features": features,
        "fit_split": fit_split,
        "n_fit": n_fit,
        "calibration_split": cal_split or f"all {n} problems",
        "score_choice": why,
    }


class _AsResult:
    """A calibration record seen as a Result (its answer and confidence) for score_of."""

    def __init__(self, rec: dict):
        from edgekit.schemas.result import Confidence

        self.answer = rec["answer"]
        ent = rec.get("low_entropy")
        ans = rec.get("answered")
        self.confidence = Confidence(
            **{k: rec.get(k) for k in SINGLE_SCORES if k not in ("low_entropy", "answered")},
            answer_entropy=None if ent is None else -ent,
            no_answer_share=None if ans is None else 1.0 - ans,
        )


def _fallback_score(records: list[dict], n_samples: int) -> str:
    """The score taken when the set is too small to fit one: vote share for a vote; for one sample
    DeepConf's group confidence when the records carry it (the best single score on average over
    benchmarks/offload_eval.py's three tasks: APGR 0.54 against answer_logprob's 0.37), else the
    answer span's log-probability."""
    if n_samples > 1:
        return "vote_share"
    return "group_conf" if any(r.get("group_conf") is not None for r in records) else "answer_logprob"
