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

import json
import os
import statistics
import time

from _common import emit, inprocess_server, parser, run_main, summarize


def main(argv=None) -> int:
    ap = parser(__doc__, reps=40, model="smollm2-135m-instruct", threads=True)
    ap.add_argument("--max-tokens", type=int, default=2)
    ap.add_argument("--stream", action="store_true", help="measure the SSE path instead of plain JSON")
    a = ap.parse_args(argv)

    from edgekit.runtime import Runtime
    from edgekit.serve.app import build_app
    from edgekit.serve.service import Limits, Service

    rt = Runtime(a.model, n_ctx=1024, max_n=1, threads=a.threads)
    svc = Service(rt, limits=Limits(max_queue=4))
    with inprocess_server(build_app(svc)) as srv:
        d_s, h_s, diffs, outside = measure(a, rt, srv.url)
    rt.close()

    ms = lambda x: round(1000 * x, 3)
    added, out_gen = summarize(diffs), summarize(outside)
    out = {
        "p50_added_ms": ms(added.median),
        "added_iqr_ms": [ms(added.q1), ms(added.q3)],
        "outside_generation_p50_ms": ms(out_gen.median),
        "outside_generation_iqr_ms": [ms(out_gen.q1), ms(out_gen.q3)],
        "direct_p50_ms": ms(statistics.median(d_s)),
        "http_p50_ms": ms(statistics.median(h_s)),
        "reps": a.reps,
        "model": rt.model_id,
        "max_tokens": a.max_tokens,
        "stream": a.stream,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "goal_ms": 5.0,
    }
    text = (
        f"direct p50 {out['direct_p50_ms']} ms, HTTP p50 {out['http_p50_ms']} ms ({a.reps} interleaved pairs, "
        f"{rt.model_id}, max_tokens {a.max_tokens}{', SSE' if a.stream else ''})\n"
        f"added by the daemon: p50 {out['p50_added_ms']} ms "
        f"(IQR {out['added_iqr_ms'][0]} .. {out['added_iqr_ms'][1]}); "
        f"outside generation: p50 {out['outside_generation_p50_ms']} ms; goal <= 5 ms; load {out['load_avg_1m']}"
    )
    emit(out, a.json, text, indent=None)
    return 0


def measure(a, rt, url: str) -> tuple[list, list, list, list]:
    """Interleaved pairs of the same request, direct call and HTTP round trip (order alternating): seconds of each,
    their differences, and the HTTP time outside the generation the server measured."""
    import httpx

    from edgekit.schemas.options import SamplingOptions

    question = "How many wheels do 4 cars have?"
    opts = SamplingOptions.build(max_tokens=a.max_tokens, ignore_eos=True)
    body = {
        "model": rt.model_id,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": a.max_tokens,
        "stream": a.stream,
        "edgekit": {"ignore_eos": True},
    }
    client = httpx.Client(base_url=url + "/v1", timeout=120)

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
    client.close()
    return d_s, h_s, diffs, outside


if __name__ == "__main__":
    run_main(main)
