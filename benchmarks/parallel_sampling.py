"""Aggregate decode tokens/s of n parallel samples: edgekit vs sequential high-level calls vs two
bare low-level batched loops (the backend's limit). One prompt, one budget, n in {1,2,4,8,16}.

    python benchmarks/parallel_sampling.py [--model qwen2.5-coder-0.5b-instruct] [--reps 2] [--json]
    python benchmarks/parallel_sampling.py --gpu-layers -1 --ns 32 --energy --paths edgekit,raw   # on a GPU

    python benchmarks/parallel_sampling.py --grammar [--reps 5]   # constrained vs unconstrained step time, n=8

Decode tok/s everywhere = tokens after each sequence's first / time from the first token to
the last (prefill excluded), summed over the n samples. Median over --reps; within a rep the
loops run interleaved for each n, the order reversed every other rep (edgekit, raw, native, sequential, then
sequential, native, raw, edgekit); `a_over_native_paired` is the median of the per-rep ratios, with an
exact distribution-free 95 % interval (`_lo`, `_hi`: order statistics; needs >= 6 reps).

- raw (``RawLoop``): this benchmark's own bare loop (prompt tokens tagged with all n sequence ids).
- native (``NativeLoop``): an independent bare loop written the way llama.cpp's ``batched``
  example is: prompt once on sequence 0, ``llama_memory_seq_cp`` to the others, numpy views on
  the batch arrays, llama.cpp's native sampler chain per row (``llama_sampler_sample``: top-k,
  top-p, min-p, temperature, dist, edgekit's settings), an EOG check and nothing else per token.
  It loads with the kernel configuration edgekit's probe chose, so both run the same kernels.

``--grammar``: at n=8, edgekit's time per decode step constrained by the two-option answer grammar
and by a robot-action JSON schema, each against the same call unconstrained for the same number of
steps (``ignore_eos``, every row decoding every step: the unconstrained side never has fewer rows);
step time = decode time / (steps - 1), ratio = constrained / unconstrained, median over --reps.
"""

from __future__ import annotations

import json
import statistics
import time
from functools import partial

import llama_cpp as ll
import numpy as np
from _common import TableStream, emit, median_interval, median_or_none, parser, run_main

from edgekit.engines.llamacpp import default_threads
from edgekit.host.cpu import cpu_model
from edgekit.models import resolve
from edgekit.runtime import Runtime

PROMPT = (
    "Write a complete Python module implementing a red-black tree with insert, delete, search and in-order "
    "traversal. Include type hints and a docstring for every method."
)  # long answers: samples rarely stop early
SAMPLING = dict(temperature=0.8, top_p=0.95, top_k=40, min_p=0.05)
GRAMMAR = 'root ::= "yes" | "no"'  # the two-option answer grammar
GRAMMAR_PROMPT = "Is the sky blue on a clear day? Answer yes or no."
SCHEMA = {
    "type": "object",
    "properties": {
        "action": {"enum": ["move", "grip", "release", "stop"]},
        "x": {"type": "number"},
        "y": {"type": "number"},
        "speed": {"type": "number"},
    },
    "required": ["action", "x", "y", "speed"],
    "additionalProperties": False,
}  # a robot action
SCHEMA_PROMPT = "The red cube is at (0.4, -0.2). Give the robot arm's next action as JSON."


def edgekit_rate(rt: Runtime, n: int, budget: int, seed: int) -> tuple[float, int]:
    r = rt.generate(PROMPT, max_tokens=budget, n=n, seed=seed, aggregate="none", extractor=None, **SAMPLING)
    t = r.timings
    return (t.generated_tokens - n) / t.decode_s, t.generated_tokens


def sequential_rate(llm, n: int, budget: int, seed: int, prompt_text: str) -> tuple[float, int]:
    toks = dec_s = 0.0
    for i in range(n):
        llm.set_seed(seed + i)
        first = last = None
        count = 0
        for _chunk in llm.create_completion(
            prompt_text,
            max_tokens=budget,
            stream=True,
            seed=seed + i,
            temperature=SAMPLING["temperature"],
            top_p=SAMPLING["top_p"],
            top_k=SAMPLING["top_k"],
            min_p=SAMPLING["min_p"],
        ):
            now = time.perf_counter()
            if first is None:
                first = now
            last = now
            count += 1
        toks += max(count - 1, 0)
        dec_s += (last - first) if first is not None else 0.0
    return toks / dec_s, int(toks + n)


