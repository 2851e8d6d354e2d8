"""Planner speed: candidates planned per second on a synthetic profile and synthetic accuracy tables.

    PYTHONPATH=. python benchmarks/planner_speed.py [n_candidates]

Target: >= 10,000 candidates in <= 1 s (prediction is vectorised with numpy per table).
"""

from __future__ import annotations

import sys
import time

import numpy as np

from edgekit.perfmodel import synthetic as sy
from edgekit.plan import plan
from edgekit.schemas.table import AccuracyRow, AccuracyTable

TRUTH = dict(a=1e-7, b=1e-3, c=0.05, alpha=0.02, beta=0.001, gamma=2e-7)


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
                task="object_counting",
                model_id=f"m{t % 4}",
                quant="Q4_K_M",
                prompt_template="cot",
                temperature=0.7,
                n_samples=16,
                seed=0,
                max_tokens=2048,
                n_problems=50,
                prompt_tokens_mean=float(rng.integers(50, 800)),
                rows=rows,
            )
        )
    return sy.device_profile(models), tables


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    profile, tables = build(n)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        r = plan(profile, tables, latency_target_s=20.0, percentile=95, energy_cap_j=50.0, memory_cap_gb=4.0)
        best = min(best, time.perf_counter() - t0)
    print(
        f"{len(r)} candidates in {best * 1e3:.1f} ms (best of 5, incl. fitting {len(profile.models)} models): "
        f"{len(r) / best:,.0f} candidates/s; chosen {r.label(r.chosen)} at {r.latency[r.chosen]:.3g} s p95, "
        f"frontier {len(r.frontier)} points"
    )


if __name__ == "__main__":
    main()
