"""Planner value on held-out problems: the planned configuration vs the naive choice, per latency target.

    python benchmarks/planner_value.py --profile PROFILE.json --accuracy TABLE.json [TABLE.json ...]
        [--task bigbench:object_counting] [--split 40:70] [--targets 1,2,4,8] [--percentile 50] [--json] [--smoke]
        [--heldout HELDOUT_TABLE.json ...]

Per target: plan = make_plan(profile, tables, target).  Naive = the largest model (catalogue
n_params, else the profile's) among the tables whose greedy configuration (n=1, temperature 0,
the table's max_tokens, the table's template) is predicted to meet the target by the planner's
own predictions (first such table in --accuracy order; if none fits: the smallest model's, flagged).
Both run for real on every held-out problem of --split (the tables must be built on other problems):
the task's rendered messages for the table's template, Runtime.generate with the plan file's own sampling
options (plan.export.chosen_options: n, max_tokens=B, temperature, top_p, the answer_format's grammar when the
table was grammar-constrained, majority vote, the task's extractor) and seed = the eval's per-problem seed,
graded with Task.is_correct.

--heldout: accuracy tables built by `edgekit eval` on the held-out problems with the tune tables' settings
(model, template, answer_format, T, top_p). Then nothing is run here: every feasible configuration's held-out
accuracy is read from them (exact expected accuracy over the held-out sample pool, the eval's estimators), and
each target reports the plan, the naive choice and the best feasible configuration held out, and the paired
test (on the tune tables) of plan vs naive. Reported: accuracy, mean Result.timings.total_s, and the planner's
predictions (table accuracy; p50 point latency). A configuration that recurs is run once. Infeasible targets
are recorded and not run.  --smoke: the first 2 targets and the first 2 held-out problems.
Goals: plan beats naive by >= 5 points where sampling helps; predicted accuracy within +-5 points;
predicted latency within 10 %.
"""

from __future__ import annotations

import json
import re
import statistics

import numpy as np
from _common import emit, log, parser, run_main

from edgekit.errors import UsageError
from edgekit.evaluate.chance import chance_checks, why_no_baseline
from edgekit.evaluate.paired import BOOT_HOW, boot_weights, paired_diff, table_scores
from edgekit.evaluate.runner import problem_seed
from edgekit.evaluate.tasks import complete_program, load_task
from edgekit.figures import wilson
from edgekit.models.catalog import CATALOG
from edgekit.plan.export import chosen_options
from edgekit.plan.make import make_plan
from edgekit.plan.planner import InfeasibleTarget
from edgekit.schemas.profile import load_profile
from edgekit.schemas.table import load_table


def short(c: dict) -> str:
    return f"{c['model_id']} {c['prompt_template']} B={c['budget']} n={c['n']} {c['aggregation']}"


def key(c: dict) -> tuple:
    return (
        c["model_id"],
        c["prompt_template"],
        float(c["temperature"]),
        float(c["top_p"]),
        int(c["budget"]),
        int(c["n"]),
        c["aggregation"],
        c["extractor"],
        c["table_path"],
    )


def model_size(mid: str, profile) -> tuple[float, float]:
    e = CATALOG.get(mid)
    if e is not None:
        return (e.n_params, float(e.size_bytes))
    mp = next((m for m in profile.models if m.model.id == mid), None)
    return (mp.model.n_params or 0.0, float(mp.model.size_bytes or 0)) if mp else (0.0, 0.0)


def naive_choice(res, profile, target: float) -> tuple[int, str]:
    """Candidate index of the naive configuration, and a note."""
    greedy = [
        i
        for i in range(len(res))
        if res.config(i)["aggregation"] == "greedy" and int(res.budget[i]) == res.tables[int(res.table[i])].max_tokens
    ]
    if not greedy:
        raise UsageError(
            "the accuracy tables have no greedy rows at their max_tokens",
            fix="build the tables with `edgekit eval` (greedy samples are on by default)",
        )
    size = lambda i: model_size(res.config(i)["model_id"], profile)
    fits = [i for i in greedy if res.caps_ok[i] and res.latency[i] <= target]
    if fits:  # largest model; ties: first table given
        return min(fits, key=lambda i: (tuple(-x for x in size(i)), int(res.table[i]))), ""
    i = min(greedy, key=lambda i: (size(i), int(res.table[i])))
    return i, f"no greedy config is predicted to meet {target:g} s: smallest model's greedy config"


