"""Early stopping of the vote: majority@8 without stopping, with `decided`, `beta:0.95` and `adaptive:4,8`, in one run.

    python benchmarks/early_stop.py [--tasks object_counting,strategyqa,date_understanding] [--split 100:160]
        [--budget 64] [--template cot] [--rules none,decided,beta:0.95,adaptive:4,8] [--profile PROFILE.json]
        [--model ID] [--threads N] [--json]

Every held-out problem of every task is answered once per rule, the rules in a rotated order per problem
(the VM's speed drifts: each rule sees the same minutes), with the eval's per-problem seed, so every rule draws
the same samples up to the point where it stops (`decided` must give majority@8's answer). Reported per task and
rule: accuracy with its 95 % Wilson interval, mean and p95 wall time (Result.timings.total_s), mean decode time
(timings.decode_s), mean steps (the longest sample's tokens), the share of majority@8's decode time, how often the
answer equals majority@8's, and the replayed prediction: the `none` run's samples are replayed under each rule
(edgekit.evaluate.replay, the planner's code) and priced by the latency model fitted from --profile
(PerfModel.decode_live_s); `pred_ratio` = predicted / measured mean, and `pred_rel` the same after dividing by the
`none` rule's ratio (the replay's own error, with the profile's speed against this minute's taken out).

--json: {"rows": [{"task", "rule", "acc", "acc_lo", "acc_hi", "mean_s", "p95_s", "decode_s", "steps",
"decode_share", "same_answer", "predicted_mean_s", "pred_ratio", "pred_rel", "n_problems"}], "settings": {...}}
"""

from __future__ import annotations

import statistics

import numpy as np
from _common import emit, log, parser, print_table, run_main

from edgekit.evaluate.replay import simulate
from edgekit.evaluate.runner import problem_seed
from edgekit.evaluate.tasks import load_task
from edgekit.figures import wilson
from edgekit.runtime import Runtime
from edgekit.schemas.options import SamplingOptions
from edgekit.schemas.stopping import parse_stop_rule
from edgekit.schemas.table import SampleRecord

RULES = "none,decided,beta:0.95,adaptive:4,8"


def split_rules(text: str) -> list[str]:
    """ "none,decided,adaptive:4,8" -> ["none", "decided", "adaptive:4,8"] (an adaptive rule keeps its commas)."""
    out: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if out and out[-1].startswith("adaptive:") and part.replace(".", "").isdigit() and out[-1].count(",") < 2:
            out[-1] += "," + part
        else:
            out.append(part)
    for r in out:
        parse_stop_rule(r)
    return out


def perf_model(profile_path: str | None, model_id: str):
    if not profile_path:
        return None
    from edgekit.perfmodel import fit
    from edgekit.schemas.profile import load_profile

    return fit(load_profile(profile_path).model(model_id), profile_path)


def one(rt: Runtime, task, problem, rule: str, args) -> dict:
    opts = SamplingOptions.build(
        n=args.n,
        max_tokens=args.budget,
        temperature=args.temperature,
        seed=problem_seed(args.seed, problem.id),
        extractor=task.kind,
        stop_rule=None if rule == "none" else rule,
    )
    r = rt.generate(problem.messages(), opts)
    t = r.timings
    return {
        "correct": bool(task.is_correct(problem, r.answer)),
        "answer": r.answer,
        "total_s": t.total_s,
        "decode_s": t.decode_s,
        "steps": t.steps,
        "prompt_tokens": t.prompt_tokens,
        "samples": [
            SampleRecord(
                answer=s.answer,
                correct=bool(s.answer is not None and task.is_correct(problem, s.answer)),
                tokens=s.tokens,
                finished=s.finish_reason == "stop",
            )
            for s in r.samples
        ],
    }


def replay_rows(table_path: str, rules: list[str], pm, budget: int | None) -> list[dict]:
    """--replay: every rule replayed exactly on an accuracy table's own samples (edgekit.evaluate.replay, the
    planner's code) and priced by the profile's latency model: what the rules could save on that task, model and
    budget, with no model run. Also the vote's spread, which bounds what any stopping rule can save."""
    from collections import Counter

    from edgekit.evaluate.chance import chance_checks
    from edgekit.evaluate.estimators import valid_at
    from edgekit.evaluate.replay import replay
    from edgekit.schemas.table import load_table

    t = load_table(table_path)
    b = budget or t.max_tokens
    n = t.n_samples
    prompts = np.array([p.prompt_tokens for p in t.problems], float)
    top = []
    for p in t.problems:
        c = Counter(s.answer for s in p.samples if valid_at(s, b) and s.answer is not None)
        top.append(max(c.values(), default=0) / n)
    ch = chance_checks(t.problems, b, "majority")[n - 1]
    rows, base = [], None
    for rule in rules:
        r = replay(t.problems, b, n, rule)
        dec = np.array([pm.decode_live_s(prompts[i], r.live_steps[i], r.steps[i]) for i in range(len(prompts))])
        base = base if base is not None else dec.mean()
        rows.append(
            {
                "table": table_path,
                "rule": rule,
                "budget": b,
                "n": n,
                "acc": r.accuracy,
                "steps": float(r.steps.mean()),
                "row_steps": float(r.row_steps.mean()),
                "predicted_decode_s": float(dec.mean()),
                "decode_share": float(dec.mean() / base),
                "method": r.method,
                "top_vote_share_median": float(np.median(top)),
                "problems_with_majority": int(sum(v > 0.5 for v in top)),
                "n_problems": len(t.problems),
                "above_chance": ch.above,
            }
        )
    return rows


