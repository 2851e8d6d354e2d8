"""Decode speed of each llama.cpp kernel configuration edgekit's probe chooses between, per model.

    python benchmarks/kernel_configs.py [MODEL ...] [--reps 3] [--json]

For each model (catalogue id or .gguf path) and repetition, every configuration (``default``:
extra buffer types -- AMX / repacked weights; ``plain``: ``use_extra_bufts = False``) runs the
probe's own child process, interleaved: n=1 decode on one thread (median of 12 steps) and 4 rows
per step on the usable threads from a second thread. Medians over repetitions; ``plain/default``
is the ratio of medians. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from edgekit.engines.llamacpp_probe import run_child
from edgekit.host.cpu import cpu_model, usable_cpus
from edgekit.host.kernels import CONFIGS
from edgekit.models.gguf import check_gguf
from edgekit.models.store import resolve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="*", default=["qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct"])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
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
                "decode_tok_s": statistics.median(v.decode_tok_s for v in ok) if ok else None,
                "batch4_tok_s": statistics.median(v.batch_tok_s for v in ok) if ok else None,
                "decode_samples": [v.decode_tok_s for v in ok],
            }
        d, p = row["default"], row["plain"]
        if d["decode_tok_s"] and p["decode_tok_s"]:
            row["plain_over_default_decode"] = p["decode_tok_s"] / d["decode_tok_s"]
            row["plain_over_default_batch4"] = p["batch4_tok_s"] / d["batch4_tok_s"]
        rows.append(row)
        if not a.json:
            print(
                f"{spec} ({quant}): default {d['decode_tok_s']} tok/s n=1 (1 thread), {d['batch4_tok_s']} tok/s 4 rows "
                f"({threads} threads); plain {p['decode_tok_s']} / {p['batch4_tok_s']}",
                file=sys.stderr,
            )
    doc = {"cpu": cpu_model(), "threads": threads, "reps": a.reps, "rows": rows}
    print(
        json.dumps(doc, indent=1)
        if a.json
        else "\n".join(
            f"{r['model']:32s} {r['quant'] or '?':8s} plain/default: decode {r.get('plain_over_default_decode', float('nan')):.3f}"
            f", 4 rows {r.get('plain_over_default_batch4', float('nan')):.3f}"
            for r in rows
        )
    )


if __name__ == "__main__":
    main()
