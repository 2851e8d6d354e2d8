"""Latency the daemon adds over calling the Runtime in-process, for the same request.

One model, one llama.cpp instance: the daemon's app runs under uvicorn on 127.0.0.1 in a thread of
this process, holding the same Runtime that the direct calls use, so both paths decode the same
greedy, fixed-length request (ignore_eos) and never run at once. The two measurements are
interleaved (order alternating per repetition); the figure is the median of the paired differences
(HTTP round trip - direct call), with its IQR. Also reported: the HTTP wall time minus the
generation time the server measured for that request (the overhead outside the model, less noisy).
A real daemon is a separate process; here the client shares the interpreter (and its GIL) with the
server, which if anything inflates the figure.

    python benchmarks/daemon_overhead.py --model smollm2-135m-instruct --reps 40 --json

Goal: p50 added <= 5 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], statistics.median(xs), q[2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--max-tokens", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--stream", action="store_true", help="measure the SSE path instead of plain JSON")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    import httpx
    import uvicorn

    from edgekit.runtime import Runtime
    from edgekit.schemas.options import SamplingOptions
    from edgekit.serve.app import build_app
    from edgekit.serve.daemon import bind
    from edgekit.serve.service import Limits, Service

    rt = Runtime(a.model, n_ctx=1024, max_n=1, threads=a.threads)
    svc = Service(rt, limits=Limits(max_queue=4))
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(build_app(svc), log_level="warning", access_log=False, lifespan="off"))
    th = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    while not server.started:
        time.sleep(0.01)

    question = "How many wheels do 4 cars have?"
    opts = SamplingOptions.build(max_tokens=a.max_tokens, ignore_eos=True)
    body = {
        "model": rt.model_id,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": a.max_tokens,
        "stream": a.stream,
        "edgekit": {"ignore_eos": True},
    }
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}/v1", timeout=120)

    def direct() -> float:
        t0 = time.perf_counter()
        rt.generate(question, opts)
        return time.perf_counter() - t0

    def http() -> tuple[float, float]:
        t0 = time.perf_counter()
        r = client.post("/chat/completions", json=body)
        dt = time.perf_counter() - t0
        r.raise_for_status()
        if a.stream:
            last = [x for x in r.text.split("\n\n") if x.startswith("data: {")][-1]
            ek = json.loads(last[6:])["edgekit"]
        else:
            ek = r.json()["edgekit"]
        return dt, dt - ek["timings"]["queue_s"] - ek["timings"]["total_s"]

    for _ in range(3):  # warm-up: caches, first-request imports, connection
        direct()
        http()
    d_s, h_s, diffs, outside = [], [], [], []
    for i in range(a.reps):
        if i % 2:
            d = direct()
            h, o = http()
        else:
            h, o = http()
            d = direct()
        d_s.append(d)
        h_s.append(h)
        diffs.append(h - d)
        outside.append(o)
    server.should_exit = True
    th.join(10)
    rt.close()

    ms = lambda x: round(1000 * x, 3)  # noqa: E731
    q1, p50, q3 = quartiles(diffs)
    o1, o50, o3 = quartiles(outside)
    out = {
        "p50_added_ms": ms(p50),
        "added_iqr_ms": [ms(q1), ms(q3)],
        "outside_generation_p50_ms": ms(o50),
        "outside_generation_iqr_ms": [ms(o1), ms(o3)],
        "direct_p50_ms": ms(statistics.median(d_s)),
        "http_p50_ms": ms(statistics.median(h_s)),
        "reps": a.reps,
        "model": rt.model_id,
        "max_tokens": a.max_tokens,
        "stream": a.stream,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "goal_ms": 5.0,
    }
    if a.json:
        print(json.dumps(out))
    else:
        print(
            f"direct p50 {out['direct_p50_ms']} ms, HTTP p50 {out['http_p50_ms']} ms ({a.reps} interleaved pairs, "
            f"{rt.model_id}, max_tokens {a.max_tokens}{', SSE' if a.stream else ''})"
        )
        print(
            f"added by the daemon: p50 {out['p50_added_ms']} ms (IQR {out['added_iqr_ms'][0]} .. {out['added_iqr_ms'][1]}); "
            f"outside generation: p50 {out['outside_generation_p50_ms']} ms; goal <= 5 ms; load {out['load_avg_1m']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
