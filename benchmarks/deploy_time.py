"""`edgekit deploy` end to end: how long from a labelled task to a running daemon, and whether its held-out
verify stage agrees with what the plan predicted.

Part ``time``: a 200-problem labelled JSONL (object_counting problems as a user's file), two candidate models, a
local OpenAI-compatible server (llama_cpp.server with a bigger model) as the cloud; deploy, then start
``edgekit serve --plan`` and wait for /healthz. Part ``verify``: the shipped tasks at each target (the first
target builds the tune tables, later ones continue the same folder: only plan and verify run again).

    python benchmarks/deploy_time.py --json --out benchmarks/results/deploy_time.json

JSON: {"total_s", "stages": {NAME: s}, "verify": [{"task", "target_s", "acc", "acc_pred", "acc_pred_lo",
"acc_pred_hi", "p50_s", "p50_pred_s", ...}], "summary": {...}}.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from _common import emit, log, loopback_server, parser, run_main, write_json

ROOT = Path(__file__).resolve().parents[1]


def user_file(path: Path, start: int, n: int) -> Path:
    from edgekit.evaluate.tasks import load_task

    t = load_task("bigbench:object_counting", template="terse")
    with path.open("w") as f:
        for p in t.problems[start : start + n]:
            q = p.prompt.rsplit("\n", 1)[0]
            f.write(json.dumps({"id": "oc" + p.id.split("/")[-1], "prompt": q, "answer": p.target}) + "\n")
    return path


def part_time(args, work: Path) -> dict:
    from edgekit.deployment import deploy
    from edgekit.deployment.report import edgekit_executable
    from edgekit.models import resolve

    task = user_file(work / "robot_counting.jsonl", args.start, args.problems)
    out = work / "time"
    shutil.rmtree(out, ignore_errors=True)
    cloud = str(resolve(args.cloud).path)
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", cloud, "--host", "127.0.0.1", "--port", "{port}"]
    cmd += ["--n_ctx", "4096", "--n_threads", "2", "--model_alias", "cloud"]
    with loopback_server(cmd, ready_path="/v1/models", timeout=300, name="llama_cpp.server") as srv:
        t0 = time.monotonic()
        rep = deploy(
            f"jsonl:{task}",
            args.time_target,
            models=args.models,
            cloud_url=srv.url + "/v1",
            cloud_model="cloud",
            time_budget_s=args.time_budget,
            out_dir=out,
            profile=args.profile,
            threads=args.threads,
            notice=log,
            progress=lambda s, d, n: None,
        )
        t1 = time.monotonic()
        serve = [edgekit_executable(), "serve", "--plan", rep.outputs["plan"], "--port", "{port}"]
        with loopback_server(serve, ready_path="/healthz", timeout=120, name="edgekit serve") as daemon:
            t2 = time.monotonic()
            log(f"daemon ready at {daemon.url}")
    stages = dict(rep.stages)
    stages["serve_start"] = t2 - t1
    log(f"deploy {t1 - t0:.0f} s + serve start {t2 - t1:.1f} s; plan {rep.plan['config']}")
    return {
        "total_s": t2 - t0,
        "deploy_s": t1 - t0,
        "stages": stages,
        "time_budget_s": args.time_budget,
        "problems": args.problems,
        "models": rep.models,
        "cloud": args.cloud,
        "verify": [rep.benchmark_row()],
        "flags": rep.flags,
        "offload": rep.offload and {k: rep.offload[k] for k in ("method", "score", "threshold", "offload_rate")},
        "verify_offload": rep.verify.get("offload"),
        "splits": {k: {x: v[x] for x in ("range", "used")} for k, v in rep.splits.items()},
    }


def part_verify(args, work: Path) -> list[dict]:
    from edgekit.deployment import deploy

    rows = []
    for task in args.tasks:
        out = work / f"verify-{task}"
        shutil.rmtree(out, ignore_errors=True)
        for i, target in enumerate(args.targets):
            t0 = time.monotonic()
            rep = deploy(
                f"bigbench:{task}",
                target,
                models=args.models,
                time_budget_s=args.time_budget if i == 0 else args.verify_budget,
                out_dir=out,
                profile=args.profile,
                threads=args.threads,
                notice=log,
            )
            row = {**rep.benchmark_row(), "deploy_s": time.monotonic() - t0, "flags": rep.flags}
            row["acc_inside"] = row["acc_pred_lo"] <= row["acc"] <= row["acc_pred_hi"]
            row["p50_ratio"] = row["p50_s"] / row["p50_pred_s"]
            rows.append(row)
            log(
                f"{task} {target:g}s: {row['config']} acc {row['acc']:.1%} pred {row['acc_pred']:.1%} "
                f"[{row['acc_pred_lo']:.1%}, {row['acc_pred_hi']:.1%}] p50 {row['p50_s']:.2f}/{row['p50_pred_s']:.2f} s"
            )
    return rows


def main(argv=None) -> int:
    ap = parser(__doc__, out=True, threads=True)
    ap.add_argument("--part", choices=("time", "verify", "both"), default="both")
    ap.add_argument("--models", default="qwen2.5-coder-0.5b-instruct,smollm2-135m-instruct")
    ap.add_argument("--cloud", default="qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--problems", type=int, default=200)
    ap.add_argument("--start", type=int, default=500, help="first object_counting problem of the user file")
    ap.add_argument("--time-target", type=float, default=2.0)
    ap.add_argument("--time-budget", type=float, default=600.0)
    ap.add_argument("--verify-budget", type=float, default=150.0, help="later targets: plan + verify only")
    ap.add_argument("--tasks", default="object_counting,strategyqa,date_understanding")
    ap.add_argument("--targets", default="1,2,4")
    ap.add_argument("--profile", default=str(ROOT / "profiles/ci-2core-amd-epyc.json"))
    ap.add_argument("--workdir", default="/tmp/edgekit-deploy-bench")
    args = ap.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.tasks = [t for t in args.tasks.split(",") if t]
    args.targets = [float(x) for x in args.targets.split(",")]
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {}
    if args.part in ("time", "both"):
        result = part_time(args, work)
        write_json(args.out, result)
    if args.part in ("verify", "both"):
        rows = part_verify(args, work)
        result.setdefault("verify", [])
        result["verify"] = result["verify"] + rows
        result["verify_shipped"] = rows
        result["summary"] = {
            "pairs": len(rows),
            "acc_inside": sum(r["acc_inside"] for r in rows),
            "acc_inside_share": sum(r["acc_inside"] for r in rows) / len(rows),
            "p50_within_15pct": sum(abs(r["p50_ratio"] - 1) <= 0.15 for r in rows),
        }
        write_json(args.out, result)
    emit(result, args.json, lambda: print(json.dumps(result.get("summary", result.get("stages")), indent=1)))
    return 0


if __name__ == "__main__":
    run_main(main)
