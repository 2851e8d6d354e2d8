"""What the blind baseline (edgekit.evaluate.chance) costs: the check alone on a worst-case table, and a plan with it
against the same plan without it, interleaved in one run.

    python benchmarks/chance_cost.py [--problems 1000] [--samples 16] [--reps 7] [--json]

(a) ``chance_checks`` on a synthetic numeric table where every target is distinct (the worst case for memory: one
target value per problem) and each sample answers its own target 30 % of the time, another problem's otherwise:
time (first call, then with the vote-probability cache warm) and peak traced memory.
(b) ``make_plan`` + ``to_plan_file`` + ``all_warnings`` on (i) the shipped object_counting tables at 2 s (the chosen
configuration is above chance: one check) and (ii) the #24 date_understanding tables at 4 s (the chosen one is not:
the warning's search runs), with the check on and with ``Comparator.chance`` returning None (off), alternating per
rep; paired ratio on/off, median and its exact 95 % interval (``_common.median_interval``).
"""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
from _common import emit, median_interval, parser, print_table, run_main

from edgekit.evaluate.chance import chance_checks
from edgekit.plan.compare import Comparator
from edgekit.plan.export import to_plan_file
from edgekit.plan.make import make_plan
from edgekit.schemas.table import ProblemRecord, SampleRecord

PROFILE = "profiles/ci-2core-amd-epyc.json"
D = "benchmarks/results/tables24b"
OC = [f"tables/object_counting-qwen{m}-terse.json" for m in ("0.5b", "1.5b")]
DU = [f"{D}/date_understanding-{m}-terse.json" for m in ("qwen0.5b", "qwen1.5b", "smollm2")]
CASES = {"object_counting 2 s": (OC, 2.0), "date_understanding 4 s": (DU, 4.0)}


def worst_case(P: int, n: int) -> list[ProblemRecord]:
    rng = np.random.default_rng(0)
    out = []
    for j in range(P):
        answers = [str(j) if rng.random() < 0.3 else str(int(rng.integers(0, P))) for _ in range(n)]
        ss = [SampleRecord(answer=a, correct=a == str(j), tokens=5, finished=True) for a in answers]
        out.append(ProblemRecord(id=f"x/{j}", target=str(j), prompt_tokens=10, samples=ss, greedy=ss[0]))
    return out


def plan_once(tables, target) -> float:
    t = time.perf_counter()
    res, _ = make_plan(PROFILE, tables, target, output="/tmp/chance_cost.plan.json")
    to_plan_file(res)
    res.all_warnings()
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = parser(__doc__, reps=7)
    ap.add_argument("--problems", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=16)
    args = ap.parse_args(argv)
    probs = worst_case(args.problems, args.samples)
    tracemalloc.start()
    t = time.perf_counter()
    chance_checks(probs, 64, "majority")
    cold = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    t = time.perf_counter()
    chance_checks(probs, 64, "majority")
    warm = time.perf_counter() - t
    real = Comparator.chance
    rows = []
    for name, (tables, target) in CASES.items():
        on, off = [], []
        for rep in range(args.reps):
            for mode in ("on", "off") if rep % 2 == 0 else ("off", "on"):
                Comparator.chance = real if mode == "on" else (lambda self, i: None)
                try:
                    (on if mode == "on" else off).append(plan_once(tables, target))
                finally:
                    Comparator.chance = real
        ratios = [a / b for a, b in zip(on, off)]
        lo, hi = median_interval(ratios)
        rows.append(
            {
                "case": name,
                "on_s": float(np.median(on)),
                "off_s": float(np.median(off)),
                "ratio": float(np.median(ratios)),
                "ratio_lo": lo,
                "ratio_hi": hi,
                "reps": args.reps,
            }
        )
    out = {
        "worst_case": {
            "problems": args.problems,
            "samples": args.samples,
            "first_s": cold,
            "cached_s": warm,
            "peak_mb": peak,
        },
        "plans": rows,
    }
    emit(
        out,
        args.json,
        lambda: (
            print(
                f"chance_checks, {args.problems} problems x {args.samples} samples, every target distinct: "
                f"{cold:.2f} s first, {warm:.2f} s cached, peak {peak:.0f} MB"
            ),
            print_table(rows, ["case", "on_s:.3f", "off_s:.3f", "ratio:.3f", "ratio_lo:.3f", "ratio_hi:.3f"]),
        ),
    )
    return 0


if __name__ == "__main__":
    run_main(main)
