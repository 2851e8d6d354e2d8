"""Planner speed: candidates planned per second on a synthetic profile and synthetic accuracy tables.

    PYTHONPATH=. python benchmarks/planner_speed.py [n_candidates] [--json]

Target: >= 10,000 candidates in <= 1 s (prediction is vectorised with numpy per table).
"""

from __future__ import annotations

import time

import numpy as np
from _common import emit, parser, run_main

from edgekit.perfmodel import synthetic as sy
from edgekit.plan import plan
from edgekit.schemas.table import AccuracyRow, AccuracyTable

TRUTH = dict(a=1e-7, b=1e-3, c=0.05, alpha=0.02, beta=0.001, gamma=2e-7)
# what every synthetic table shares (its model, prompt length and rows vary): how it was sampled, and its size
SAMPLED = dict(task="object_counting", quant="Q4_K_M", prompt_template="cot", temperature=0.7, n_samples=16, seed=0)
SIZE = dict(max_tokens=2048, n_problems=50)


def build(n_candidates: int, n_tables: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    models = [
        sy.model_profile(
            f"m{i}",
            {**TRUTH, "alpha": 0.01 * (i + 1)},
            noise=0.01,
            seed=i,
            size_bytes=10**9 * (i + 1),
            kv_bytes_per_token=1e5,
            energy_mj=(1.0, 10.0 * (i + 1)),
        )
        for i in range(4)
    ]
    per = -(-n_candidates // n_tables)
    tables = []
    for t in range(n_tables):
        B = rng.choice([64, 128, 256, 512, 1024, 2048], per)
        k = rng.choice([1, 2, 4, 8, 16], per)
        rows = [
            AccuracyRow(
                budget=int(b),
                k=int(kk),
                aggregation="majority",
                accuracy=float(rng.random()),
                expected_steps=float(rng.integers(1, b + 1)),
                mean_tokens=float(b) / 2,
            )
            for b, kk in zip(B, k)
        ]
        tables.append(
            AccuracyTable(
                **SAMPLED, **SIZE, model_id=f"m{t % 4}", prompt_tokens_mean=float(rng.integers(50, 800)), rows=rows
            )
        )
    return sy.device_profile(models), tables


def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("n_candidates", nargs="?", type=int, default=20_000)
    a = ap.parse_args(argv)
    profile, tables = build(a.n_candidates)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        r = plan(profile, tables, latency_target_s=20.0, percentile=95, energy_cap_j=50.0, memory_cap_gb=4.0)
        best = min(best, time.perf_counter() - t0)
    out = {
        "candidates": len(r),
        "best_s": best,
        "candidates_per_s": len(r) / best,
        "models": len(profile.models),
        "chosen": r.label(r.chosen),
        "chosen_latency_p95_s": float(r.latency[r.chosen]),
        "frontier": len(r.frontier),
        "method": "measured: best of 5 plan() calls, model fitting included; synthetic profile and tables",
    }
    text = (
        f"{len(r)} candidates in {best * 1e3:.1f} ms (best of 5, incl. fitting {len(profile.models)} models): "
        f"{len(r) / best:,.0f} candidates/s; chosen {r.label(r.chosen)} at {r.latency[r.chosen]:.3g} s p95, "
        f"frontier {len(r.frontier)} points"
    )
    emit(out, a.json, text)
    return 0


if __name__ == "__main__":
    run_main(main)
