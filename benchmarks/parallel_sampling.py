"""Aggregate decode tokens/s of n parallel samples: edgekit vs sequential high-level calls vs a
bare low-level batched loop (the backend's limit). One prompt, one budget, n in {1,2,4,8,16}.

    python benchmarks/parallel_sampling.py [--model qwen2.5-coder-0.5b-instruct] [--reps 2] [--json]

Decode tok/s everywhere = tokens after each sequence's first / time from the first token to
the last (prefill excluded), summed over the n samples. Median over --reps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import llama_cpp as ll

from edgekit.models import resolve
from edgekit.runtime import Runtime
from edgekit.engines.llamacpp import default_threads

PROMPT = ("Write a complete Python module implementing a red-black tree with insert, delete, search and in-order "
          "traversal. Include type hints and a docstring for every method.")  # long answers: samples rarely stop early
SAMPLING = dict(temperature=0.8, top_p=0.95, top_k=40, min_p=0.05)


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
        for chunk in llm.create_completion(prompt_text, max_tokens=budget, stream=True, seed=seed + i,
                                           temperature=SAMPLING["temperature"], top_p=SAMPLING["top_p"],
                                           top_k=SAMPLING["top_k"], min_p=SAMPLING["min_p"]):
            now = time.perf_counter()
            if first is None:
                first = now
            last = now
            count += 1
        toks += max(count - 1, 0)
        dec_s += (last - first) if first is not None else 0.0
    return toks / dec_s, int(toks + n)


class RawLoop:
    """A bare llama.cpp batched decode: shared prompt (multi-seq-id tokens), native samplers."""

    def __init__(self, path: str, threads: int, n_ctx: int, max_n: int):
        ll.llama_backend_init()
        mp = ll.llama_model_default_params()
        self.model = ll.llama_model_load_from_file(path.encode(), mp)
        cp = ll.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = n_ctx, 512, 512, max_n
        cp.n_threads = cp.n_threads_batch = threads
        cp.kv_unified = True
        cp.flash_attn_type = 0 if not ll.llama_supports_gpu_offload() else -1  # same attention kernel as edgekit's default
        self.ctx = ll.llama_init_from_model(self.model, cp)
        self.vocab = ll.llama_model_get_vocab(self.model)
        self.mem = ll.llama_get_memory(self.ctx)
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
        smpl = []
        for s in range(n):
            ch = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
            ll.llama_sampler_chain_add(ch, ll.llama_sampler_init_top_k(SAMPLING["top_k"]))
            ll.llama_sampler_chain_add(ch, ll.llama_sampler_init_top_p(SAMPLING["top_p"], 1))
            ll.llama_sampler_chain_add(ch, ll.llama_sampler_init_min_p(SAMPLING["min_p"], 1))
            ll.llama_sampler_chain_add(ch, ll.llama_sampler_init_temp(SAMPLING["temperature"]))
            ll.llama_sampler_chain_add(ch, ll.llama_sampler_init_dist(seed + s))
            smpl.append(ch)
        live = list(range(n))
        idx = {s: P - 1 for s in live}
        count = {s: 0 for s in live}
        t_first = None
        total = 0
        while live:
            nxt = []
            for s in live:
                tok = ll.llama_sampler_sample(smpl[s], self.ctx, idx[s])
                if t_first is None:
                    t_first = time.perf_counter()
                if ll.llama_vocab_is_eog(self.vocab, tok):
                    continue
                count[s] += 1
                total += 1
                if count[s] < budget:
                    nxt.append((s, tok))
            live = [s for s, _ in nxt]
            if not live:
                break
            for j, (s, tok) in enumerate(nxt):
                b.token[j], b.pos[j], b.n_seq_id[j], b.logits[j] = tok, P + count[s] - 1, 1, 1
                b.seq_id[j][0] = s
                idx[s] = j
            b.n_tokens = len(nxt)
            assert ll.llama_decode(self.ctx, b) == 0
        t_end = time.perf_counter()
        for ch in smpl:
            ll.llama_sampler_free(ch)
        return (total - n) / (t_end - t_first), total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--budget", type=int, default=128)
    ap.add_argument("--ns", default="1,2,4,8,16")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    ns = [int(x) for x in a.ns.split(",")]
    threads = a.threads or default_threads()
    path = str(resolve(a.model).path)
    n_ctx = 512 + max(ns) * a.budget
    rt = Runtime(path, threads=threads, n_ctx=n_ctx, max_n=max(max(ns), 2))
    prompt_tokens = rt.prompt_tokens(PROMPT)
    prompt_text, _ = rt.engine.render_chat([{"role": "user", "content": PROMPT}])
    raw = RawLoop(path, threads, n_ctx, max(max(ns), 2))
    llm = ll.Llama(model_path=path, n_ctx=512 + a.budget, n_threads=threads, verbose=False)
    # warm-up
    edgekit_rate(rt, 2, 8, 0)
    raw.rate(prompt_tokens, 2, 8, 0)
    sequential_rate(llm, 1, 8, 0, prompt_text)
    rows = []
    for n in ns:
        e, s, r = [], [], []
        toks = {"edgekit": [], "sequential": [], "raw": []}
        for rep in range(a.reps):
            seed = 1000 * rep
            x, k = edgekit_rate(rt, n, a.budget, seed); e.append(x); toks["edgekit"].append(k)
            x, k = raw.rate(prompt_tokens, n, a.budget, seed); r.append(x); toks["raw"].append(k)
            x, k = sequential_rate(llm, n, a.budget, seed, prompt_text); s.append(x); toks["sequential"].append(k)
        row = {"n": n, "edgekit_tok_s": statistics.median(e), "sequential_tok_s": statistics.median(s),
               "raw_tok_s": statistics.median(r), "reps": a.reps,
               "samples": {"edgekit": e, "sequential": s, "raw": r}, "tokens": toks}
        row["a_over_b"] = row["edgekit_tok_s"] / row["sequential_tok_s"]
        row["a_over_c"] = row["edgekit_tok_s"] / row["raw_tok_s"]
        rows.append(row)
        if not a.json:
            print(f"n={n:2d}  edgekit {row['edgekit_tok_s']:6.1f}  sequential {row['sequential_tok_s']:6.1f}  "
                  f"raw {row['raw_tok_s']:6.1f} tok/s   a/b {row['a_over_b']:.2f}  a/c {row['a_over_c']:.2f}", flush=True)
    meta = {"model": a.model, "budget": a.budget, "threads": threads, "prompt_tokens": len(prompt_tokens),
            "method": f"measured, median of {a.reps} rep(s); decode tok/s excludes prefill and each sequence's first token",
            "llama_cpp_python": ll.__version__}
    if a.json:
        print(json.dumps({"rows": rows, **meta}, indent=1))
    else:
        print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
