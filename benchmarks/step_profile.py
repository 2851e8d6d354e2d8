"""Where a decode step's time goes outside ``llama_decode``: cProfile over real ``Runtime.generate``
calls at n in {1,2,4,8,16}, grouped by what the work is, in ms per decode step.

    python benchmarks/step_profile.py [--model qwen2.5-coder-0.5b-instruct] [--budget 64] [--ns 1,2,4,8,16]
        [--grammar] [--json]

Groups (cProfile inclusive time of the named functions, so a group's figure includes the C calls
under it; ctypes calls are not profiled on their own): decode = ``BatchDecoder._decode``
(``llama_decode`` and the thread tuner's check); sample = picking every row's token (native
sampler calls, the grammar checks, the candidate bands); logprobs = the chosen tokens'
log-probabilities (the per-row log-sum-exp); accept = ``Row.accept`` (EOG check, detokenisation,
stop strings, events);
rest = everything else in the call (scheduler/batch bookkeeping, the runtime's event loop,
extraction, aggregation): total minus the groups. cProfile's own per-call overhead inflates the
Python-heavy groups; the ratios between groups, not the absolute figures, are the point.
"""

from __future__ import annotations

import cProfile
import json
import pstats

from _common import emit, parser, print_table, run_main
from parallel_sampling import GRAMMAR, GRAMMAR_PROMPT, PROMPT, SAMPLING  # run as a script: its folder is on sys.path

from edgekit.engines.llamacpp import default_threads
from edgekit.models import resolve
from edgekit.runtime import Runtime

# (file suffix, function) -> inclusive time; works on this branch and on the loop before it
DECODE = [("llamacpp_core.py", "_decode")]
SAMPLE_ALL = [
    ("llamacpp_core.py", "sample"),
    ("llamacpp_core.py", "<dictcomp>"),
]  # new: sample() holds lse; old: the dict of picks
LOGPROBS = [("llamacpp_sample.py", "lse"), ("llamacpp_core.py", "_logprobs")]
ACCEPT = [("llamacpp_core.py", "accept")]


def _cum(st: pstats.Stats, names) -> float:
    return sum(v[3] for (f, _, fn), v in st.stats.items() if any(f.endswith(a) and fn == b for a, b in names))


def profile(rt: Runtime, n: int, budget: int, grammar: bool) -> dict:
    kw = dict(SAMPLING, max_tokens=budget, n=n, seed=7, aggregate="none", extractor=None)
    if grammar:
        kw.update(grammar=GRAMMAR)
    pr = cProfile.Profile()
    pr.enable()
    r = rt.generate(PROMPT if not grammar else GRAMMAR_PROMPT, **kw)
    pr.disable()
    st = pstats.Stats(pr)
    steps = max(r.timings.steps, 1)
    out: dict = {"n": n, "steps": steps, "tokens": r.timings.generated_tokens}
    total = sum(v[3] for k, v in st.stats.items() if k[2] == "_generate" and k[0].endswith("runtime/core.py"))
    dec, lp, acc = _cum(st, DECODE), _cum(st, LOGPROBS), _cum(st, ACCEPT)
    smp = _cum(st, SAMPLE_ALL)
    if any(f.endswith("llamacpp_core.py") and fn == "sample" for f, _, fn in st.stats):
        smp -= lp  # this branch: lse runs inside sample()
    for g, t in (("decode", dec), ("sample", smp), ("logprobs", lp), ("accept", acc)):
        out[g + "_ms"] = 1e3 * t / steps
    seen = dec + smp + lp + acc
    out["rest_ms"] = 1e3 * (total - seen) / steps
    out["total_ms"] = 1e3 * total / steps
    out["outside_decode_pct"] = 100 * (1 - out["decode_ms"] / out["total_ms"])
    return out


def main(argv=None) -> int:
    ap = parser(__doc__, model="qwen2.5-coder-0.5b-instruct", threads=True)
    ap.add_argument("--budget", type=int, default=64)
    ap.add_argument("--ns", default="1,2,4,8,16")
    ap.add_argument("--grammar", action="store_true", help="constrain to the two-option answer grammar")
    a = ap.parse_args(argv)
    ns = [int(x) for x in a.ns.split(",")]
    threads = a.threads or default_threads()
    rt = Runtime(str(resolve(a.model).path), threads=threads, n_ctx=512 + max(ns) * a.budget, max_n=max(max(ns), 2))
    rt.generate(PROMPT, max_tokens=4, n=2, seed=0, aggregate="none", extractor=None)  # warm-up
    rows = [profile(rt, n, a.budget, a.grammar) for n in ns]
    meta = {
        "model": a.model,
        "budget": a.budget,
        "threads": threads,
        "grammar": a.grammar,
        "method": "measured: cProfile inclusive times over one Runtime.generate per n (seed 7), ms per decode step",
    }
    cols = ["n", "steps", "total_ms:.2f", "decode_ms:.2f", "sample_ms:.2f", "logprobs_ms:.2f", "accept_ms:.2f"]
    cols += ["rest_ms:.2f", "outside_decode_pct:.1f"]
    emit({"rows": rows, **meta}, a.json, lambda: (print_table(rows, cols), print(json.dumps(meta))))
    rt.close()
    return 0


if __name__ == "__main__":
    run_main(main)
