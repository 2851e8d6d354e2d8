"""Offload evaluation: how well each confidence score routes queries between a weak local model and a
strong cloud model, and whether the calibrated threshold's guarantee holds on held-out queries.

Local = Qwen2.5-Coder-0.5B (a plan configuration: cot template, n samples, majority vote) through
edgekit's Runtime; cloud = Qwen2.5-Coder-1.5B behind a real `python -m llama_cpp.server` on
127.0.0.1 (started by this script after the local phase: one llama.cpp process at a time). Both
answer every held-out problem; the records are kept in a JSONL file (resumable), then analysed:

* accuracy against offload rate for each score (offload the lowest-scoring queries first; ties
  broken at random, averaged), for random routing, always-local and always-cloud;
* RouteLLM's APGR: the area under PGR(c) = (acc(c) - acc_local) / (acc_cloud - acc_local) over the
  offload fraction c in [0, 1] (random routing gives 0.5), and CPT(50 %): the least offload
  fraction reaching PGR 0.5;
* over >= 50 random calibration/test splits, the share of splits in which the threshold chosen by
  Learn-then-Test on the calibration half gives a realised local-wrong rate above alpha on the
  test half (the guarantee says: at most delta, up to sampling error).

    python benchmarks/offload_eval.py --split 40:100 --json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from _common import emit, log, loopback_server, parser, run_main

SCORES = ("vote_share", "mean_logprob", "low_logprob")


def record(args) -> list[dict]:
    from edgekit.engines.openai import OpenAIEngine
    from edgekit.evaluate.tasks import load_task
    from edgekit.models import resolve
    from edgekit.runtime import Runtime
    from edgekit.runtime.routing import score_of
    from edgekit.schemas.options import SamplingOptions

    out = Path(args.records)
    done = {}
    if out.exists():
        for ln in out.read_text().splitlines():
            try:
                r = json.loads(ln)
                done[(r["task"], r["id"], r["phase"])] = r
            except (ValueError, KeyError):
                pass
    tasks = [load_task(t, template="cot", split=args.split) for t in args.tasks]
    local_opts = SamplingOptions(n=args.n, max_tokens=args.budget, temperature=0.8, seed=0, extractor=None)
    cloud_opts = SamplingOptions(n=1, max_tokens=args.budget, temperature=0.0, extractor=None)

    def write(r):
        done[(r["task"], r["id"], r["phase"])] = r
        with out.open("a") as f:
            f.write(json.dumps(r) + "\n")

    todo = [(t, p) for t in tasks for p in t.problems if (t.name, p.id, "local") not in done]
    if todo:
        with Runtime(args.local, threads=args.threads, max_n=args.n, n_ctx=4096) as rt:
            for i, (t, p) in enumerate(todo):
                opts = local_opts.replace(extractor={"number": "number", "choice": "choice", "yesno": "yesno"}[t.kind])
                r = rt.generate(p.messages(), opts)
                write(
                    {
                        "task": t.name,
                        "id": p.id,
                        "phase": "local",
                        "answer": r.answer,
                        "correct": t.is_correct(p, r.answer),
                        "latency_s": r.timings.total_s,
                        **{s: score_of(r, s) for s in SCORES},
                    }
                )
                log(f"local {i + 1}/{len(todo)} {t.name} {p.id}: {r.answer} ({r.timings.total_s:.1f} s)")
    todo = [(t, p) for t in tasks for p in t.problems if (t.name, p.id, "cloud") not in done]
    if todo:
        path = str(resolve(args.cloud).path)
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", path, "--host", "127.0.0.1", "--port", "{port}"]
        cmd += ["--n_ctx", "4096", "--n_threads", str(args.threads), "--model_alias", "cloud"]
        with loopback_server(cmd, ready_path="/v1/models", timeout=300, name="llama_cpp.server") as srv:
            cloud = Runtime(OpenAIEngine("cloud", base_url=srv.url + "/v1"))
            for i, (t, p) in enumerate(todo):
                opts = cloud_opts.replace(extractor={"number": "number", "choice": "choice", "yesno": "yesno"}[t.kind])
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
    return [done[k] for k in sorted(done)]


def curve(
    score: np.ndarray, local: np.ndarray, cloud: np.ndarray, rng: np.random.Generator, reps: int = 200
) -> np.ndarray:
    """Mean system accuracy when offloading the k lowest-scoring queries, k = 0..N (ties at random)."""
    n = len(score)
    acc = np.zeros(n + 1)
    for _ in range(reps):
        order = np.lexsort((rng.random(n), score))  # ascending score, random among ties
        gain = np.concatenate([[0.0], np.cumsum(cloud[order].astype(float) - local[order].astype(float))])
        acc += (local.sum() + gain) / n
    return acc / reps


def apgr_cpt(acc: np.ndarray, weak: float, strong: float) -> tuple[float, float]:
    if strong <= weak:
        return float("nan"), float("nan")
    pgr = (acc - weak) / (strong - weak)
    c = np.linspace(0, 1, len(acc))
    area = float(np.sum((pgr[1:] + pgr[:-1]) / 2 * np.diff(c)))
    hit = np.nonzero(pgr >= 0.5)[0]
    return area, float(c[hit[0]]) if hit.size else float("nan")


def analyse(records: list[dict], args) -> list[dict]:
    from edgekit.calibrate import ltt_threshold

    rng = np.random.default_rng(0)
    local = {(r["task"], r["id"]): r for r in records if r["phase"] == "local"}
    cloud = {(r["task"], r["id"]): r for r in records if r["phase"] == "cloud"}
    keys = sorted(set(local) & set(cloud))
    lc = np.array([local[k]["correct"] for k in keys], bool)
    cc = np.array([cloud[k]["correct"] for k in keys], bool)
    weak, strong = lc.mean(), cc.mean()
    rows = [
        {"score": "always-local", "accuracy": float(weak)},
        {"score": "always-cloud", "accuracy": float(strong)},
        {"score": "random", "apgr": 0.5, "cpt50": 0.5},
    ]
    for name in SCORES:
        vals = [local[k][name] for k in keys]
        finite = [v for v in vals if v is not None]
        floor = (min(finite) if finite else 0.0) - 1.0
        s = np.array([floor if v is None else v for v in vals], float)
        a, c = apgr_cpt(curve(s, lc, cc, rng), weak, strong)
        viol = []
        for _ in range(args.splits):
            perm = rng.permutation(len(keys))
            cal, test = perm[: len(keys) // 2], perm[len(keys) // 2 :]
            cb = ltt_threshold(s[cal], lc[cal], args.alpha, args.delta, score_name=name)
            kept = s[test] >= cb.threshold
            viol.append(float(np.mean(kept & ~lc[test])) > args.alpha)
        rows.append(
            {
                "score": name,
                "apgr": a,
                "cpt50": c,
                "alpha": args.alpha,
                "delta": args.delta,
                "violation_rate": float(np.mean(viol)),
                "splits": args.splits,
            }
        )
    rows.append(
        {
            "n_problems": len(keys),
            "local_accuracy": float(weak),
            "cloud_accuracy": float(strong),
            "local_latency_s_median": float(np.median([local[k]["latency_s"] for k in keys])),
            "cloud_latency_s_median": float(np.median([cloud[k]["latency_s"] for k in keys])),
        }
    )
    return rows


def main(argv=None) -> int:
    ap = parser(__doc__, paragraph=True, threads=2)
    ap.add_argument("--tasks", nargs="+", default=["bigbench:object_counting"])
    ap.add_argument("--split", default="40:100", help="held-out problems (the tables use 0:30)")
    ap.add_argument("--local", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--cloud", default="qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--budget", type=int, default=128)
    ap.add_argument("--alpha", type=float, default=0.3)
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--splits", type=int, default=100)
    ap.add_argument("--records", default="benchmarks/results/offload_records.jsonl")
    args = ap.parse_args(argv)
    Path(args.records).parent.mkdir(parents=True, exist_ok=True)
    rows = analyse(record(args), args)
    emit([r for r in rows if "apgr" in r and r["score"] != "random"], args.json, "\n".join(str(r) for r in rows))
    return 0


if __name__ == "__main__":
    run_main(main)