def open_context(path: str, threads: int, n_ctx: int, max_n: int, gpu_layers: int, flash: int, choose=None):
    """(model, ctx, vocab, memory) of a bare loop: ``n_ctx`` unified KV cells for ``max_n`` sequences; ``choose``:
    None (llama.cpp's default extra buffer types) or a callable giving edgekit's probe choice."""
    ll.llama_backend_init()
    mp = ll.llama_model_default_params()
    mp.n_gpu_layers = gpu_layers
    if choose is not None:
        mp.use_extra_bufts = choose().use_extra_bufts
    model = ll.llama_model_load_from_file(path.encode(), mp)
    cp = ll.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = n_ctx, 512, 512, max_n
    cp.n_threads = cp.n_threads_batch = threads
    cp.kv_unified = True
    cp.flash_attn_type = flash
    ctx = ll.llama_init_from_model(model, cp)
    return model, ctx, ll.llama_model_get_vocab(model), ll.llama_get_memory(ctx)


def sampler_chains(n: int, seed: int) -> list:
    """llama.cpp's native sampler chain per sequence, with edgekit's settings (top-k, top-p, min-p,
    temperature, dist seeded ``seed + s``); free each with ``llama_sampler_free``."""
    chains = []
    for s in range(n):
        ch = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        for smp in (
            ll.llama_sampler_init_top_k(SAMPLING["top_k"]),
            ll.llama_sampler_init_top_p(SAMPLING["top_p"], 1),
            ll.llama_sampler_init_min_p(SAMPLING["min_p"], 1),
            ll.llama_sampler_init_temp(SAMPLING["temperature"]),
            ll.llama_sampler_init_dist(seed + s),
        ):
            ll.llama_sampler_chain_add(ch, smp)
        chains.append(ch)
    return chains


def sample_live(chains: list, ctx, vocab, live: list[int], row, count: list[int], budget: int):
    """One step: each live sequence ``s`` draws from logits row ``row[s]`` and ends at EOG or ``budget`` tokens.
    Returns the (sequence, token) pairs going on, tokens made, when the first draw returned (logits ready)."""
    nxt, made, t_first = [], 0, None
    for s in live:
        tok = ll.llama_sampler_sample(chains[s], ctx, row[s])
        if t_first is None:
            t_first = time.perf_counter()
        if ll.llama_vocab_is_eog(vocab, tok):
            continue
        count[s] += 1
        made += 1
        if count[s] < budget:
            nxt.append((s, tok))
    return nxt, made, t_first


def decode_loop(ctx, vocab, chains: list, row, budget: int, feed) -> tuple[float, int]:
    """Sample and decode until every sequence ends (the prompt decoded, ``row[s]`` its logits row):
    ``feed(nxt, count)`` fills the batch with the (sequence, token) pairs going on, points ``row`` at their
    rows and returns the batch. Frees the chains. Returns decode tokens/s after the first draw, tokens made."""
    n = len(chains)
    live = list(range(n))
    count = [0] * n
    total, t_first = 0, None
    while live:
        nxt, made, t0 = sample_live(chains, ctx, vocab, live, row, count, budget)
        t_first = t_first or t0
        total += made
        live = [s for s, _ in nxt]
        if not live:
            break
        assert ll.llama_decode(ctx, feed(nxt, count)) == 0
    t_end = time.perf_counter()
    for ch in chains:
        ll.llama_sampler_free(ch)
    return (total - n) / (t_end - t_first), total


