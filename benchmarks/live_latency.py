"""Does the daemon's live correction predict request latency better than the plan's model alone?

Runs the daemon's Service in-process (the real model, a plan) and sends ``--requests`` chat requests,
``--interval`` seconds apart, each with an explicit small max_tokens and a long deadline. For each
request the response's ``edgekit.live`` gives the plan model's prediction for that request, the
corrected prediction (made before the request ran) and the measured prefill + decode time. Reported:
median absolute relative error of the plan model and of the corrected model (requests after the
correction starts acting), and the factors over time. Goal: corrected error < plan error whenever
the device runs off its profile (a slowed or noisy machine); on a quiet machine both are small.

    python benchmarks/live_latency.py --requests 40 --interval 15 --max-tokens 32 --json   # ~10 min
    python benchmarks/live_latency.py --requests 6 --max-tokens 4                          # smoke run
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from _common import emit, log, median_or_none, parser, print_table, run_main

from edgekit.profile.background import Background

ROOT = Path(__file__).resolve().parents[1]


def default_plan(tmp: Path) -> Path:
    from edgekit.plan.make import make_plan

    prof, table = str(ROOT / "profiles/ci-2core-amd-epyc.json"), str(ROOT / "tables/object_counting-smollm2-cot.json")
    res, _ = make_plan(prof, [table], 100.0, prefer="most-accurate")
    _, written = make_plan(
        prof, [table], float(res.latency[res.chosen]) * 1.05, prefer="most-accurate", output=tmp / "plan.json"
    )
    return written


def main(argv=None) -> int:
    ap = parser(__doc__, threads=2)
    ap.add_argument("--plan", help="plan file (default: SmolLM2 on profiles/ci-2core-amd-epyc.json)")
    ap.add_argument("--requests", type=int, default=6)
    ap.add_argument("--interval", type=float, default=0.0, help="seconds between requests")
    ap.add_argument("--max-tokens", type=int, default=4)
    ap.add_argument("--alpha", type=float, default=0.2)
    ap.add_argument("--step-at", type=int, help="start --background busy workers before this request (0-based)")
    ap.add_argument("--background", type=int, default=1, help="busy workers started at --step-at")
    ap.add_argument("--within", type=float, default=0.15, help="convergence: corrected error at most this, to the end")
    a = ap.parse_args(argv)
    threads = a.threads or None  # --threads 0: edgekit's adaptive thread count (the daemon's default)

    from fastapi.testclient import TestClient

    from edgekit.runtime import Runtime
    from edgekit.schemas.plan import load_plan
    from edgekit.serve.app import build_app
    from edgekit.serve.live import LiveSettings
    from edgekit.serve.service import Limits, Service

    path = Path(a.plan) if a.plan else default_plan(Path(tempfile.mkdtemp()))
    plan = load_plan(path)
    svc = Service(
        Runtime(plan.chosen.model_id, threads=threads, n_ctx=1024),
        limits=Limits(max_tokens_cap=max(a.max_tokens, 1024)),
        plan=plan,
        plan_path=str(path),
        live=LiveSettings(alpha=a.alpha),
    )
    if not svc.live.enabled:
        log(f"error: {svc.live.disabled}")
        return 2
    c = TestClient(build_app(svc))
    rows = []
    busy: Background | None = None
    t0 = time.time()
    try:
        for i in range(a.requests):
            if a.step_at is not None and i == a.step_at:
                busy = Background(str(a.background)).start()  # edgekit's own busy workers (profile --background)
            body = {
                "model": plan.chosen.model_id,
                "max_tokens": a.max_tokens,
                "edgekit": {"deadline_s": 3600},
                "messages": [
                    {"role": "user", "content": f"A box has {i + 3} red and {i + 5} blue balls. How many balls?"}
                ],
            }
            ek = c.post("/v1/chat/completions", json=body).json()["edgekit"]["live"]
            rows.append(
                {
                    "t_s": round(time.time() - t0, 2),
                    "predicted_s": ek["predicted_s"],
                    "corrected_s": ek["corrected"]["value"],
                    "measured_s": ek["measured_s"],
                    "active": ek["correction"]["decode"]["active"],
                    "k_prefill": ek["correction"]["prefill"]["factor"],
                    "k_decode": ek["correction"]["decode"]["factor"],
                    "loaded": busy is not None,
                }
            )
            if i + 1 < a.requests:
                time.sleep(a.interval)
    finally:  # the busy workers never outlive the run
        if busy is not None:
            busy.stop()
    svc.rt.close()
    svc.close()
    acting = [r for r in rows[svc.live.s.min_samples :]]

    def err(key: str) -> float | None:
        return median_or_none(rel_err(r, key) for r in acting if r["measured_s"] > 0)

    out = {
        "plan": str(path),
        "config": svc.live.config(),
        "requests": rows,
        "median_rel_error_plan": err("predicted_s"),
        "median_rel_error_corrected": err("corrected_s"),
        "over_requests": len(acting),
    }
    if a.step_at is not None:
        out["step"] = convergence(rows, a.step_at, a.within, a.background)
    emit(out, a.json, lambda: print_text(out))
    return 0


def rel_err(row: dict, key: str) -> float:
    """|prediction - measured| / measured for one request row."""
    return abs(row[key] - row["measured_s"]) / row["measured_s"]


def convergence(rows: list[dict], k: int, within: float, workers: int) -> dict:
    """After a step in background load at request k: the first request from which the corrected
    prediction stays within ``within`` of the measured time to the end, in requests and seconds."""
    rel = [rel_err(r, "corrected_s") for r in rows]
    after = range(k, len(rows))
    j = next((i for i in after if all(e <= within for e in rel[i:])), None)
    first = next((i for i in after if rel[i] <= within), None)
    plan_err = median_or_none(rel_err(r, "predicted_s") for r in rows[k:])
    return {
        "at_request": k,
        "workers": workers,
        "within": within,
        "converged_after_requests": None if j is None else j - k,
        "converged_after_s": None if j is None else round(rows[j]["t_s"] - rows[k]["t_s"], 2),
        "first_within_after_requests": None if first is None else first - k,
        "share_within_after_step": sum(e <= within for e in rel[k:]) / max(1, len(rel) - k),
        "median_rel_error_plan_after_step": plan_err,
        "median_rel_error_corrected_after_step": median_or_none(rel[k:]),
    }


def print_text(out: dict) -> None:
    cols = ["t_s:.1f", "predicted_s:.3f", "corrected_s:.3f", "measured_s:.3f", "k_prefill:.2f", "k_decode:.2f"]
    print_table(out["requests"], cols)
    fmt = lambda x: "n/a" if x is None else f"{100 * x:.0f} %"
    print(
        f"median |error| over {out['over_requests']} request(s) once acting: "
        f"plan model {fmt(out['median_rel_error_plan'])}, "
        f"corrected {fmt(out['median_rel_error_corrected'])}"
    )
    if "step" in out:
        st = out["step"]
        print(
            f"step to {st['workers']} busy worker(s) at request {st['at_request']}: corrected within "
            f"{100 * st['within']:.0f} % after {st['converged_after_requests']} request(s) "
            f"({st['converged_after_s']} s), {100 * st['share_within_after_step']:.0f} % of requests within after the "
            f"step; plan model off by {fmt(st['median_rel_error_plan_after_step'])} after it"
        )


if __name__ == "__main__":
    run_main(main)
