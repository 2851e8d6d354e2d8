"""The verify stage of `edgekit deploy`: run the chosen plan on problems it has never seen, exactly as
`edgekit run --plan` would (its model, prompt and options), and set the measurement next to what the
plan predicted.

* Accuracy: the plan's table figure is the best of many noisy estimates, so the prediction is centred on
  it less the plan's own optimism estimate (a bootstrap of the maximum), with a 95 % *prediction*
  interval for ``m`` new problems: the table's sampling error and the verify set's, added
  (``p(1-p)(1/n_table + 1/m)``). A measurement outside it contradicts the prediction and is flagged.
* Latency: the measured p50 against the predicted p50 and its interval; the measured p95 against the
  interval's upper end (what the plan uses as p95).
* Offload (a calibrated plan with a reachable cloud): queries under the threshold go to the cloud -- after
  every local query has run, so that a cloud server on the same machine (a test set-up) never shares a local
  timing; the routing depends only on the local score, so the result is the same. The measured offload rate
  and end-to-end accuracy are reported next to the calibration's.

Resumable: each finished problem is appended to ``DIR/verify.partial.jsonl`` (first line: settings).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.evaluate.runner import problem_seed
from edgekit.evaluate.tasks import Task, load_task
from edgekit.figures import wilson
from edgekit.jsonio import append_jsonl, read_records
from edgekit.runtime import Runtime
from edgekit.runtime.routing import score_of
from edgekit.schemas.plan import PlanFile

LATENCY_TOLERANCE = 0.15  # the goal: measured p50 within 15 % of the prediction


@dataclass
class VerifyRun:
    plan: PlanFile
    task: str
    split: str
    min_problems: int
    time_limit_s: float
    records_path: Path
    cloud: Runtime | None = None  # over the cloud's engine (OpenAI-compatible): offloaded queries go there
    threads: int | None = None
    seed: int = 0
    cloud_s_each: float = 0.0  # expected cloud seconds per local query (offload rate x cloud latency): kept free


def _settings(v: VerifyRun, task: Task) -> dict:
    """What the records depend on, the problems' own text included: an edited task file is measured again."""
    c = v.plan.chosen
    off = v.plan.offload
    return {
        "model": v.plan.planned_model(),
        "model_sha256": c.model_sha256,
        "options": c.options.model_dump(mode="json"),
        "template": c.prompt_template,
        "task": v.task,
        "split": v.split,
        "problems_sha256": task.sha256,
        "seed": v.seed,
        "threshold": None if off is None or v.cloud is None else [off.score, off.threshold],
    }


def _done(path: Path, settings: dict) -> dict[str, dict]:
    """Records of an earlier run with the same settings; anything else is discarded (it is re-measured)."""
    if not path.exists():
        return {}
    head, done = read_records(path)
    return done if head is not None and head.get("settings") == settings else {}


def run_verify(v: VerifyRun, progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Run the plan on the verify split until it is done, or the time limit has passed and at least
    ``min_problems`` are in. Returns one record per problem run."""
    c = v.plan.chosen
    task = load_task(v.task, template=c.prompt_template, split=v.split)
    settings = _settings(v, task)
    done = _done(v.records_path, settings)
    if not done:
        v.records_path.write_text(json.dumps({"settings": settings}) + "\n", encoding="utf-8")
    opts = c.options
    cal = v.plan.offload if v.cloud is not None else None
    cloud_opts = opts.replace(n=1, temperature=0.0, aggregate="majority", stop_rule=None)
    total = len(task.problems)
    t0 = time.monotonic()
    with Runtime(
        v.plan.planned_model(), threads=v.threads, max_n=opts.n, n_ctx=max(2048, 1024 + opts.n * opts.max_tokens)
    ) as rt:
        rt.generate(task.problems[0].messages(), opts.replace(max_tokens=1, n=1, stop_rule=None))  # warm-up, untimed
        for p in task.problems:
            if p.id in done:
                continue
            if len(done) >= v.min_problems and time.monotonic() - t0 + len(done) * v.cloud_s_each >= v.time_limit_s:
                break
            r = rt.generate(p.messages(), opts.replace(seed=problem_seed(v.seed, p.id)))
            rec = {
                "id": p.id,
                "answer": r.answer,
                "correct": task.is_correct(p, r.answer),
                "latency_s": r.timings.total_s,
            }
            if cal is not None:
                s = score_of(r, cal.score, cal.weights)
                rec["score"] = s
                rec["offloaded"] = s is None or s < cal.threshold
            append_jsonl(v.records_path, rec)
            done[p.id] = rec
            if progress:
                progress(len(done), total)
    if cal is not None:  # the cloud after every local query: its server's threads never share a local timing
        ask = [p for p in task.problems if p.id in done and done[p.id]["offloaded"] and "cloud_s" not in done[p.id]]
        for p in ask:
            rec = done[p.id]
            t1 = time.perf_counter()
            try:
                cr = v.cloud.generate(p.messages(), cloud_opts)
                rec["cloud_correct"] = task.is_correct(p, cr.answer)
            except Exception as e:  # a failing cloud: the local answer stands, as in `run`
                rec["cloud_error"] = f"{type(e).__name__}: {e}"[:200]
            rec["cloud_s"] = time.perf_counter() - t1
            append_jsonl(v.records_path, rec)  # the later line of an id replaces the earlier one
    return [done[p.id] for p in task.problems if p.id in done]


def prediction_interval(p: float, n_table: int, m: int, z: float = 1.96) -> tuple[float, float]:
    """95 % prediction interval of the accuracy measured on ``m`` new problems, when ``p`` was estimated on
    ``n_table``: both samples' binomial error (p kept off 0 and 1 by half a problem)."""
    q = min(max(p, 0.5 / n_table), 1 - 0.5 / n_table)
    w = z * math.sqrt(q * (1 - q) * (1 / n_table + 1 / m))
    return max(0.0, p - w), min(1.0, p + w)


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q))


