"""What picking the tokens of one decode step costs, edgekit against llama.cpp's native chain,
timed without a profiler in real generation loops (issue #22).

    python benchmarks/sample_cost.py [--model qwen2.5-coder-0.5b-instruct] [--ns 1,8] [--budget 64]
        [--reps 2] [--json]

edgekit: wall time of ``BatchDecoder.sample`` (every live row's token, its log-probability -- the
per-row log-sum-exp -- and its confidence scores) per decode step, in ``Runtime.generate`` with the
parallel_sampling settings (T=0.8, top-k 40, top-p 0.95, min-p 0.05). native: wall time of
``llama_sampler_sample`` (the same chain, no log-probabilities) per row in parallel_sampling.py's
bare native loop, times n for a step. Both loops run in turn, ``--reps`` times each; ms per step,
mean over every step of every rep. ``llama_decode`` itself is timed too (``decode_ms``, steps of
n rows only) to show the two loops decode at the same speed.
"""

from __future__ import annotations

import time

import parallel_sampling as ps
from _common import emit, parser, print_table, run_main
from parallel_sampling import PROMPT, NativeLoop, edgekit_rate  # run as a script: its folder is on sys.path

import edgekit.engines.llamacpp_core as core
from edgekit.engines.llamacpp import default_threads
from edgekit.models import resolve
from edgekit.runtime import Runtime


class Clock:
    """Accumulates the wall time of wrapped calls under the current label."""

    def __init__(self):
        self.label = None
        self.t: dict = {}
        self.calls: dict = {}

    def wrap(self, f, what: str, rows_of=None):
        def timed(*a):
            t0 = time.perf_counter()
            r = f(*a)
            if self.label is not None and (rows_of is None or rows_of(a)):
                k = (self.label, what)
                self.t[k] = self.t.get(k, 0.0) + time.perf_counter() - t0
                self.calls[k] = self.calls.get(k, 0) + 1
            return r

        return timed

    def ms(self, label: str, what: str, per: float = 1.0) -> float | None:
        k = (label, what)
        return self.t[k] / self.calls[k] * per * 1e3 if self.calls.get(k) else None


def main(argv=None) -> int:
    ap = parser(__doc__, model="qwen2.5-coder-0.5b-instruct", threads=True, reps=2)
    ap.add_argument("--budget", type=int, default=64)
    ap.add_argument("--ns", default="1,8")
    a = ap.parse_args(argv)
    ns = [int(x) for x in a.ns.split(",")]
    threads = a.threads or default_threads()
    path = str(resolve(a.model).path)
    n_ctx = 512 + max(ns) * a.budget
    clock = Clock()
    want_n = {"n": 1}
    decode = clock.wrap(ps.ll.llama_decode, "decode", rows_of=lambda args: args[1].n_tokens == want_n["n"])
    core.ll.llama_decode = ps.ll.llama_decode = decode  # both loops call llama_decode through these modules
    ps.ll.llama_sampler_sample = clock.wrap(ps.ll.llama_sampler_sample, "pick")
    core.BatchDecoder.sample = clock.wrap(core.BatchDecoder.sample, "pick")
    rt = Runtime(path, threads=threads, n_ctx=max(n_ctx, 1024), max_n=max(max(ns), 2))
    native = NativeLoop(path, threads, max(n_ctx, 1024), max(max(ns), 2))
    prompt_tokens = rt.prompt_tokens(PROMPT)
    rows = []
    for n in ns:
        want_n["n"] = n
        edgekit_rate(rt, n, 8, 0)  # warm both
        native.rate(prompt_tokens, n, 8, 0)
        for rep in range(a.reps):
            for label in ("edgekit", "native") if rep % 2 == 0 else ("native", "edgekit"):
                clock.label = f"{label}{n}"
                if label == "edgekit":
                    edgekit_rate(rt, n, a.budget, rep + 1)
                else:
                    native.rate(prompt_tokens, n, a.budget, rep + 1)
                clock.label = None
        e, nat = clock.ms(f"edgekit{n}", "pick"), clock.ms(f"native{n}", "pick", per=n)
        rows.append(
            {
                "n": n,
                "edgekit_pick_ms": e,
                "native_pick_ms": nat,
                "extra_ms": e - nat if e is not None and nat is not None else None,
                "edgekit_decode_ms": clock.ms(f"edgekit{n}", "decode"),
                "native_decode_ms": clock.ms(f"native{n}", "decode"),
            }
        )
    meta = {
        "model": a.model,
        "budget": a.budget,
        "threads": threads,
        "reps": a.reps,
        "method": "measured: wall time of the wrapped calls, mean ms per decode step over every step of every rep",
    }
    cols = ["n", "edgekit_pick_ms:.3f", "native_pick_ms:.3f", "extra_ms:.3f", "edgekit_decode_ms:.2f"]
    cols += ["native_decode_ms:.2f"]
    emit({"rows": rows, **meta}, a.json, lambda: print_table(rows, cols))
    rt.close()
    return 0


if __name__ == "__main__":
    run_main(main)