def overlap(a: str | None, b: str | None, total: int) -> bool:
    def rng(s):
        if s is None:
            return range(0, total)
        m = re.fullmatch(r"\s*(-?\d*)\s*:\s*(-?\d*)\s*", s)
        return range(*slice(*(int(g) if g else None for g in m.groups())).indices(total)) if m else range(0)

    return bool(set(rng(a)) & set(rng(b)))


def threads_for(profile, mid: str):
    mp = next((m for m in profile.models if m.model.id == mid), None)
    return (mp.threads if mp and mp.threads else None) or next((m.threads for m in profile.models if m.threads), None)


def run_config(rt, task, cfg: dict, table_seed: int) -> dict:
    """Run cfg on every problem of task as `edgekit run --plan` would (the plan's sampling options, grammar
    included): accuracy and mean measured latency."""
    correct, secs = [], []
    opts = chosen_options({**cfg, "extractor": cfg["extractor"] or task.kind})
    for p in task.problems:
        r = rt.generate(p.messages(), opts.replace(seed=problem_seed(table_seed, p.id)))
        ans = complete_program(r.answer, p) if task.kind == "code" else r.answer
        correct.append(task.is_correct(p, ans))
        secs.append(r.timings.total_s)
    return {"acc": statistics.fmean(correct), "latency_s": statistics.fmean(secs), "n_problems": len(correct)}


def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--profile", required=True)
    ap.add_argument(
        "--accuracy", nargs="+", required=True, help="accuracy tables built with `edgekit eval` on other problems"
    )
    ap.add_argument("--task", default="bigbench:object_counting")
    ap.add_argument("--split", default="40:70", help="held-out problems a:b (not used to build the tables)")
    ap.add_argument("--targets", default="1,2,4,8", help="latency targets, seconds, comma-separated")
    ap.add_argument("--percentile", type=int, default=50, choices=(50, 95))
    ap.add_argument(
        "--variants", default=None, help="variant cards (edgekit quantize): a folder, or 'auto' for the cache"
    )
    ap.add_argument("--prefer", default="cheaper", choices=("cheaper", "most-accurate"))
    ap.add_argument(
        "--heldout",
        nargs="+",
        default=None,
        help="accuracy tables built on the held-out split with the tune tables' settings: read every feasible "
        "configuration's held-out accuracy from them instead of running",
    )
    ap.add_argument("--smoke", action="store_true", help="first 2 targets, first 2 held-out problems")
    return run(ap.parse_args(argv))


def same_settings(t, h) -> bool:
    return (t.task, t.model_id, t.prompt_template, t.answer_format, t.temperature, t.top_p) == (
        h.task,
        h.model_id,
        h.prompt_template,
        h.answer_format,
        h.temperature,
        h.top_p,
    )


def heldout_of(res, i: int, held: list):
    """(candidate i's table row, the held-out table built with its settings or None)."""
    t = res.tables[int(res.table[i])]
    return t.rows[int(res.row[i])], next((h for h in held if same_settings(t, h)), None)


def heldout_scores(res, i: int, held: list, ids=None):
    """Per-problem expected correctness of candidate i on its held-out table (ids: which problems; default all)."""
    r, h = heldout_of(res, i, held)
    if h is None or (r.aggregation != "greedy" and r.k > h.n_samples):
        return None
    ids = ids or tuple(sorted(p.id for p in h.problems))
    return table_scores(h, ids, r.budget, r.aggregation, r.k)


def heldout_best_checks(res, feas: list, best: int, plan: int, held: list) -> dict:
    """On the held-out problems: best - plan paired (bootstrap), and the selection optimism of 'best' (it is the
    maximum of many noisy held-out figures: E*[max] - max over the feasible configurations)."""
    ids = sorted(set.intersection(*[{p.id for p in h.problems} for h in held]))
    if len(ids) < 10:
        return {}
    ids = tuple(ids)
    x = {i: heldout_scores(res, i, held, ids) for i in feas}
    x = {i: v for i, v in x.items() if v is not None}
    d, lo, hi = paired_diff(x[best] - x[plan])
    m = np.unique(np.stack(list(x.values())), axis=0)
    opt = float((m @ boot_weights(len(ids))).max(axis=0).mean() - m.mean(axis=1).max())
    return {
        "heldout_best_minus_plan": {
            "diff": float(d[0]),
            "lo": float(lo[0]),
            "hi": float(hi[0]),
            "n_problems": len(ids),
            "how": BOOT_HOW,
        },
        "heldout_best_optimism_pts": 100 * opt,
    }


