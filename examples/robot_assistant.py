"""A robot's control loop with an on-board language model (edgekit's Runtime embedded, no daemon).

The loop ticks at a fixed rate (motors, sensors) while a worker thread asks the model a navigation
or pick-and-place question under a deadline: n samples decoded in one batch, majority vote,
agreement as confidence. A safety event (an obstacle) preempts the query in flight through a
CancelToken: the batch stops at its next decode step and the loop acts on its own.
With ``--cloud-url``, low-confidence answers go to an OpenAI-compatible server (offload).

    python examples/robot_assistant.py --model smollm2-135m-instruct --max-tokens 48
    python examples/robot_assistant.py --cloud-url http://127.0.0.1:8080/v1 --cloud-model big
"""

from __future__ import annotations

import argparse
import threading
import time

from edgekit import CancelToken, EdgekitError, Runtime, SamplingOptions

TASKS = [
    (
        "navigation",
        "The robot is at x=2 m on a straight corridor. The charging dock is at x=7 m. "
        "How many metres must it drive to reach the dock?",
        "number",
    ),
    (
        "pick-and-place",
        "A tray holds 3 red blocks and 4 blue blocks. The robot must move every blue block "
        "to bin B. How many blocks will it move?",
        "number",
    ),
    (
        "navigation",
        "The lidar reports an obstacle 0.3 m ahead and the safety distance is 0.5 m. "
        "Should the robot stop? Answer yes or no.",
        "yesno",
    ),
]
PREEMPT = (
    "pick-and-place",
    "Describe, step by step, how to stack five blocks into a tower, checking the gripper force at every step.",
    "text",
)


def ask(rt: Runtime, question: str, opts: SamplingOptions, hz: float, obstacle_at_s: float | None = None):
    """Run one query in a worker thread while the control loop keeps ticking; returns (result, ticks)."""
    token = CancelToken()
    box: dict = {}

    def work() -> None:
        try:
            box["result"] = rt.generate(question, opts, cancel=token)
        except EdgekitError as e:  # a problem the operator can fix (bad flag, context too small, ...)
            box["error"] = e

    worker = threading.Thread(target=work, name="llm-query", daemon=True)
    t0 = time.perf_counter()
    worker.start()
    ticks = 0
    while worker.is_alive():
        ticks += 1  # read sensors, update motor set-points ... (the loop never blocks on the model)
        if obstacle_at_s is not None and not token.cancelled and time.perf_counter() - t0 >= obstacle_at_s:
            token.cancel("obstacle detected: query preempted")
        worker.join(1.0 / hz)
    if "error" in box:
        raise box["error"]
    return box["result"], ticks


def report(kind: str, res, ticks: int) -> None:
    c, t = res.confidence, res.timings
    flags = "; ".join(res.flags) or "-"
    print(
        f"[{kind}] answer={res.answer!r} agreement={c.votes}/{c.n} source={res.source} "
        f"latency={t.total_s:.2f}s queue={t.queue_s:.2f}s control-ticks={ticks} flags: {flags}",
        flush=True,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--n", type=int, default=3, help="samples per question, decoded in one batch")
    ap.add_argument("--deadline", type=float, default=5.0, help="seconds per question")
    ap.add_argument("--hz", type=float, default=20.0, help="control-loop rate")
    ap.add_argument("--tasks", type=int, default=len(TASKS), help="how many of the questions to ask")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cloud-url", default=None, help="offload low-confidence answers to this OpenAI-compatible server")
    ap.add_argument("--cloud-model", default=None)
    a = ap.parse_args()

    cloud = None
    if a.cloud_url:
        from edgekit import OpenAIEngine

        cloud = OpenAIEngine(a.cloud_model or "default", base_url=a.cloud_url)
    with Runtime(a.model, n_ctx=2048, max_n=max(1, a.n), threads=a.threads, cloud=cloud) as rt:
        print(f"model {rt.model_id} loaded in {rt.load_s:.2f}s; offload {'on' if cloud else 'off'}", flush=True)
        for kind, question, extractor in TASKS[: max(0, a.tasks)]:
            opts = SamplingOptions.build(
                n=a.n, max_tokens=a.max_tokens, deadline_s=a.deadline, extractor=extractor, seed=0
            )
            res, ticks = ask(rt, question, opts, a.hz)
            report(kind, res, ticks)
        # a long query, preempted by the safety layer shortly after it starts
        kind, question, extractor = PREEMPT
        opts = SamplingOptions.build(
            n=a.n, max_tokens=max(a.max_tokens, 64), deadline_s=a.deadline, extractor=extractor, ignore_eos=True
        )
        res, ticks = ask(rt, question, opts, a.hz, obstacle_at_s=0.05)
        report(kind + " (preempted)", res, ticks)
        preempted = any(f.startswith("cancelled") for f in res.flags)
        print("preempted: yes" if preempted else "preempted: no (the query finished before the obstacle)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
