"""Does a quant type's CPU kernel speed transfer across matrix shapes? (why edgekit times block slices)

    python benchmarks/kernel_shapes.py [--types F16,Q8_0,Q4_0,Q4_K,Q5_0,Q6_K,Q4_1] [--reps 3] [--json]

For each block shape of a real model family (SmolLM2-135M: width 576, FFN 1536; Qwen2.5-0.5B: 896/4864;
Qwen2.5-1.5B: 1536/8960; a 2048/5632 block) it writes a synthetic llama GGUF (random F16 weights, a
few blocks, 512-token vocabulary so the blocks dominate), quantizes it with llama.cpp *pure* (every
matrix of the type, except where the width forces llama.cpp's fallback type, as in real files) and
times, with llama.cpp's batch API (2 threads, flash attention off, as edgekit runs):
prefill of 256 tokens and decode steps at n = 1 and n = 4, reported as picoseconds per block
weight element (median over reps). If one type's cost per element were shape-independent, a
device-wide per-type table could predict any file; the table shows it is not (2026-11-27: Q4_0
prefill 5.2 ps/el at width 576 vs 2.3 at 1536 on the CI VM).
"""

from __future__ import annotations

import ctypes
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import emit, log, parser, run_main

SHAPES = {  # name: (width E, FFN F, blocks L, heads, KV heads)
    "smollm2-135m": (576, 1536, 8, 9, 3),
    "qwen2.5-0.5b": (896, 4864, 4, 14, 2),
    "qwen2.5-1.5b": (1536, 8960, 2, 12, 2),
    "2048x5632": (2048, 5632, 2, 16, 4),
}
PURE = {"Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "Q3_K": "Q3_K_M"}  # llama_ftype name for a pure type


def write_synthetic(path: Path, E: int, F: int, L: int, H: int, Hkv: int, V: int = 512) -> int:
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(2048)
    w.add_embedding_length(E)
    w.add_block_count(L)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(Hkv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(E // H)
    w.add_file_type(1)
    toks = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    toks += [f"t{i}" for i in range(V - len(toks))]
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores([0.0] * V)
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * (V - 259))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    rng = np.random.default_rng(0)

    def r(*s):
        return (rng.standard_normal(s, dtype=np.float32) * 0.02).astype(np.float16)

    w.add_tensor("token_embd.weight", r(V, E))
    w.add_tensor("output_norm.weight", np.ones(E, np.float32))
    w.add_tensor("output.weight", r(V, E))
    kvd = E // H * Hkv
    for i in range(L):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(E, np.float32))
        w.add_tensor(p + "ffn_norm.weight", np.ones(E, np.float32))
        for name, shape in (
            ("attn_q", (E, E)),
            ("attn_k", (kvd, E)),
            ("attn_v", (kvd, E)),
            ("attn_output", (E, E)),
            ("ffn_gate", (F, E)),
            ("ffn_up", (F, E)),
            ("ffn_down", (E, F)),
        ):
            w.add_tensor(p + name + ".weight", r(*shape))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return L * (2 * E * E + 2 * kvd * E + 3 * E * F)


def quantize(ll, src: Path, dst: Path, typ: str) -> None:
    p = ll.llama_model_quantize_default_params()
    p.nthread, p.pure = 2, True
    p.ftype = getattr(ll, "LLAMA_FTYPE_MOSTLY_" + PURE.get(typ, typ))
    if ll.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(p)) != 0:
        raise RuntimeError(f"quantize to {typ} failed")