def summarize(records: list[dict], plan: PlanFile, n_table: int) -> dict:
    """Measured against predicted, with the intervals and which predictions the measurement contradicts."""
    m = len(records)
    pr = plan.predicted
    acc = sum(bool(r["correct"]) for r in records) / m
    lo_m, hi_m = wilson(np.array([acc]), np.array([m]))
    optimism = pr.accuracy_optimism or 0.0
    centre = max(0.0, pr.accuracy - optimism)
    lo, hi = prediction_interval(centre, n_table, m)
    lat = [float(r["latency_s"]) for r in records]
    p50, p95 = statistics.median(lat), _pct(lat, 95)
    p50_pred = float(pr.latency_s.value)
    out = {
        "problems": m,
        "acc": acc,
        "acc_lo": float(lo_m[0]),
        "acc_hi": float(hi_m[0]),
        "acc_table": pr.accuracy,
        "acc_optimism": optimism,
        "acc_pred": centre,
        "acc_pred_lo": lo,
        "acc_pred_hi": hi,
        "acc_pred_how": (
            f"table {pr.accuracy:.1%} on {n_table} tune problems"
            + (f" less the selection optimism {optimism:.1%} ({pr.accuracy_optimism_how})" if optimism else "")
            + f"; 95 % prediction interval for {m} new problems (table and verify sampling error)"
        ),
        "acc_contradicted": not lo <= acc <= hi,
        "p50_s": p50,
        "p95_s": p95,
        "p50_pred_s": p50_pred,
        "p50_pred_lo_s": pr.latency_lo_s,
        "p50_pred_hi_s": pr.latency_hi_s,
        "p95_pred_s": pr.latency_hi_s,
        "p50_ratio": p50 / p50_pred if p50_pred > 0 else None,
        "p50_contradicted": not pr.latency_lo_s <= p50 <= pr.latency_hi_s,
        "p95_contradicted": p95 > pr.latency_hi_s,
        "latency_how": (
            f"measured: {m} queries, one at a time, after an untimed warm-up; predicted: {pr.method} "
            f"(interval {pr.interval_how})"
        ),
        "meets_target": (p95 if plan.percentile == 95 else p50) <= plan.target_s,
    }
    off = [r for r in records if "offloaded" in r]
    if off:
        sent = [r for r in off if r["offloaded"]]
        right = [
            (r.get("cloud_correct", r["correct"]) if r["offloaded"] else r["correct"]) for r in off
        ]  # a failed cloud call keeps the local answer
        out["offload"] = {
            "rate": len(sent) / len(off),
            "rate_calibrated": plan.offload.offload_rate if plan.offload else None,
            "system_acc": sum(map(bool, right)) / len(off),
            "local_wrong_kept": sum(not r["correct"] for r in off if not r["offloaded"]) / len(off),
            "alpha": plan.offload.alpha if plan.offload else None,
            "cloud_errors": sum("cloud_error" in r for r in sent),
        }
    return out
