"""Share the CPU with the robot: decode speed alone, beside busy processes, and beside a second
edgekit process -- for the old threading default and the new one, interleaved in one run.

    python benchmarks/coexist.py [--model qwen2.5-coder-0.5b-instruct] [--reps 2] [--tokens 48] [--json]

Situations: ``alone``; ``busy1`` / ``busy2`` (one or two ``python -c "while True: pass"``
processes at normal priority); ``peer`` (two edgekit processes decoding at once; both are
measured). Policies: ``old`` = ``EDGEKIT_THREADING=spin`` (llama.cpp's default: spinning OpenMP
waits, threads fixed at the physical cores: what edgekit did before) and ``new`` (edgekit's
default: short spin, threads that follow the free cores). Each measurement is a fresh process
(model load excluded): a greedy decode of ``--tokens`` tokens of "Write one sentence about
robots." with EOS ignored, ``--gens`` times; decode tok/s and total seconds are their means.

``over_alone`` is the row's decode speed over the same policy alone in the same repetition;
the summary also gives new-alone over old-alone (the idle cost of the new default).
Run it on an otherwise quiet machine: anything else computing is part of the measurement.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import emit, log, parser, print_table, run_main

from edgekit.host.cpu import cpu_model
from edgekit.profile.background import Background

PROMPT = "Write one sentence about robots."
SITUATIONS = ("alone", "busy1", "busy2", "peer")
POLICIES = {"old": {"EDGEKIT_THREADING": "spin"}, "new": {}}
# candidates for edgekit's default spin count (--policies old,new,spin30k,...): adaptive threads, this spin count
EXTRA = {f"spin{k}k": {"GOMP_SPINCOUNT": str(k * 1000)} for k in (3, 30, 100, 300)}


def child(model: str, tokens: int, gens: int, go: str) -> None:
    from edgekit.runtime import Runtime

    rt = Runtime(model, n_ctx=1024)
    rt.generate(PROMPT, max_tokens=4, temperature=0.0)  # warm-up
    Path(go + f".ready.{os.getpid()}").touch()
    while not Path(go).exists():  # peers start decoding together
        time.sleep(0.01)
    dec, tot, thr = [], [], []
    for _ in range(gens):
        r = rt.generate(PROMPT, max_tokens=tokens, temperature=0.0, ignore_eos=True)
        dec.append(r.timings.decode_tok_s or 0.0)
        tot.append(r.timings.total_s)
        thr.append(r.timings.threads)
    print(
        json.dumps(
            {
                "decode_tok_s": statistics.mean(dec),
                "total_s": statistics.mean(tot),
                "threads": thr,
                "kernels": r.timings.kernels,
            }
        ),
        flush=True,
    )
    rt.close()


def measure(situation: str, policy: str, args) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "EDGEKIT_THREADING")}
    env.update({**POLICIES, **EXTRA}[policy])
    workers = {"busy1": 1, "busy2": 2}.get(situation, 0)
    busy = Background(str(workers)).start() if workers else None  # edgekit's own busy workers
    with tempfile.TemporaryDirectory() as tmp:
        go = os.path.join(tmp, "go")
        n = 2 if situation == "peer" else 1
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--child", args.model, str(args.tokens), str(args.gens), go],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            for _ in range(n)
        ]
        deadline = time.monotonic() + 120
        while len(list(Path(tmp).glob("go.ready.*"))) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        Path(go).touch()
        out = []
        for p in procs:
            try:
                so, _ = p.communicate(timeout=args.timeout)
                out.append(json.loads(so.strip().splitlines()[-1]))
            except (subprocess.TimeoutExpired, ValueError, IndexError):
                p.kill()
                out.append(
                    {"decode_tok_s": 0.0, "total_s": float("nan"), "threads": None, "note": "timed out or failed"}
                )
    if busy is not None:
        busy.stop()
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--child"]:
        child(argv[1], int(argv[2]), int(argv[3]), argv[4])
        return 0
    ap = parser(__doc__, reps=2, model="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--gens", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=240)
    ap.add_argument("--situations", default=",".join(SITUATIONS))
    ap.add_argument(
        "--policies",
        default="old,new",
        help="old, new, and spin3k/spin30k/spin100k/spin300k (adaptive threads with that spin count)",
    )
    args = ap.parse_args(argv)
    sits = [s for s in args.situations.split(",") if s]
    pols = [p for p in args.policies.split(",") if p]
    bad = [p for p in pols if p not in POLICIES and p not in EXTRA]
    if bad:
        raise SystemExit(f"unknown policy {bad[0]!r}: use old, new, {', '.join(EXTRA)}")
    raw: list[dict] = []
    for rep in range(args.reps):  # interleaved: every (situation, policy) once per repetition
        for sit in sits:
            for pol in pols:
                for i, m in enumerate(measure(sit, pol, args)):
                    raw.append({"rep": rep, "situation": sit, "policy": pol, "process": i, **m})
                    if not args.json:
                        log(
                            f"rep {rep} {sit:6s} {pol}: {m['decode_tok_s']:6.1f} tok/s, {m['total_s']:.2f} s, "
                            f"threads {m.get('threads')}"
                        )
    alone = {(r["rep"], r["policy"]): r["decode_tok_s"] for r in raw if r["situation"] == "alone"}
    rows = []
    for sit in sits:
        for pol in pols:
            rs = [r for r in raw if r["situation"] == sit and r["policy"] == pol]
            ratios = [r["decode_tok_s"] / alone[(r["rep"], pol)] for r in rs if alone.get((r["rep"], pol))]
            rows.append(
                {
                    "situation": sit,
                    "policy": pol,
                    "decode_tok_s": statistics.median(r["decode_tok_s"] for r in rs),
                    "total_s": statistics.median(r["total_s"] for r in rs),
                    "over_alone": statistics.median(ratios) if ratios else None,
                    "over_alone_min": min(ratios) if ratios else None,
                    "measurements": len(rs),
                }
            )
    idle = [
        alone[(rep, "new")] / alone[(rep, "old")]
        for rep in range(args.reps)
        if alone.get((rep, "old")) and alone.get((rep, "new"))
    ]
    summary = {"new_alone_over_old_alone": statistics.median(idle) if idle else None, "per_rep": idle}
    doc = {
        "model": args.model,
        "tokens": args.tokens,
        "reps": args.reps,
        "cpu": cpu_model() or "?",
        "rows": rows,
        "summary": summary,
        "raw": raw,
    }
    emit(doc, args.json, lambda: print_text(rows, summary))
    return 0


def print_text(rows: list[dict], summary: dict) -> None:
    print_table(
        rows, ["situation", "policy", "decode_tok_s:.1f", "total_s:.2f", "over_alone:.2f", "over_alone_min:.2f"]
    )
    if summary["new_alone_over_old_alone"] is not None:
        print(
            f"idle: new / old = {summary['new_alone_over_old_alone']:.3f} (per repetition: "
            + ", ".join(f"{x:.3f}" for x in summary["per_rep"])
            + ")"
        )


if __name__ == "__main__":
    run_main(main)
