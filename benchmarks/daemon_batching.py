"""Continuous batching of different requests: c concurrent clients (n=1 each) vs a bare llama.cpp
batched loop at n=c vs the same requests served one at a time. Interleaved, in one process.

    python benchmarks/daemon_batching.py [--model qwen2.5-coder-0.5b-instruct] [--cs 1,4,8] [--budget 128]
        [--reps 3] [--json]
    python benchmarks/daemon_batching.py --smoke          # SmolLM2, c in {1,2}, 8 tokens: checks that it runs

(a) batched: c threads call ``Runtime.generate`` at once on a llama.cpp engine with continuous
    batching (``max_seqs``), through the daemon's engine wrapper (``TapEngine``, a listener
    timestamps every event) -- the daemon's in-process path without HTTP (HTTP overhead per
    request: benchmarks/daemon_overhead.py). c different prompts, temperature 0.8, seeds 0..c-1.
(b) bare: parallel_sampling.py's ``RawLoop`` (one llama_decode per step, native samplers, no
    Python beyond the loop) at n=c on one prompt (shared prompt KV; it prefills once).
(c) sequential: the same c requests one at a time on a serialised engine (the CLI/library path).

Decode tok/s = tokens after each sequence's first / time from the first sampled token to the
last (prefill excluded where it comes before the first token), summed over sequences. For (a)
that window includes the prefill steps of requests admitted after the first one started
(different prompts cannot share a prefill); ``a_steady_tok_s`` counts only the window in which
all c requests were decoding. Per request: finish time (from the common start) in (a) vs in the
sequential FIFO schedule of (c) (request i behind requests 0..i-1), and vs the sequential
makespan (a request served one at a time behind all the others).
"""

from __future__ import annotations

import json
import statistics
import threading
import time

from _common import Col, TableStream, emit, median_or_none, parser, run_main
from parallel_sampling import PROMPT, SAMPLING, RawLoop, run_meta

from edgekit.engines.llamacpp import LlamaCppEngine, default_threads
from edgekit.models import resolve
from edgekit.runtime import Runtime
from edgekit.serve.tap import TapEngine

TOPICS = [
    "a red-black tree",
    "an AVL tree",
    "a B-tree",
    "a skip list",
    "a trie",
    "a binary heap",
    "an LRU cache",
    "a hash map with open addressing",
    "a splay tree",
    "a treap",
    "an interval tree",
    "a rope",
]


def prompt(i: int) -> str:
    return PROMPT.replace("a red-black tree", TOPICS[i % len(TOPICS)])


class Stamps:
    """A TapEngine listener: the time of every event of one call."""

    max_prompt_tokens: int | None = None

    def __init__(self) -> None:
        self.tokens: list[float] = []

    def on_start(self) -> None:
        pass

    def cancelled(self) -> bool:
        return False

    def on_event(self, ev) -> None:
        if ev.kind == "token":
            now = time.perf_counter()
            self.tokens.append(now)


def batched(
    rt: Runtime, tap: TapEngine, c: int, budget: int, first_deadline_s: float | None = None, lead_s: float = 0.0
) -> dict:
    """``lead_s``: request 0 is sent this long before the others (it is first in line);
    ``first_deadline_s``: it carries this deadline (the others none), so the scheduler's
    deadline-aware cap keeps it in line (the first-in-line figure, #20)."""
    stamps = [Stamps() for _ in range(c)]
    done = [0.0] * c
    barrier = threading.Barrier(c + 1)

    def client(i: int) -> None:
        dl = {"deadline_s": first_deadline_s} if i == 0 and first_deadline_s else {}
        barrier.wait()
        if i and lead_s:
            time.sleep(lead_s)
        with tap.listening(stamps[i]):
            rt.generate(prompt(i), max_tokens=budget, seed=i, aggregate="none", extractor=None, **SAMPLING, **dl)
        done[i] = time.perf_counter()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(c)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    live = [s for s in stamps if s.tokens]
    t_first = min(s.tokens[0] for s in live)
    t_last = max(s.tokens[-1] for s in live)
    toks = sum(len(s.tokens) - 1 for s in live)
    lo, hi = max(s.tokens[0] for s in live), min(s.tokens[-1] for s in live)  # every request decoding
    steady = sum(sum(1 for x in s.tokens if lo < x <= hi) for s in live)
    return {
        "tok_s": toks / (t_last - t_first) if t_last > t_first else None,
        "steady_tok_s": steady / (hi - lo) if hi > lo and steady else None,
        "tokens": sum(len(s.tokens) for s in stamps),
        "finish_s": [d - t0 for d in done],
    }


