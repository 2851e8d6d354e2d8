"""Offload evaluation: how well each confidence score routes queries between a weak local model and a
strong cloud model, and whether the calibrated threshold's guarantee holds on held-out queries.

Local = Qwen2.5-Coder-0.5B through edgekit's Runtime, in the configurations the planner picks on this
machine: ``greedy`` (terse prompt, one greedy sample: the 2 s pick), ``grammar`` (the same, answer
constrained to "Answer: <value>"), ``vote4`` (terse, majority of 4 samples at T=0.8: the 4 s pick).
Every local query also runs the P(True) self-check (one extra prefill, timed). Cloud =
Qwen2.5-Coder-1.5B greedy behind a real ``python -m llama_cpp.server`` on 127.0.0.1 (started after
the local phase: one llama.cpp process at a time). Records go to a JSONL file (resumable).

Per task and configuration, the first ``--fit`` problems of the split fit the learned score
(``learned``: the best single score or the logistic combination, chosen by AUROC / out-of-fold AUROC
on the fit problems, as ``edgekit calibrate --score auto`` does; ``combined``: the logistic
combination always); every figure is measured on the other (held-out) problems:

* RouteLLM's APGR: the area under PGR(c) = (acc(c) - acc_local) / (acc_cloud - acc_local) over the
  offload fraction c in [0, 1] (offload the lowest-scoring queries first, ties at random; random
  routing gives 0.5), with a bootstrap interval over problems; CPT(50 %) and CPT(80 %): the least
  offload fraction reaching PGR 0.5 / 0.8; AUROC of the score for "the local answer is correct";
* the violation rate of the guarantee: over ``--splits`` random calibration/test halves of the
  held-out problems, the share in which the Learn-then-Test threshold (alpha, delta) on the
  calibration half leaves a local-and-wrong rate above alpha on the test half (should be <= delta);
* the oracle's APGR (offload exactly the local-wrong / cloud-right problems).

    python benchmarks/offload_eval.py --json --out benchmarks/results/offload_eval.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from _common import emit, log, loopback_server, parser, run_main, write_json

TASKS = ("bigbench:object_counting", "bigbench:strategyqa", "bigbench:date_understanding")
CONFIGS = ("greedy", "grammar", "vote4")
CLOUD_SYSTEM = "Reply with only the final answer (a number, yes/no, or the option letter), nothing else."
EXTRACTOR = {"number": "number", "choice": "choice", "yesno": "yesno"}


def _options(config: str, kind: str, budget: int):
    from edgekit.schemas.formats import answer_grammar
    from edgekit.schemas.options import SamplingOptions

    base = SamplingOptions(max_tokens=budget, seed=0, extractor=EXTRACTOR[kind], self_check=True)
    if config == "greedy":
        return base.replace(n=1, temperature=0.0)
    if config == "grammar":
        return base.replace(n=1, temperature=0.0, grammar=answer_grammar(kind, "answer"))
    return base.replace(n=4, temperature=0.8)


def record(args) -> list[dict]:
    from edgekit.engines.openai import OpenAIEngine
    from edgekit.evaluate.tasks import load_task
    from edgekit.models import resolve
    from edgekit.runtime import Runtime
    from edgekit.runtime.routing import score_of
    from edgekit.schemas.offload import SINGLE_SCORES

    out = Path(args.records)
    done = {}
    if out.exists():
        for ln in out.read_text().splitlines():
            try:
                r = json.loads(ln)
                done[(r["task"], r["id"], r["phase"])] = r
            except (ValueError, KeyError):
                pass

    def write(r):
        done[(r["task"], r["id"], r["phase"])] = r
        with out.open("a") as f:
            f.write(json.dumps(r) + "\n")

    tasks = [load_task(t, template="terse", split=args.split) for t in args.tasks]
    todo = [(t, p, c) for t in tasks for p in t.problems for c in args.configs if (t.name, p.id, c) not in done]
    if todo:
        with Runtime(args.local, threads=args.threads, max_n=4, n_ctx=2048) as rt:
            for i, (t, p, c) in enumerate(todo):
                r = rt.generate(p.messages(), _options(c, t.kind, args.budget))
                write(
                    {
                        "task": t.name,
                        "id": p.id,
                        "phase": c,
                        "answer": r.answer,
                        "correct": t.is_correct(p, r.answer),
                        "latency_s": r.timings.total_s,
                        "self_check_s": r.timings.self_check_s,
                        **{s: score_of(r, s) for s in SINGLE_SCORES},
                    }
                )
                log(f"local {i + 1}/{len(todo)} {t.name} {c} {p.id}: {r.answer} ({r.timings.total_s:.2f} s)")
    todo = [(t, p) for t in tasks for p in t.problems if (t.name, p.id, "cloud") not in done]
    if todo:
        path = str(resolve(args.cloud).path)
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", path, "--host", "127.0.0.1", "--port", "{port}"]
        cmd += ["--n_ctx", "2048", "--n_threads", str(args.threads), "--model_alias", "cloud"]
        with loopback_server(cmd, ready_path="/v1/models", timeout=300, name="llama_cpp.server") as srv:
            cloud = Runtime(OpenAIEngine("cloud", base_url=srv.url + "/v1"))
            for i, (t, p) in enumerate(todo):
                # the cloud model reasons at length unless told not to (then 16 tokens end no answer)
                opts = _options("greedy", t.kind, args.budget).replace(self_check=False, system=CLOUD_SYSTEM)
                t0 = time.perf_counter()
                r = cloud.generate(p.messages(), opts)
                write(
                    {
                        "task": t.name,
                        "id": p.id,
                        "phase": "cloud",
                        "answer": r.answer,
                        "correct": t.is_correct(p, r.answer),
                        "latency_s": time.perf_counter() - t0,
                    }
                )
                log(f"cloud {i + 1}/{len(todo)} {t.name} {p.id}: {r.answer}")
    order = {(t.name, p.id): j for t in tasks for j, p in enumerate(t.problems)}
    return [done[k] for k in sorted(done, key=lambda k: (k[0], order.get((k[0], k[1]), 10**9), k[2]))]


# ----------------------------------------------------------------------------- routing statistics
def curve(score: np.ndarray, local: np.ndarray, cloud: np.ndarray, rng: np.random.Generator, reps: int) -> np.ndarray:
    """Mean system accuracy when offloading the k lowest-scoring queries, k = 0..N (ties at random)."""
    n = len(score)
    acc = np.zeros(n + 1)
    for _ in range(reps):
        order = np.lexsort((rng.random(n), score))  # ascending score, random among ties
        gain = np.concatenate([[0.0], np.cumsum(cloud[order].astype(float) - local[order].astype(float))])
        acc += (local.sum() + gain) / n
    return acc / reps


def apgr_cpt(acc: np.ndarray, weak: float, strong: float) -> tuple[float, float, float]:
    """(APGR, CPT(50 %), CPT(80 %)); NaN when the cloud is not better than local."""
    if strong <= weak:
        return float("nan"), float("nan"), float("nan")
    pgr = (acc - weak) / (strong - weak)
    c = np.linspace(0, 1, len(acc))
    area = float(np.sum((pgr[1:] + pgr[:-1]) / 2 * np.diff(c)))

    def cpt(level: float) -> float:
        hit = np.nonzero(pgr >= level - 1e-12)[0]
        return float(c[hit[0]]) if hit.size else float("nan")

    return area, cpt(0.5), cpt(0.8)


def with_floor(vals) -> np.ndarray:
    """Scores with None (no answer / not recorded) below every real one: offloaded first."""
    finite = [v for v in vals if v is not None and np.isfinite(v)]
    floor = (min(finite) if finite else 0.0) - 1.0
    return np.array([floor if v is None or not np.isfinite(v) else float(v) for v in vals], float)


def route_stats(s: np.ndarray, lc: np.ndarray, cc: np.ndarray, args, rng: np.random.Generator) -> dict:
    from edgekit.calibrate import auroc, ltt_threshold

    a, c50, c80 = apgr_cpt(curve(s, lc, cc, rng, 50), lc.mean(), cc.mean())
    boot = []
    n = len(s)
    for _ in range(args.boot):
        i = rng.integers(0, n, n)
        if cc[i].mean() > lc[i].mean():
            boot.append(apgr_cpt(curve(s[i], lc[i], cc[i], rng, 5), lc[i].mean(), cc[i].mean())[0])
    viol = []
    for _ in range(args.splits):
        perm = rng.permutation(n)
        cal, test = perm[: n // 2], perm[n // 2 :]
        cb = ltt_threshold(s[cal], lc[cal], args.alpha, args.delta, score_name="s")
        viol.append(float(np.mean((s[test] >= cb.threshold) & ~lc[test])) > args.alpha)
    return {
        "apgr": a,
        "apgr_lo": float(np.percentile(boot, 2.5)) if boot else float("nan"),
        "apgr_hi": float(np.percentile(boot, 97.5)) if boot else float("nan"),
        "cpt50": c50,
        "cpt80": c80,
        "auroc": auroc(s, lc),
        "alpha": args.alpha,
        "delta": args.delta,
        "violation_rate": float(np.mean(viol)),
    }


def above_chance(recs: list[dict], targets: dict[str, str]) -> dict:
    """The answers of ``recs`` against their blind baseline (edgekit.evaluate.chance): do they read the problem?"""
    from edgekit.evaluate.chance import chance_checks
    from edgekit.schemas.table import ProblemRecord, SampleRecord

    probs = []
    for r in recs:
        s = SampleRecord(answer=r["answer"], correct=r["correct"], tokens=1, finished=True)
        probs.append(ProblemRecord(id=r["id"], target=targets[r["id"]], prompt_tokens=1, samples=[s], greedy=s))
    (c,) = chance_checks(probs, 1 << 30, "greedy")
    return {"accuracy": c.accuracy, "blind": c.blind, "p_value": c.p_value, "above": c.above}


def analyse_config(recs: list[dict], cloud: dict, args, rng: np.random.Generator, targets=None) -> dict:
    from edgekit.calibrate.combine import choose_score, fit_logistic
    from edgekit.schemas.offload import SINGLE_SCORES

    recs = [r for r in recs if r["id"] in cloud]
    fit, held = recs[: args.fit], recs[args.fit :]
    lc = np.array([r["correct"] for r in held], bool)
    cc = np.array([cloud[r["id"]]["correct"] for r in held], bool)
    out: dict = {
        "n_fit": len(fit),
        "n_heldout": len(held),
        "local_accuracy": float(lc.mean()),
        "cloud_accuracy": float(cc.mean()),
        "local_no_answer": float(np.mean([r["answer"] is None for r in held])),
        "local_latency_s_median": float(np.median([r["latency_s"] for r in held])),
        "self_check_s_median": float(np.median([r["self_check_s"] or 0.0 for r in held])),
        "cloud_latency_s_median": float(np.median([cloud[r["id"]]["latency_s"] for r in held])),
    }
    if targets:  # a local or cloud model at chance makes every routing score's APGR a draw of luck
        out["local_chance"] = above_chance(held, targets)
        out["cloud_chance"] = above_chance([cloud[r["id"]] for r in held], targets)
    oracle = np.where(~lc & cc, 0.0, 1.0)
    out["oracle_apgr"] = apgr_cpt(curve(oracle, lc, cc, rng, 50), lc.mean(), cc.mean())[0]
    answered = [r for r in fit if r["answer"] is not None]
    names = [nm for nm in SINGLE_SCORES if all(r.get(nm) is not None for r in answered)]
    names = [nm for nm in names if len({r[nm] for r in answered}) > 1]
    rows = []
    for nm in SINGLE_SCORES:
        if all(r.get(nm) is None for r in held):
            continue
        rows.append({"score": nm, **route_stats(with_floor([r.get(nm) for r in held]), lc, cc, args, rng)})
    yf = np.array([r["correct"] for r in answered], bool)
    if names and len(answered) >= 10 and 0 < yf.sum() < len(yf):
        X = np.array([[float(r[nm]) for nm in names] for r in answered])
        choice = choose_score(X, yf, names, seed=0)
        w = fit_logistic(X, yf.astype(float))

        def apply(weights_or_col, r):
            if r["answer"] is None or any(r.get(nm) is None for nm in names):
                return None
            x = np.array([float(r[nm]) for nm in names])
            if isinstance(weights_or_col, int):
                return float(x[weights_or_col])
            return float(x @ weights_or_col[:-1] + weights_or_col[-1])

        learned = choice.weights if choice.weights is not None else choice.column
        for label, how in (("combined", w), ("learned", learned)):
            s = with_floor([apply(how, r) for r in held])
            rows.append({"score": label, **route_stats(s, lc, cc, args, rng)})
        rows[-1]["chose"] = choice.name
        rows[-1]["why"] = choice.reason
        rows[-2]["features"] = names
    out["scores"] = rows
    return out


def analyse(records: list[dict], args) -> dict:
    from edgekit.evaluate.tasks import load_task

    rng = np.random.default_rng(0)
    res: dict = {"tasks": {}}
    for task in sorted({r["task"] for r in records}):
        cloud = {r["id"]: r for r in records if r["task"] == task and r["phase"] == "cloud"}
        targets = {p.id: p.target for p in load_task(task).problems}
        configs = {}
        for c in args.configs:
            recs = [r for r in records if r["task"] == task and r["phase"] == c]
            if len(recs) > args.fit + 10:
                configs[c] = analyse_config(recs, cloud, args, rng, targets)
                log(f"analysed {task} {c}")
        main = configs.get("greedy") or next(iter(configs.values()), None)
        if main is None:
            continue
        res["tasks"][task] = {
            "config": "greedy" if "greedy" in configs else next(iter(configs)),
            "oracle_apgr": main["oracle_apgr"],
            "scores": main["scores"],
            "configs": configs,
        }
    return res


def text(res: dict) -> str:
    lines = []
    for task, t in res["tasks"].items():
        for c, v in t["configs"].items():
            lines.append(
                f"{task} · {c}: local {v['local_accuracy']:.1%} (no answer {v['local_no_answer']:.0%}), cloud "
                f"{v['cloud_accuracy']:.1%}, {v['n_heldout']} held out, oracle APGR {v['oracle_apgr']:.3f}"
            )
            for who in ("local", "cloud"):
                ch = v.get(f"{who}_chance")
                if ch:
                    lines.append(
                        f"  {who} vs answering blind: {ch['accuracy']:.1%} vs {ch['blind']:.1%}, permutation "
                        + ("p < 0.001" if ch["p_value"] < 0.001 else f"p = {ch['p_value']:.3f}")
                        + f": {'above chance' if ch['above'] else 'NOT shown above chance'}"
                    )
            for s in sorted(v["scores"], key=lambda s: -np.nan_to_num(s["apgr"], nan=-1)):
                lines.append(
                    f"  {s['score']:<20} APGR {s['apgr']:.3f} [{s['apgr_lo']:.3f}, {s['apgr_hi']:.3f}]  "
                    f"CPT50 {s['cpt50']:.2f}  CPT80 {s['cpt80']:.2f}  AUROC {s['auroc']:.3f}  "
                    f"violations {s['violation_rate']:.2f}" + (f"  (chose {s['chose']})" if "chose" in s else "")
                )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = parser(__doc__, paragraph=True, threads=2, out="benchmarks/results/offload_eval.json")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS))
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    ap.add_argument("--split", default="30:160", help="problems (the tables use 0:30): --fit of them fit the score")
    ap.add_argument("--fit", type=int, default=30, help="first N problems of the split fit the learned score")
    ap.add_argument("--local", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--cloud", default="qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--budget", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=0.15)
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--splits", type=int, default=100)
    ap.add_argument("--boot", type=int, default=200)
    ap.add_argument("--records", default="benchmarks/results/offload_eval_records.jsonl")
    ap.add_argument("--analyse-only", action="store_true", help="analyse the records file, run nothing")
    args = ap.parse_args(argv)
    Path(args.records).parent.mkdir(parents=True, exist_ok=True)
    if args.analyse_only:
        recs = [json.loads(ln) for ln in Path(args.records).read_text().splitlines() if ln.strip()]
    else:
        recs = record(args)
    res = analyse(recs, args)
    if args.out:
        write_json(args.out, res)
    emit(res, args.json, text(res))
    return 0


if __name__ == "__main__":
    run_main(main)
