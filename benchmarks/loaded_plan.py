"""Does a loaded profile's plan hold on a loaded machine? Profile beside N busy workers, plan from
that profile, then run the plan beside the same load and compare measured with predicted latency.

    python benchmarks/loaded_plan.py [--model qwen2.5-coder-0.5b-instruct] [--table tables/...] \
        [--target 2s] [--background 1] [--runs 5] [--json]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import emit, parser, run_main

from edgekit.profile.background import Background


def cli(*args: str) -> str:
    p = subprocess.run([sys.executable, "-m", "edgekit.cli.main", *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"edgekit {' '.join(args[:2])} failed: {p.stderr.strip()[-400:]}")
    return p.stdout


def held_out_questions(table: dict, problems: str) -> list[str]:
    """The table's own task, problems outside the table's split: the prompt lengths the plan's
    prediction speaks for (hand-written short questions under-run the task's mean prompt)."""
    from edgekit.evaluate.tasks import load_task

    task = load_task(table["task"], "terse", split=problems)
    a, _, b = (table.get("split") or "0:0").partition(":")
    used = set(range(int(a or 0), int(b or 0)))
    keep = [p for i, p in enumerate(task.problems, start=task.offset) if i not in used]
    if not keep:
        raise SystemExit(f"--problems {problems} lies inside the table's split {table.get('split')}")
    suffix = task.template_text.split("{question}", 1)[1].replace("{options}", "")
    return [p.prompt[: -len(suffix)] if suffix and p.prompt.endswith(suffix) else p.prompt for p in keep]


def main(argv=None) -> int:
    ap = parser(__doc__, model="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--table", default="tables/object_counting-qwen0.5b-terse.json")
    ap.add_argument("--target", default="2s")
    ap.add_argument("--background", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--problems", default="100:130", help="held-out problems of the table's task (a:b)")
    ap.add_argument("--profile", help="reuse a loaded profile made earlier (skips the profiling step)")
    a = ap.parse_args(argv)
    questions = held_out_questions(json.loads(Path(a.table).read_text()), a.problems)
    tmp = Path(tempfile.mkdtemp(prefix="loaded-plan-"))
    t0 = time.time()
    if a.profile:
        (tmp / "loaded.json").write_bytes(Path(a.profile).read_bytes())
    else:
        cli("profile", "-m", a.model, "--quick", "--background", str(a.background), "-o", str(tmp / "loaded.json"))
    prof_s = time.time() - t0
    plan = json.loads(
        cli(
            "plan",
            "-p",
            str(tmp / "loaded.json"),
            "-a",
            a.table,
            "-t",
            a.target,
            "-o",
            str(tmp / "plan.json"),
            "--json",
        )
    )
    from edgekit.runtime import Runtime
    from edgekit.schemas.options import SamplingOptions

    chosen = plan["chosen"]
    busy = Background(str(a.background)).start()  # edgekit's own busy workers (profile --background)
    cold, warm = [], []
    try:
        time.sleep(0.5)
        # cold: `edgekit run --plan` (a new process per query: the first forward pass of a freshly mapped model)
        for i in range(a.runs):
            r = json.loads(cli("run", questions[i % len(questions)], "--plan", str(tmp / "plan.json"), "--json"))
            cold.append(
                {
                    "total_s": r["timings"]["total_s"],
                    "predicted_s": r["extra"].get("predicted_latency_s"),
                    "threads": r["timings"].get("threads"),
                    "tokens": r["timings"]["generated_tokens"],
                    "prompt_tokens": r["timings"]["prompt_tokens"],
                }
            )
        # warm: one process answering query after query (an embedding app, the daemon), the plan's own options
        with Runtime(chosen.get("model_path") or chosen["model_id"]) as rt:
            opts = SamplingOptions(**chosen["options"])
            rt.generate(chosen["prompt"].format(question=questions[-1]), opts)
            for i in range(a.runs):
                r = rt.generate(chosen["prompt"].format(question=questions[i % len(questions)]), opts)
                warm.append(
                    {
                        "total_s": r.timings.total_s,
                        "threads": r.timings.threads,
                        "tokens": r.timings.generated_tokens,
                        "prompt_tokens": r.timings.prompt_tokens,
                    }
                )
    finally:
        busy.stop()
    pred = cold[0]["predicted_s"]
    doc = {
        "model": a.model,
        "table": a.table,
        "target": a.target,
        "background": a.background,
        "profile_s": round(prof_s, 1),
        "chosen": chosen,
        "predicted_p50_s": pred,
    }
    for name, rows in (("cold", cold), ("warm", warm)):
        meas = statistics.median(x["total_s"] for x in rows)
        doc[name] = {"measured_median_s": meas, "error": (meas - pred) / pred if pred else None, "runs": rows}
    emit(
        doc,
        a.json,
        lambda: print(
            "\n".join(
                f"{name}: predicted {pred:.2f} s, measured median {doc[name]['measured_median_s']:.2f} s over {a.runs} "
                f"runs beside {a.background} busy worker(s): error {100 * doc[name]['error']:+.1f} %"
                for name in ("cold", "warm")
            )
        ),
        default=str,
    )
    return 0


if __name__ == "__main__":
    run_main(main)