def heldout_chance(res, i: int, held: list) -> bool | None:
    """Is candidate i above its blind baseline on its held-out table (evaluate.chance)? None: no baseline."""
    r, h = heldout_of(res, i, held)
    if h is None or why_no_baseline(h) is not None or (r.aggregation != "greedy" and r.k > h.n_samples):
        return None
    return chance_checks(h.problems, r.budget, r.aggregation)[0 if r.aggregation == "greedy" else r.k - 1].above


def heldout_acc(res, i: int, held: list) -> tuple | None:
    """(accuracy, lo, hi, n_problems) of candidate i read from its held-out table, or None."""
    r, h = heldout_of(res, i, held)
    hr = (
        None
        if h is None
        else next((x for x in h.rows if (x.budget, x.k, x.aggregation) == (r.budget, r.k, r.aggregation)), None)
    )
    if hr is None:
        return None
    lo, hi = wilson(hr.accuracy, h.n_problems)
    return hr.accuracy, float(lo), float(hi), h.n_problems


def run_heldout(a, profile, targets) -> int:
    """Every feasible configuration's held-out accuracy from --heldout tables: plan, naive, best feasible."""
    held = [load_table(p) for p in a.heldout]
    tables = [load_table(p) for p in a.accuracy]
    for h, p in zip(held, a.heldout):
        tune = [t for t in tables if same_settings(t, h)]
        if not tune:
            raise UsageError(
                f"held-out table {p} matches no --accuracy table (model, template, answer_format, T, top_p)",
                fix="build it with the tune table's settings on the held-out split",
            )
        if any(set(x.id for x in h.problems) & set(x.id for x in t.problems) for t in tune):
            raise UsageError(
                f"held-out table {p} shares problems with its tune table", fix="build it on another --split"
            )
    rows = []
    for target in targets:
        row = {"target_s": target}
        try:
            res, _ = make_plan(
                a.profile, a.accuracy, target, percentile=a.percentile, variants=a.variants, prefer=a.prefer
            )
        except InfeasibleTarget as e:
            rows.append({**row, "plan": f"infeasible: {e.message}"})
            continue
        ni, note = naive_choice(res, profile, target)
        feas = [int(i) for i in res.feasible.nonzero()[0]]
        scored = {i: heldout_acc(res, i, held) for i in feas + [ni]}
        missing = [i for i in feas if scored[i] is None]
        bi = max((i for i in feas if scored[i] is not None), key=lambda i: (scored[i][0], -res.latency[i]))
        for who, i in (("plan", res.chosen), ("naive", ni), ("best", bi)):
            h = scored.get(i) or heldout_acc(res, i, held)
            row[who] = (
                short(res.config(i))
                + f" T={res.config(i)['temperature']:g}"
                + (f" +{res.config(i)['answer_format']}" if res.config(i)["answer_format"] else "")
            )
            row[f"{who}_table_acc"] = float(res.accuracy[i])
            row[f"{who}_pred_latency_s"] = float(res.latency[i])
            row[f"{who}_heldout_acc"] = h[0] if h else None
            row[f"{who}_heldout_ci"] = [h[1], h[2]] if h else None
            ck = res.comparator.chance(i)  # the planner's check on the tune table, then the same on the held-out one
            row[f"{who}_above_chance"] = None if ck is None else ck.above
            row[f"{who}_above_chance_heldout"] = heldout_chance(res, i, held)
        cm = res.comparator.compare(res.chosen, [ni])[0] if ni != res.chosen else None
        row["tables_plan_vs_naive"] = (
            None
            if cm is None
            else {"diff": cm.diff, "lo": cm.lo, "hi": cm.hi, "paired": cm.paired, "verdict": cm.verdict}
        )
        row["naive_note"] = note
        row.update(heldout_best_checks(res, [i for i in feas if scored[i] is not None], bi, res.chosen, held))
        row["n_feasible"], row["n_feasible_without_heldout"] = len(feas), len(missing)
        row["n_feasible_above_chance"] = sum(bool((c := res.comparator.chance(i)) and c.above) for i in feas)
        row["n_heldout_problems"] = scored[res.chosen][3] if scored.get(res.chosen) else None
        if row["plan_heldout_acc"] is not None:
            row["shortfall_pts"] = 100 * (row["best_heldout_acc"] - row["plan_heldout_acc"])
            row["gain_pts"] = 100 * (row["plan_heldout_acc"] - (row["naive_heldout_acc"] or 0.0))
            row["goal_within_3pts_of_best"] = row["shortfall_pts"] <= 3.0
            should = cm is not None and cm.verdict == "win"
            row["goal_beats_naive_by_5"] = (row["gain_pts"] >= 5.0) if should else None  # only where the test says so
        rows.append(row)
    meta = {
        "profile": a.profile,
        "tables": a.accuracy,
        "heldout_tables": a.heldout,
        "task": a.task,
        "percentile": a.percentile,
        "prefer": a.prefer,
        "method": "held-out accuracy = exact expected accuracy of each configuration over the sample pool that "
        "`edgekit eval` drew on the held-out problems (measured, not predicted; 95 % Wilson interval); "
        "best = the feasible configuration with the highest held-out accuracy (itself a maximum over many "
        "noisy held-out figures); plan vs naive on the tune tables = the planner's paired comparison",
    }
    emit({"rows": rows, **meta}, a.json, lambda: print_heldout(rows, meta))
    return 0