def time_model(ll, path: Path, reps: int, I: int = 256, steps: int = 8, threads: int = 2) -> dict:
    from edgekit.engines.llamacpp_probe import choose_for

    mp = ll.llama_model_default_params()
    # the kernels edgekit's probe found safe on this CPU (llama.cpp's default AMX buffers crash on some Xeons)
    mp.use_extra_bufts = choose_for(str(path), threads=threads).use_extra_bufts
    model = ll.llama_model_load_from_file(str(path).encode(), mp)
    cp = ll.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = 1024, 512, 512, 4
    cp.n_threads = cp.n_threads_batch = threads
    cp.kv_unified, cp.flash_attn_type = True, 0
    ctx = ll.llama_init_from_model(model, cp)
    mem = ll.llama_get_memory(ctx)
    b = ll.llama_batch_init(512, 0, 4)

    def run(toks, pos, seqs, all_logits=False):
        b.n_tokens = len(toks)
        for i, (t, q, s) in enumerate(zip(toks, pos, seqs)):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = t, q, 1, int(all_logits)
            b.seq_id[i][0] = s
        b.logits[len(toks) - 1] = 1
        if ll.llama_decode(ctx, b) != 0:
            raise RuntimeError("llama_decode failed")

    try:
        pre = []
        for r in range(reps + 1):  # the first is a warm-up
            ll.llama_memory_clear(mem, True)
            t = time.perf_counter()
            run([3 + i % 500 for i in range(I)], list(range(I)), [0] * I)
            if r:
                pre.append((time.perf_counter() - t) / I)
        out = {"prefill_s_per_token": statistics.median(pre)}
        for n in (1, 4):
            st = []
            for _ in range(reps):
                ll.llama_memory_clear(mem, True)
                run([3 + i for i in range(32)], list(range(32)), [0] * 32)
                for s in range(1, n):
                    ll.llama_memory_seq_cp(mem, 0, s, -1, -1)
                for k in range(steps):
                    t = time.perf_counter()
                    run([5 + k] * n, [32 + k] * n, list(range(n)), all_logits=True)
                    st.append(time.perf_counter() - t)
            out[f"step_s_n{n}"] = statistics.median(st)
        return out
    finally:
        ll.llama_batch_free(b)
        ll.llama_free(ctx)
        ll.llama_model_free(model)


def main(argv=None) -> int:
    ap = parser(__doc__, reps=3)
    ap.add_argument("--types", default="F16,Q8_0,Q4_0,Q4_K,Q5_0,Q6_K,Q4_1")
    a = ap.parse_args(argv)
    import llama_cpp as ll

    ll.llama_backend_init()

    @ll.llama_log_callback
    def quiet(level, text, user_data):
        pass

    ll.llama_log_set(quiet, ctypes.c_void_p(0))
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgekit-kernels-") as d:
        for name, (E, F, L, H, Hkv) in SHAPES.items():
            src = Path(d) / f"{name}-F16.gguf"
            nel = write_synthetic(src, E, F, L, H, Hkv)
            for typ in a.types.split(","):
                dst = src if typ == "F16" else Path(d) / f"{name}-{typ}.gguf"
                if typ != "F16":
                    quantize(ll, src, dst, typ)
                t = time_model(ll, dst, a.reps)
                rows.append(
                    {
                        "shape": name,
                        "width": E,
                        "ffn": F,
                        "type": typ,
                        "block_elements": nel,
                        "prefill_ps_per_el": t["prefill_s_per_token"] / nel * 1e12,
                        "decode_n1_ps_per_el": t["step_s_n1"] / nel * 1e12,
                        "decode_n4_ps_per_el": t["step_s_n4"] / nel * 1e12,
                    }
                )
                if typ != "F16":
                    dst.unlink()
                log(
                    f"{name:<14} {typ:<5} prefill {rows[-1]['prefill_ps_per_el']:6.2f}  decode n=1 "
                    f"{rows[-1]['decode_n1_ps_per_el']:6.2f}  n=4 {rows[-1]['decode_n4_ps_per_el']:6.2f} ps/element"
                )
            src.unlink()
    spread = {}
    for typ in a.types.split(","):
        v = [r["prefill_ps_per_el"] for r in rows if r["type"] == typ]
        spread[typ] = max(v) / min(v)
    out = {
        "rows": rows,
        "prefill_max_over_min_across_shapes": spread,
        "reps": a.reps,
        "method": f"measured: median over {a.reps} reps of llama_decode wall time (256-token prefill; 8 decode "
        "steps at n=1 and n=4), synthetic random-weight llama blocks quantized pure, 2 threads",
    }
    text = "max/min prefill cost per element across shapes: " + ", ".join(f"{k} {v:.2f}x" for k, v in spread.items())
    emit(out, a.json, text)
    return 0


if __name__ == "__main__":
    run_main(main)