def sequential(rt: Runtime, c: int, budget: int) -> dict:
    toks = dec_s = 0.0
    t0 = time.perf_counter()
    finish, n = [], 0
    for i in range(c):
        r = rt.generate(prompt(i), max_tokens=budget, seed=i, aggregate="none", extractor=None, **SAMPLING)
        finish.append(time.perf_counter() - t0)
        toks += max(r.timings.generated_tokens - 1, 0)
        dec_s += r.timings.decode_s
        n += r.timings.generated_tokens
    return {"tok_s": toks / dec_s if dec_s else None, "tokens": n, "finish_s": finish}


def ratio(xs: list) -> float | None:
    return median_or_none([x for x in xs if x is not None])


def tok(xs: list[dict], ys: list) -> float | None:
    """Median of the per-rep ratios of ``xs``' decode tok/s to ``ys``."""
    return ratio([x["tok_s"] / y if x["tok_s"] and y else None for x, y in zip(xs, ys)])


def main(argv=None) -> int:
    ap = parser(__doc__, reps=3, model="qwen2.5-coder-0.5b-instruct", threads=True)
    ap.add_argument("--budget", type=int, default=128)
    ap.add_argument("--cs", default="1,4,8")
    ap.add_argument(
        "--first-deadline",
        type=float,
        default=None,
        metavar="F",
        help="also run (p): request 0 with a deadline of F x its solo time (from (c), same rep), the rest none",
    )
    ap.add_argument("--smoke", action="store_true", help="SmolLM2, c in {1,2}, 8 tokens, 1 rep: checks that it runs")
    a = ap.parse_args(argv)
    if a.smoke:
        a.model, a.budget, a.cs, a.reps = "smollm2-135m-instruct", 8, "1,2", 1
    cs = [int(x) for x in a.cs.split(",")]
    cmax = max(max(cs), 2)
    threads = a.threads or default_threads()
    path = str(resolve(a.model).path)
    serial = Runtime(LlamaCppEngine(path, threads=threads, n_ctx=512 + a.budget, max_n=2))
    p_max = max(len(serial.prompt_tokens(prompt(i))) for i in range(cmax))
    n_ctx = cmax * (p_max + a.budget) + 256
    tap = TapEngine(LlamaCppEngine(path, threads=threads, n_ctx=n_ctx, max_n=cmax, max_seqs=cmax))
    conc = Runtime(tap)
    raw = RawLoop(path, threads, 512 + cmax * a.budget, cmax)
    prompt_tokens = serial.prompt_tokens(PROMPT)
    batched(conc, tap, 2, 8)  # warm-up
    raw.rate(prompt_tokens, 2, 8, 0)
    sequential(serial, 1, 8)
    res: dict = {c: {"a": [], "b": [], "c": [], "p": [], "q": []} for c in cs}
    if a.first_deadline:  # the cap learns step costs from the engine's own steps: let it see every row count
        for c in cs:
            batched(conc, tap, c, 16)
    for rep in range(a.reps):
        for c in cs:  # interleaved: a, b, c (and p) for each c, every rep
            res[c]["a"].append(batched(conc, tap, c, a.budget))
            res[c]["b"].append(raw.rate(prompt_tokens, c, a.budget, 1000 * rep)[0])
            res[c]["c"].append(sequential(serial, c, a.budget))
            if a.first_deadline and c > 1:  # request 0 first in line (0.2 s ahead), with and without its deadline
                solo = res[c]["c"][-1]["finish_s"][0]
                lead = {"lead_s": 0.2}
                order = [None, a.first_deadline * solo][:: 1 if rep % 2 == 0 else -1]
                for dl in order:
                    got = batched(conc, tap, c, a.budget, first_deadline_s=dl, **lead)
                    got["solo_s"] = solo
                    res[c]["p" if dl else "q"].append(got)
    rows = []
    med = median_or_none
    makespan = lambda key: lambda r: statistics.median(max(x) for x in r[key])
    table = TableStream(
        enabled=not a.json,
        cols=["c", "a_batched_tok_s:.1f", "a_steady_tok_s:.1f", "b_bare_tok_s:.1f", "c_sequential_tok_s:.1f"]
        + ["a_over_b:.2f", "a_over_c:.2f", Col("makespan_a_s", makespan("finish_a_s"), ".2f")]
        + [Col("makespan_sequential_s", makespan("finish_sequential_s"), ".2f"), "later_than_sequential_fifo"],
    )
    for c in cs:
        A, B, C = res[c]["a"], res[c]["b"], res[c]["c"]
        row = {
            "c": c,
            "a_batched_tok_s": med([x["tok_s"] for x in A]),
            "a_steady_tok_s": med([x["steady_tok_s"] for x in A]),
            "b_bare_tok_s": med(B),
            "c_sequential_tok_s": med([x["tok_s"] for x in C]),
            "reps": a.reps,
        }
        row["a_over_b"] = (
            row["a_batched_tok_s"] / row["b_bare_tok_s"] if row["a_batched_tok_s"] and row["b_bare_tok_s"] else None
        )
        row["a_over_c"] = (
            row["a_batched_tok_s"] / row["c_sequential_tok_s"]
            if row["a_batched_tok_s"] and row["c_sequential_tok_s"]
            else None
        )
        # finish times, per rep: (a) vs the FIFO sequential schedule and vs the sequential makespan
        later_fifo = [sum(fa > fc for fa, fc in zip(x["finish_s"], y["finish_s"])) for x, y in zip(A, C)]
        row["finish_a_s"] = [x["finish_s"] for x in A]
        row["finish_sequential_s"] = [y["finish_s"] for y in C]
        row["later_than_sequential_fifo"] = later_fifo
        row["all_before_sequential_makespan"] = [max(x["finish_s"]) <= max(y["finish_s"]) for x, y in zip(A, C)]
        if res[c]["p"]:  # first in line: request 0 sent 0.2 s ahead, with a deadline (p) and without (q)
            Pp, Q = res[c]["p"], res[c]["q"]
            row["first_in_line"] = {
                "deadline_factor": a.first_deadline,
                "lead_s": 0.2,
                "solo_s": med([p["solo_s"] for p in Pp]),
                "uncapped_s": med([x["finish_s"][0] for x in Q]),
                "uncapped_over_solo": ratio([x["finish_s"][0] / x["solo_s"] for x in Q]),
                "paced_s": med([p["finish_s"][0] for p in Pp]),
                "paced_over_solo": ratio([p["finish_s"][0] / p["solo_s"] for p in Pp]),
                "paced_over_solo_per_rep": [p["finish_s"][0] / p["solo_s"] for p in Pp],
                "paced_tok_s": med([p["tok_s"] for p in Pp]),
                "uncapped_tok_s": med([x["tok_s"] for x in Q]),
                "paced_over_bare": tok(Pp, B),
                "uncapped_over_bare": tok(Q, B),
                "paced_over_uncapped": tok(Pp, [x["tok_s"] for x in Q]),
                "makespan_paced_over_uncapped": ratio([max(p["finish_s"]) / max(x["finish_s"]) for p, x in zip(Pp, Q)]),
                "finish_paced_s": [p["finish_s"] for p in Pp],
                "finish_uncapped_s": [x["finish_s"] for x in Q],
            }
        rows.append(row)
        table.row(row)
    meta = run_meta(
        a,
        threads,
        n_ctx_batched=n_ctx,
        max_seqs=cmax,
        method=f"measured, median of {a.reps} interleaved rep(s); decode tok/s excludes each sequence's first "
        "token; (a) in-process Runtime+TapEngine clients of the continuous-batching engine, (b) bare RawLoop at n=c "
        "(shared prompt), (c) one request at a time on a serialised engine",
    )
    emit({"rows": rows, **meta}, a.json, json.dumps(meta))
    for rt in (serial, conc):
        rt.close()
    return 0


if __name__ == "__main__":
    run_main(main)