def print_heldout(rows: list[dict], meta: dict) -> None:
    for r in rows:
        print(f"target {r['target_s']:g} s: plan {r.get('plan')}")
        if "plan_heldout_acc" not in r:
            continue
        f = lambda x: "-" if x is None else f"{100 * x:.1f} %"
        for who in ("plan", "naive", "best"):
            ch = {True: "above chance", False: "NOT above chance", None: "no baseline"}
            print(
                f"  {who:5s} {r[who]:60s} table {f(r[who + '_table_acc'])}  held out {f(r[who + '_heldout_acc'])}  "
                f"({ch[r[who + '_above_chance']]} in the table, {ch[r[who + '_above_chance_heldout']]} held out)"
            )
        tv = r["tables_plan_vs_naive"]
        if tv:
            print(
                f"  tables, plan - naive: {100 * tv['diff']:+.1f} pts [{100 * tv['lo']:+.1f}, {100 * tv['hi']:+.1f}] "
                f"({'paired' if tv['paired'] else 'unpaired'}): {tv['verdict']}"
            )
        if r.get("shortfall_pts") is not None:
            print(f"  held out: best - plan {r['shortfall_pts']:+.1f} pts, plan - naive {r['gain_pts']:+.1f} pts")
        bp = r.get("heldout_best_minus_plan")
        if bp:
            print(
                f"  held out, best - plan paired: {100 * bp['diff']:+.1f} pts "
                f"[{100 * bp['lo']:+.1f}, {100 * bp['hi']:+.1f}] on {bp['n_problems']} problems; "
                f"the best's selection optimism ~{r['heldout_best_optimism_pts']:.1f} pts"
            )
    print(json.dumps(meta))