class RawLoop:
    """A bare llama.cpp batched decode: shared prompt (multi-seq-id tokens), native samplers."""

    def __init__(self, path: str, threads: int, n_ctx: int, max_n: int, gpu_layers: int = 0):
        from edgekit.engines.llamacpp_probe import choose_for

        # same attention kernel as edgekit's default: off on a CPU, llama.cpp's auto choice when offloading;
        # the kernels edgekit's probe found safe here (llama.cpp's default AMX buffers crash on some Xeons)
        flash = -1 if ll.llama_supports_gpu_offload() and gpu_layers else 0
        choose = partial(choose_for, path, threads=threads, gpu_layers=gpu_layers)
        self.model, self.ctx, self.vocab, self.mem = open_context(
            path, threads, n_ctx, max_n, gpu_layers, flash, choose
        )
        self.batch = ll.llama_batch_init(512, 0, max_n)

    def rate(self, prompt_tokens: list[int], n: int, budget: int, seed: int) -> tuple[float, int]:
        ll.llama_memory_clear(self.mem, True)
        b = self.batch
        P = len(prompt_tokens)
        for i, t in enumerate(prompt_tokens):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = t, i, n, 0
            for s in range(n):
                b.seq_id[i][s] = s
        b.logits[P - 1] = 1
        b.n_tokens = P
        assert ll.llama_decode(self.ctx, b) == 0
        idx = {s: P - 1 for s in range(n)}

        def feed(nxt: list, count: list[int]):
            for j, (s, tok) in enumerate(nxt):
                b.token[j], b.pos[j], b.n_seq_id[j], b.logits[j] = tok, P + count[s] - 1, 1, 1
                b.seq_id[j][0] = s
                idx[s] = j
            b.n_tokens = len(nxt)
            return b

        return decode_loop(self.ctx, self.vocab, sampler_chains(n, seed), idx, budget, feed)


def idle_power_mw(meter, seconds: float = 1.0):
    with meter.window() as w:
        time.sleep(seconds)
    return w.mean_power_mw


def energy_row(windows: list, idle_mw, tokens: list[int]) -> dict:
    """J per generated token over the edgekit generates of one n (raw, and above idle)."""
    ok = [(w, t) for w, t in zip(windows, tokens) if w.energy_mj is not None and w.covered_s and t > 0]
    if not ok:
        why = next((w.gap_reason for w in windows if w.gap_reason), None) or "no energy reading"
        return {"edgekit_j_per_token": None, "energy_why_unavailable": why}
    per = [w.energy_mj / 1e3 / t for w, t in ok]
    above = [(w.energy_mj - idle_mw * w.covered_s) / 1e3 / t for w, t in ok] if idle_mw is not None else None
    return {
        "edgekit_j_per_token": statistics.median(per),
        "edgekit_j_per_token_above_idle": statistics.median(above) if above else None,
        "edgekit_mean_power_w": statistics.median([w.mean_power_mw / 1e3 for w, _ in ok if w.mean_power_mw]),
        "energy_method": f"{ok[0][0].meter} ({ok[0][0].method}): energy of each whole generate (prefill + decode) / "
        f"generated tokens, median of {len(ok)}; idle {idle_mw if idle_mw is None else round(idle_mw)} mW",
    }


class NativeLoop:
    """An independent bare batched loop: llama.cpp's ``batched`` example with the native sampler chain."""

    def __init__(self, path: str, threads: int, n_ctx: int, max_n: int, gpu_layers: int = 0):
        from edgekit.engines.llamacpp_probe import choose_for  # the kernels edgekit runs (extra buffer types or not)

        flash = 0 if not ll.llama_supports_gpu_offload() else -1
        choose = partial(choose_for, path, threads=threads, gpu_layers=gpu_layers)
        self.model, self.ctx, self.vocab, self.mem = open_context(
            path, threads, n_ctx, max_n, gpu_layers, flash, choose
        )
        self.cap = 512
        self.batch = ll.llama_batch_init(self.cap, 0, 1)
        b = self.batch
        self.tok = np.ctypeslib.as_array(b.token, shape=(self.cap,))
        self.pos = np.ctypeslib.as_array(b.pos, shape=(self.cap,))
        np.ctypeslib.as_array(b.n_seq_id, shape=(self.cap,))[:] = 1
        self.want = np.ctypeslib.as_array(b.logits, shape=(self.cap,))
        self.seq = [b.seq_id[i] for i in range(self.cap)]

    def rate(self, prompt_tokens: list[int], n: int, budget: int, seed: int) -> tuple[float, int]:
        ll.llama_memory_clear(self.mem, True)
        P = len(prompt_tokens)
        self.tok[:P] = prompt_tokens
        self.pos[:P] = np.arange(P)
        self.want[:P] = 0
        self.want[P - 1] = 1
        for i in range(P):
            self.seq[i][0] = 0
        self.batch.n_tokens = P
        assert ll.llama_decode(self.ctx, self.batch) == 0
        for s in range(1, n):
            ll.llama_memory_seq_cp(self.mem, 0, s, -1, -1)
        out = [-1] * n  # logits row of each sequence

        def feed(nxt: list, count: list[int]):
            for j, (s, t) in enumerate(nxt):
                self.tok[j] = t
                self.pos[j] = P + count[s] - 1
                self.seq[j][0] = s
                out[s] = j
            self.want[: len(nxt)] = 1
            self.batch.n_tokens = len(nxt)
            return self.batch

        return decode_loop(self.ctx, self.vocab, sampler_chains(n, seed), out, budget, feed)