def main(argv=None) -> int:
    ap = parser(__doc__, model="qwen2.5-coder-0.5b-instruct", threads=True)
    ap.add_argument("--tasks", default="object_counting,strategyqa,date_understanding")
    ap.add_argument("--split", default="100:160", help="held-out problems of each task (default 100:160)")
    ap.add_argument("--template", default="cot")
    ap.add_argument("--budget", type=int, default=64)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rules", default=RULES)
    ap.add_argument("--profile", default=None, help="device profile for the replayed latency prediction")
    ap.add_argument(
        "--replay",
        nargs="+",
        metavar="TABLE",
        help="run nothing: replay every rule on these accuracy tables' samples, priced by --profile's model",
    )
    ap.add_argument("--replay-budget", type=int, default=None, help="--replay at this budget (default: the table's)")
    args = ap.parse_args(argv)
    rules = split_rules(args.rules)
    if "none" not in rules:
        rules.insert(0, "none")
    if args.replay:
        from edgekit.schemas.table import load_table

        if not args.profile:
            raise SystemExit("--replay needs --profile (the latency model that prices the replayed steps)")
        rows = [
            r
            for tp in args.replay
            for r in replay_rows(tp, rules, perf_model(args.profile, load_table(tp).model_id), args.replay_budget)
        ]
        cols = ["table", "rule", "budget", "acc:.3f", "steps:.1f", "predicted_decode_s:.2f", "decode_share:.3f"]
        emit(
            {"rows": rows, "settings": {"profile": args.profile, "rules": rules}},
            args.json,
            lambda: print_table(rows, cols),
        )
        return 0
    pm = perf_model(args.profile, args.model)
    rows = []
    with Runtime(args.model, max_n=args.n, threads=args.threads, n_ctx=4096) as rt:
        for tname in args.tasks.split(","):
            task = load_task(f"bigbench:{tname}", args.template, split=args.split)
            res: dict[str, list[dict]] = {r: [] for r in rules}
            for pi, problem in enumerate(task.problems):
                order = rules[pi % len(rules) :] + rules[: pi % len(rules)]
                for rule in order:
                    res[rule].append(one(rt, task, problem, rule, args))
                log(
                    f"{tname} {pi + 1}/{len(task.problems)}: "
                    + " ".join(f"{r}={res[r][-1]['total_s']:.2f}s" for r in rules)
                )
            base = res["none"]
            base_dec = statistics.fmean(x["decode_s"] for x in base)
            pred_none = None
            for rule in rules:
                xs = res[rule]
                k = sum(x["correct"] for x in xs)
                lo, hi = wilson(np.array([k / len(xs)]), np.array([len(xs)]))
                tot = [x["total_s"] for x in xs]
                pred = None
                if pm is not None:
                    rr = parse_stop_rule(rule)
                    ts = []
                    for b in base:  # the `none` run's samples, replayed under this rule and priced step by step
                        _, steps, hist = simulate(b["samples"], args.budget, rr)
                        i = b["prompt_tokens"]
                        ts.append(float(pm.prefill_s(i) + pm.decode_live_s(i, hist, steps)))
                    pred = statistics.fmean(ts)
                mean_s = statistics.fmean(tot)
                ratio = pred / mean_s if pred else None
                if rule == "none":
                    pred_none = ratio
                rows.append(
                    {
                        "task": tname,
                        "rule": rule,
                        "acc": k / len(xs),
                        "acc_lo": float(lo[0]),
                        "acc_hi": float(hi[0]),
                        "mean_s": mean_s,
                        "p95_s": float(np.percentile(tot, 95)),
                        "decode_s": statistics.fmean(x["decode_s"] for x in xs),
                        "steps": statistics.fmean(x["steps"] for x in xs),
                        "decode_share": statistics.fmean(x["decode_s"] for x in xs) / base_dec if base_dec else None,
                        "same_answer": sum(a["answer"] == b["answer"] for a, b in zip(xs, base)) / len(xs),
                        "predicted_mean_s": pred,
                        "pred_ratio": ratio,
                        "pred_rel": ratio / pred_none if ratio and pred_none else None,
                        "n_problems": len(xs),
                    }
                )
    out = {
        "rows": rows,
        "settings": {
            k: getattr(args, k) for k in ("model", "tasks", "split", "template", "budget", "n", "temperature", "seed")
        }
        | {"rules": rules, "profile": args.profile},
    }
    cols = [
        "task",
        "rule",
        "acc:.3f",
        "acc_lo:.3f",
        "acc_hi:.3f",
        "mean_s:.2f",
        "p95_s:.2f",
        "decode_s:.2f",
        "steps:.1f",
        "decode_share:.2f",
        "same_answer:.2f",
        "predicted_mean_s:.2f",
        "pred_ratio:.2f",
        "pred_rel:.2f",
    ]
    emit(out, args.json, lambda: print_table(rows, cols))
    return 0


if __name__ == "__main__":
    run_main(main)