def run(a) -> int:
    from edgekit.runtime import Runtime

    targets = [float(x) for x in a.targets.split(",") if x.strip()]
    if a.smoke:
        targets = targets[:2]
    profile = load_profile(a.profile)
    if a.heldout:
        return run_heldout(a, profile, targets)
    tables = {p: load_table(p) for p in a.accuracy}
    for p, t in tables.items():
        if t.task != a.task:
            raise UsageError(
                f"accuracy table {p} is for task {t.task}, not {a.task}", fix="pass --task or tables of one task"
            )
    total = load_task(a.task, template=next(iter(tables.values())).prompt_template).total
    for p, t in tables.items():
        if overlap(t.split, a.split, total):
            log(
                f"warning: table {p} was built on problems {t.split or 'all'}, "
                f"which overlap the held-out split {a.split}"
            )
    # 1. plan every target first (cheap), so each model is loaded once with a large enough n / context
    rows, jobs = [], {}
    for target in targets:
        row = {"target_s": target}
        try:
            res, _ = make_plan(
                a.profile, a.accuracy, target, percentile=a.percentile, variants=a.variants, prefer=a.prefer
            )
            ci = res.chosen
        except InfeasibleTarget as e:
            res, ci = e.result, None
            row["plan"] = f"infeasible: {e.message}"
        if res is None:
            raise UsageError(f"planning for {target:g} s gave no candidates")
        ni, note = naive_choice(res, profile, target)
        for who, i in (("plan", ci), ("naive", ni)):
            if i is None:
                continue
            cfg = res.config(i)
            row[who] = short(cfg)
            row[f"{who}_pred_acc"] = float(res.accuracy[i])
            row[f"{who}_pred_latency_s"] = float(res.pred["total_s"][i])  # p50 point prediction
            row[f"{who}_pred_latency_at_percentile_s"] = float(res.latency[i])
            row[f"_{who}_cfg"] = cfg
            if ci is not None:
                jobs.setdefault(key(cfg), (cfg, res.tables[int(res.table[i])]))
        row["naive_note"] = note
        rows.append(row)
    # 2. run each distinct configuration on the held-out problems
    need: dict[str, list[int]] = {}
    for cfg, _ in jobs.values():
        n_, nb = need.get(cfg["model_id"], [1, 1])
        need[cfg["model_id"]] = [max(n_, int(cfg["n"])), max(nb, int(cfg["n"]) * int(cfg["budget"]))]
    tasks, runtimes, measured = {}, {}, {}
    try:
        for k, (cfg, table) in jobs.items():
            tpl = cfg["prompt_template"]
            if tpl not in tasks:
                t = load_task(a.task, template=tpl, split=a.split)
                tasks[tpl] = t.select(limit=2) if a.smoke else t
            mid = cfg["model_id"]
            if mid not in runtimes:
                max_n, nb = need[mid]
                runtimes[mid] = Runtime(mid, threads=threads_for(profile, mid), n_ctx=max(4096, 1024 + nb), max_n=max_n)
                p0 = tasks[tpl].problems[0]
                runtimes[mid].generate(
                    p0.messages(), max_tokens=4, n=max_n, seed=0, aggregate="none", extractor=None
                )  # warm-up
            log(f"running {short(cfg)} T={cfg['temperature']:g} on {len(tasks[tpl].problems)} problems ...")
            measured[k] = run_config(runtimes[mid], tasks[tpl], cfg, table.seed)
            log(f"  accuracy {measured[k]['acc']:.3f}, mean latency {measured[k]['latency_s']:.3f} s")
    finally:
        for rt in runtimes.values():
            rt.close()
    for row in rows:
        row["n_problems"] = None
        feasible = "_plan_cfg" in row  # infeasible targets are not run (not even a naive config run for another target)
        for who in ("plan", "naive"):
            cfg = row.pop(f"_{who}_cfg", None)
            m = measured.get(key(cfg)) if cfg and feasible else None
            row[f"{who}_acc"] = m["acc"] if m else None
            row[f"{who}_latency_s"] = m["latency_s"] if m else None
            row["n_problems"] = m["n_problems"] if m else row["n_problems"]
        if row["plan_acc"] is not None:
            row["gain_pts"] = 100 * (row["plan_acc"] - row["naive_acc"])
            row["plan_acc_err_pts"] = 100 * (row["plan_pred_acc"] - row["plan_acc"])
            row["plan_latency_err_pct"] = (
                100 * (row["plan_pred_latency_s"] - row["plan_latency_s"]) / row["plan_latency_s"]
            )
    meta = {
        "profile": a.profile,
        "tables": a.accuracy,
        "task": a.task,
        "split": a.split,
        "percentile": a.percentile,
        "smoke": a.smoke,
        "method": "measured on held-out problems: accuracy = mean Task.is_correct of the majority "
        "answer; latency = mean Result.timings.total_s (after one warm-up per model); predicted accuracy = the "
        "accuracy table row; predicted latency = the planner's p50 point prediction",
    }
    emit({"rows": rows, **meta}, a.json, lambda: print_run(rows, meta))
    return 0


def print_run(rows: list[dict], meta: dict) -> None:
    f = lambda x, s="{:.3f}": "-" if x is None else s.format(x)
    for r in rows:
        print(f"target {r['target_s']:g} s")
        print(f"  plan : {r.get('plan', '-')}")
        if r["plan_acc"] is not None:
            print(
                f"         acc {f(r['plan_acc'])} (pred {f(r['plan_pred_acc'])}, {r['plan_acc_err_pts']:+.1f} pts)   "
                f"latency {f(r['plan_latency_s'])} s "
                f"(pred {f(r['plan_pred_latency_s'])} s, {r['plan_latency_err_pct']:+.1f} %)"
            )
        print(f"  naive: {r['naive']}" + (f"  [{r['naive_note']}]" if r["naive_note"] else ""))
        print(
            f"         acc {f(r['naive_acc'])} (pred {f(r['naive_pred_acc'])})   "
            f"latency {f(r['naive_latency_s'])} s (pred {f(r['naive_pred_latency_s'])} s)"
        )
        if r.get("gain_pts") is not None:
            print(f"  plan - naive: {r['gain_pts']:+.1f} accuracy points on {r['n_problems']} held-out problems")
    print(json.dumps(meta))


if __name__ == "__main__":
    run_main(main)
