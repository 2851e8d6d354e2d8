"""Decode speed of each llama.cpp kernel configuration edgekit's probe chooses between, per model.

    python benchmarks/kernel_configs.py [MODEL ...] [--reps 3] [--json]

For each model (catalogue id or .gguf path) and repetition, every configuration (``default``:
extra buffer types -- AMX / repacked weights; ``plain``: ``use_extra_bufts = False``) runs the
probe's own child process, interleaved: n=1 decode on one thread (median of 12 steps) and 4 rows
per step on the usable threads from a second thread. Medians over repetitions; ``plain/default``
is the ratio of medians. Run it on a quiet machine.
"""

from __future__ import annotations

from _common import Col, emit, log, median_or_none, parser, print_table, run_main

from edgekit.engines.llamacpp_probe import run_child
from edgekit.host.cpu import cpu_model, usable_cpus
from edgekit.host.kernels import CONFIGS
from edgekit.models.gguf import check_gguf
from edgekit.models.store import resolve


def main(argv=None) -> int:
    ap = parser(__doc__, reps=3)
    ap.add_argument("models", nargs="*", default=["qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct"])
    a = ap.parse_args(argv)
    threads = usable_cpus().count
    rows = []
    for spec in a.models:
        path = str(resolve(spec).path)
        quant = check_gguf(path).quant
        got: dict[str, list] = {c: [] for c in CONFIGS}
        for _ in range(a.reps):
            for c in CONFIGS:
                got[c].append(run_child(path, c, threads=threads, gpu_layers=0, timeout=300))
        row = {"model": spec, "quant": quant}
        for c, vs in got.items():
            ok = [v for v in vs if v.ok]
            row[c] = {
                "ok": len(ok) == len(vs),
                "how": sorted({v.how for v in vs}),
                "decode_tok_s": median_or_none(v.decode_tok_s for v in ok),
                "batch4_tok_s": median_or_none(v.batch_tok_s for v in ok),
                "decode_samples": [v.decode_tok_s for v in ok],
            }
        d, p = row["default"], row["plain"]
        if d["decode_tok_s"] and p["decode_tok_s"]:
            row["plain_over_default_decode"] = p["decode_tok_s"] / d["decode_tok_s"]
            row["plain_over_default_batch4"] = p["batch4_tok_s"] / d["batch4_tok_s"]
        rows.append(row)
        if not a.json:
            log(
                f"{spec} ({quant}): default {d['decode_tok_s']} tok/s n=1 (1 thread), {d['batch4_tok_s']} tok/s 4 rows "
                f"({threads} threads); plain {p['decode_tok_s']} / {p['batch4_tok_s']}"
            )
    doc = {"cpu": cpu_model(), "threads": threads, "reps": a.reps, "rows": rows}
    quant = Col("quant", lambda r: r["quant"] or "?")
    cols = ["model", quant, "plain_over_default_decode:.3f", "plain_over_default_batch4:.3f"]
    emit(doc, a.json, lambda: print_table(rows, cols))
    return 0


if __name__ == "__main__":
    run_main(main)
