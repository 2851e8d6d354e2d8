"""Does a loaded profile's plan hold on a loaded machine? Profile beside N busy workers, plan from
that profile, then run the plan beside the same load and compare measured with predicted latency.

    python benchmarks/loaded_plan.py [--model qwen2.5-coder-0.5b-instruct] [--table tables/...] \
        [--target 2s] [--background 1] [--runs 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUESTIONS = ["I have a chair, two tables, and three beds. How many objects do I have?",
             "I have a cat, a dog, and two fish. How many animals do I have?",
             "I have three apples, a banana, and two pears. How many fruits do I have?",
             "I have a piano, two flutes, and a violin. How many musical instruments do I have?",
             "I have four carrots and a stalk of celery. How many vegetables do I have?"]


def cli(*args: str) -> str:
    p = subprocess.run([sys.executable, "-m", "edgekit.cli.main", *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"edgekit {' '.join(args[:2])} failed: {p.stderr.strip()[-400:]}")
    return p.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--table", default="tables/object_counting-qwen0.5b-terse.json")
    ap.add_argument("--target", default="2s")
    ap.add_argument("--background", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="loaded-plan-"))
    t0 = time.time()
    cli("profile", "-m", a.model, "--quick", "--background", str(a.background), "-o", str(tmp / "loaded.json"))
    prof_s = time.time() - t0
    plan = json.loads(cli("plan", "-p", str(tmp / "loaded.json"), "-a", a.table, "-t", a.target, "-o", str(tmp / "plan.json"),
                          "--json"))
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(a.background)]
    rows = []
    try:
        time.sleep(0.5)
        for i in range(a.runs):
            r = json.loads(cli("run", QUESTIONS[i % len(QUESTIONS)], "--plan", str(tmp / "plan.json"), "--json"))
            rows.append({"total_s": r["timings"]["total_s"], "predicted_s": r["extra"].get("predicted_latency_s"),
                         "threads": r["timings"].get("threads"), "tokens": r["timings"]["generated_tokens"]})
    finally:
        for b in busy:
            b.kill()
    meas = statistics.median(x["total_s"] for x in rows)
    pred = rows[0]["predicted_s"]
    doc = {"model": a.model, "table": a.table, "target": a.target, "background": a.background, "profile_s": round(prof_s, 1),
           "chosen": plan.get("chosen"), "predicted_p50_s": pred, "measured_median_s": meas,
           "error": (meas - pred) / pred if pred else None, "runs": rows}
    print(json.dumps(doc, indent=1, default=str) if a.json else
          f"predicted {pred:.2f} s, measured median {meas:.2f} s over {len(rows)} runs beside {a.background} busy "
          f"worker(s): error {100 * doc['error']:+.1f} %")


if __name__ == "__main__":
    main()