def step_time(rt: Runtime, prompt: str, n: int, seed: int, **kw) -> tuple[float, int]:
    r = rt.generate(prompt, n=n, seed=seed, aggregate="none", extractor=None, **SAMPLING, **kw)
    return r.timings.decode_s / max(r.timings.steps - 1, 1), r.timings.steps


def grammar_ratios(rt: Runtime, reps: int, n: int = 8) -> dict:
    """Constrained vs unconstrained step time at n, interleaved per rep, for the grammar and the schema."""
    out = {}
    for name, prompt, kw, budget in (
        ("step_ratio", GRAMMAR_PROMPT, {"grammar": GRAMMAR}, 8),
        ("schema_step_ratio", SCHEMA_PROMPT, {"json_schema": SCHEMA}, 64),
    ):
        ratios, con, unc = [], [], []
        for rep in range(reps):  # constrained, unconstrained, constrained again (ABA: drift cancels to first order)
            c1, steps = step_time(rt, prompt, n, 100 + rep, max_tokens=budget, **kw)
            u, _ = step_time(rt, prompt, n, 100 + rep, max_tokens=max(steps, 2), ignore_eos=True)
            c2, _ = step_time(rt, prompt, n, 100 + rep, max_tokens=budget, **kw)
            c = (c1 + c2) / 2
            con.append(c), unc.append(u), ratios.append(c / u)
        out[name] = statistics.median(ratios)
        out[name.replace("ratio", "s")] = {"constrained": con, "unconstrained": unc}
    return {"n": n, **out}


def run_meta(a, threads: int, **extra) -> dict:
    """What a run's JSON says besides its rows (here and in daemon_batching.py): model, budget, threads, ``extra``,
    the llama-cpp-python version."""
    return {"model": a.model, "budget": a.budget, "threads": threads, **extra, "llama_cpp_python": ll.__version__}


