"""Plan vs measurement: run a plan's configuration with `edgekit run --plan` on the problems its
accuracy table was made on and compare the plan's predicted latency with the measured one.

    python benchmarks/gpu_plan_check.py --plan plan.json --profile P.json --questions 6 --gpu-layers -1 --out check.json

Each question is one `edgekit run QUESTION --plan PLAN --json` process (the CLI, as a user runs it;
model load is outside `total_s`). Reported: per question the measured total_s, the plan's predicted
latency (at its percentile) and the relative error; the error of the median; and a step-matched
prediction (the plan's performance model, fitted from the profile, given the steps and prompt
tokens the run actually had), which separates the speed model's error from the variation of
answer lengths between questions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from _common import log, median_or_none, parser, run_main, write_json


def main(argv=None) -> int:
    ap = parser(__doc__, json_flag=False, out=True, helps={"out": "write the check (JSON) to this file"})
    ap.add_argument("--plan", required=True)
    ap.add_argument(
        "--profile", required=True, help="the profile the plan was made from (for the step-matched prediction)"
    )
    ap.add_argument("--questions", type=int, default=6)
    ap.add_argument("--gpu-layers", type=int, default=None)
    ap.add_argument("--edgekit", default=None, help="the edgekit command (default: this Python's -m edgekit.cli.main)")
    a = ap.parse_args(argv)

    from edgekit.evaluate.tasks import load_task
    from edgekit.perfmodel.fit import fit
    from edgekit.schemas.plan import load_plan
    from edgekit.schemas.profile import load_profile

    plan = load_plan(a.plan)
    c = plan.chosen
    table = json.load(open(c.table_path)) if c.table_path and os.path.exists(c.table_path) else {}
    task = load_task(table.get("task", "bigbench:object_counting"), split=table.get("split"))
    problems = task.problems[: a.questions]
    pm = fit(load_profile(a.profile).model(c.model_id), a.profile)
    base = a.edgekit.split() if a.edgekit else [sys.executable, "-m", "edgekit.cli.main"]
    predicted = plan.predicted.latency_at_percentile_s
    rows = []
    for prob in problems:
        cmd = base + ["run", prob.prompt, "--plan", a.plan, "--json"]
        if a.gpu_layers is not None:
            cmd += ["--gpu-layers", str(a.gpu_layers)]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            rows.append(
                {"id": prob.id, "error": (r.stderr.strip().splitlines() or ["?"])[-1], "returncode": r.returncode}
            )
            log(f"{prob.id}: FAILED {rows[-1]['error']}")
            continue
        res = json.loads(r.stdout)
        t = res["timings"]
        matched = pm.predict(t["prompt_tokens"], c.budget, c.n, expected_steps=max(t["steps"], 1))
        row = {
            "id": prob.id,
            "measured_s": t["total_s"],
            "prefill_s": t["prefill_s"],
            "decode_s": t["decode_s"],
            "prompt_tokens": t["prompt_tokens"],
            "steps": t["steps"],
            "generated_tokens": t["generated_tokens"],
            "load_s": t["load_s"],
            "process_wall_s": round(wall, 3),
            "predicted_s": res["extra"].get("predicted_latency_s"),
            "step_matched_predicted_s": matched.latency_s,
            "answer": res.get("answer"),
            "target": prob.target,
            "flags": res.get("flags", []),
        }
        row["rel_error"] = (row["measured_s"] - predicted) / predicted
        row["step_matched_rel_error"] = (row["measured_s"] - matched.latency_s) / matched.latency_s
        rows.append(row)
        log(
            f"{prob.id}: measured {row['measured_s']:.3f} s (steps {row['steps']}, prompt {row['prompt_tokens']}) "
            f"predicted {predicted:.3f} s ({100 * row['rel_error']:+.1f} %), step-matched {matched.latency_s:.3f} s "
            f"({100 * row['step_matched_rel_error']:+.1f} %)"
        )
    ok = [r for r in rows if "measured_s" in r]
    med = median_or_none(r["measured_s"] for r in ok)
    out = {
        "plan": a.plan,
        "profile": a.profile,
        "gpu_layers": a.gpu_layers,
        "chosen": {
            "model_id": c.model_id,
            "quant": c.quant,
            "n": c.n,
            "budget": c.budget,
            "aggregation": c.aggregation,
            "prompt_template": c.prompt_template,
        },
        "percentile": plan.percentile,
        "target_s": plan.target_s,
        "predicted_s": predicted,
        "predicted_p50_s": plan.predicted.latency_s.value,
        "predicted_interval_s": [plan.predicted.latency_lo_s, plan.predicted.latency_hi_s],
        "prediction_method": plan.predicted.method,
        "expected_steps_note": "the plan predicts with the table's expected steps (max over the n samples, "
        "mean over its problems)",
        "measured_median_s": med,
        "median_rel_error": None if med is None else (med - predicted) / predicted,
        "step_matched_median_abs_rel_error": median_or_none(abs(r["step_matched_rel_error"]) for r in ok),
        "within_15pct": None if med is None else abs(med - predicted) / predicted <= 0.15,
        "questions": rows,
        "method": "measured: one `edgekit run --plan --json` process per question (timings.total_s, "
        "model load excluded)",
    }
    write_json(a.out, out)
    if med is not None:
        print(
            f"plan check: predicted p{plan.percentile} {predicted:.3f} s, measured median {med:.3f} s over {len(ok)} "
            f"question(s): error {100 * out['median_rel_error']:+.1f} % "
            f"({'within' if out['within_15pct'] else 'OUTSIDE'} 15 %); step-matched median |error| "
            f"{100 * out['step_matched_median_abs_rel_error']:.1f} %",
            flush=True,
        )
    return 0 if ok else 1


if __name__ == "__main__":
    run_main(main)