def main(argv=None) -> int:
    ap = parser(__doc__, reps=1, model="qwen2.5-coder-0.5b-instruct", threads=True)
    ap.add_argument("--budget", type=int, default=128)
    ap.add_argument("--ns", default="1,2,4,8,16")
    ap.add_argument("--gpu-layers", type=int, default=0, help="layers offloaded to the GPU in every path (-1: all)")
    ap.add_argument(
        "--paths", default="edgekit,raw,native,sequential", help="comma list of edgekit, raw, native, sequential"
    )
    ap.add_argument("--energy", action="store_true", help="J/token of each edgekit generate (best power meter)")
    ap.add_argument("--grammar", action="store_true", help="also constrained vs unconstrained step time at n=8")
    ap.add_argument(
        "--no-sequential", action="store_true", help="skip the sequential high-level calls (the slow column)"
    )
    a = ap.parse_args(argv)
    ns = [int(x) for x in a.ns.split(",")]
    paths = [p.strip() for p in a.paths.split(",") if p.strip()]
    if "edgekit" not in paths or not set(paths) <= {"edgekit", "raw", "native", "sequential"}:
        ap.error("--paths: a comma list of edgekit, raw, native, sequential that includes edgekit")
    threads = a.threads or default_threads()
    path = str(resolve(a.model).path)
    n_ctx = 512 + max(ns) * a.budget
    rt = Runtime(
        path,
        threads=threads,
        n_ctx=max(n_ctx, 1024 + 8 * 64),
        max_n=max(max(ns), 8 if a.grammar else 2),
        gpu_layers=a.gpu_layers,
    )
    prompt_tokens = rt.prompt_tokens(PROMPT)
    prompt_text, _ = rt.engine.render_chat([{"role": "user", "content": PROMPT}])
    raw = RawLoop(path, threads, n_ctx, max(max(ns), 2), a.gpu_layers) if "raw" in paths else None
    native = NativeLoop(path, threads, n_ctx, max(max(ns), 2), a.gpu_layers) if "native" in paths else None
    llm = (
        ll.Llama(model_path=path, n_ctx=512 + a.budget, n_threads=threads, n_gpu_layers=a.gpu_layers, verbose=False)
        if "sequential" in paths and not a.no_sequential
        else None
    )
    meter = idle_mw = None
    if a.energy:
        from edgekit.power import best_meter

        meter = best_meter()
        idle_mw = idle_power_mw(meter) if meter.available else None
    # warm-up
    edgekit_rate(rt, 2, 8, 0)
    if raw:
        raw.rate(prompt_tokens, 2, 8, 0)
    if native:
        native.rate(prompt_tokens, 2, 8, 0)
    if llm:
        sequential_rate(llm, 1, 8, 0, prompt_text)
    rows = []
    table = TableStream(
        enabled=not a.json,
        cols=[
            "n",
            "edgekit_tok_s:.1f",
            "sequential_tok_s:.1f",
            "raw_tok_s:.1f",
            "native_tok_s:.1f",
            "a_over_b:.2f",
            "a_over_c:.2f",
            "a_over_native:.3f",
            "a_over_native_paired:.3f",
            "a_over_native_paired_lo:.3f",
            "a_over_native_paired_hi:.3f",
        ],
    )
    for n in ns:
        e, s, r, nat = [], [], [], []
        toks = {"edgekit": [], "sequential": [], "raw": [], "native": []}
        windows = []
        runs = {
            "edgekit": (e, lambda seed, n=n: edgekit_rate(rt, n, a.budget, seed)),
            "raw": (r, raw and (lambda seed, n=n: raw.rate(prompt_tokens, n, a.budget, seed))),
            "native": (nat, native and (lambda seed, n=n: native.rate(prompt_tokens, n, a.budget, seed))),
            "sequential": (s, llm and (lambda seed, n=n: sequential_rate(llm, n, a.budget, seed, prompt_text))),
        }
        order = [p for p in runs if runs[p][1]]
        for rep in range(a.reps):
            seed = 1000 * rep
            # the paths take turns going first (ABBA...): a drift within a rep does not always favour one path
            for p in order if rep % 2 == 0 else order[::-1]:
                out, run = runs[p]
                if p == "edgekit" and meter is not None:
                    with meter.window() as w:
                        x, k = run(seed)
                    windows.append(w)
                else:
                    x, k = run(seed)
                out.append(x)
                toks[p].append(k)
        row = {
            "n": n,
            "edgekit_tok_s": statistics.median(e),
            "sequential_tok_s": median_or_none(s),
            "raw_tok_s": median_or_none(r),
            "native_tok_s": median_or_none(nat),
            "reps": a.reps,
            "samples": {"edgekit": e, "sequential": s, "raw": r, "native": nat},
            "tokens": toks,
        }
        row["a_over_b"] = row["edgekit_tok_s"] / row["sequential_tok_s"] if s else None
        row["a_over_c"] = row["edgekit_tok_s"] / row["raw_tok_s"] if r else None
        row["a_over_native"] = row["edgekit_tok_s"] / row["native_tok_s"] if nat else None
        row["a_over_native_per_rep"] = [x / y for x, y in zip(e, nat)]
        # the paired figure: median of the per-rep ratios (each rep's runs are adjacent in time)
        row["a_over_native_paired"] = statistics.median(row["a_over_native_per_rep"]) if nat else None
        lo, hi = median_interval(row["a_over_native_per_rep"])  # exact 95 % interval of that median (>= 6 reps)
        row["a_over_native_paired_lo"], row["a_over_native_paired_hi"] = lo, hi
        if meter is not None:
            row.update(energy_row(windows, idle_mw, toks["edgekit"]))
        rows.append(row)
        table.row(row)
    gram = grammar_ratios(rt, a.reps) if a.grammar else None
    if gram is not None and not a.json:
        print(
            f"grammar n={gram['n']}: two-option step ratio {gram['step_ratio']:.2f}, "
            f"robot-action schema step ratio {gram['schema_step_ratio']:.2f} (constrained / unconstrained)",
            flush=True,
        )
    meta = run_meta(
        a,
        threads,
        prompt_tokens=len(prompt_tokens),
        gpu_layers=a.gpu_layers,
        paths=paths,
        build=rt.engine.info.build,
        n_ctx=n_ctx,
        cpu=cpu_model(),
        method=f"measured, median of {a.reps} rep(s); decode tok/s excludes prefill and each sequence's first token",
    )
    if gram is not None:
        meta["grammar"] = gram
    emit({"rows": rows, **meta}, a.json, json.dumps(meta))
    return 0


if __name__ == "__main__":
    run_main(main)
