"""The daemon under a robot's traffic (#20): open-loop Poisson arrivals at 0.5x, 0.9x and 1.5x the
measured capacity, against a real ``edgekit serve`` process on loopback.

    python benchmarks/daemon_load.py [--model qwen2.5-coder-0.5b-instruct] [--seconds 60] [--deadline 2.0]
        [--loads 0.5,0.9,1.5] [--json] [--plot benchmarks/results/daemon_load.png]
    python benchmarks/daemon_load.py --smoke      # SmolLM2, 4 s per load: checks that it runs

The server: ``edgekit serve MODEL --max-seqs 8 --max-n 1 --max-queue Q --deadline D --system-prompt-file
SYS`` (continuous batching, the deadline-aware batch cap, the robot's ~1,000-token system prompt pinned
in the prefix cache at start-up). Requests (the client runs in this process, asyncio + httpx, streaming
so it sees the first token):

- robot (3 in 4): that system prompt + a ~30-token observation, ``response_format`` a JSON schema
  action, greedy, ``max_tokens`` 32;
- generic (1 in 4): a one-line question without the system prompt, temperature 0.7, ``max_tokens`` 32.

Capacity: closed-loop clients (1, 2, 4, 8 of them, ``--cap-seconds`` each) send the same mix back to
back; capacity = the highest rate of answers *within the deadline* any of them sustained. Then one
open-loop run per load factor: arrivals are a Poisson process at factor x capacity for ``--seconds``
(seeded), each request sent at its time whatever happened to the others. Per run: p50/p95/p99 latency
and TTFT of answered requests, goodput (answered completely within the deadline, over requests sent;
and over requests admitted, i.e. not refused), the share refused with 503, lost requests (no answer,
a connection error or any other status), the server's peak RSS and its RSS at start and end, the
prefix cache's hit rate over the run (``/metrics``). Before the runs: TTFT of a robot request whose
system prompt is cached (the pinned one) and of one whose system prompt is not (same length, other
words), interleaved.

--json: {"rows": [{"load", "offered_rps", "p50_s", "p95_s", "p99_s", "goodput", "rejected_503", "lost",
"peak_rss_mb", ...}], "prefix": {"cold_ttft_s", "warm_ttft_s"}, "capacity": {...}, "settings": {...}}.
Goals: at 0.9x goodput >= 95 % and p99 <= 2x p50; at 1.5x 503s absorb the excess, goodput of admitted
requests >= 95 %, no request lost, RSS flat.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time

import httpx
import psutil
from _common import emit, log, loopback_server, parser, run_main
from prefix_cache import OBJECTS, SCHEMA, observation

from edgekit.models import resolve

HDR: dict = {}  # loopback, no API key
QUESTIONS = [
    "What is a {o} used for?",
    "Name a colour a {o} often has.",
    "Where in a kitchen would you keep a {o}?",
    "Is a {o} heavy? One sentence.",
]


def system_text(words: int, variant: str = "") -> str:
    """A robot system prompt of about ``words`` x 1.3 tokens: role, action schema, numbered safety rules."""
    head = (
        f"{variant}You are the task planner of a mobile manipulator in a kitchen. Reply with one JSON action "
        '{"action": "move" | "grasp" | "wait", "target": <object or place>}. Safety rules:'
    )
    rules, i = [head], 0
    while sum(len(r.split()) for r in rules) < words:
        i += 1
        rules.append(
            f"Rule {i}: never approach a person closer than {30 + i} cm, keep the gripper below {i % 7 + 2} N "
            f"near {OBJECTS[i % len(OBJECTS)]}s, and stop when zone {i} reports a fault."
        )
    return " ".join(rules)


class Mix:
    def __init__(self, model: str, system: str, seed: int, deadline_s: float | None = None):
        self.model, self.system, self.rng, self.k = model, system, random.Random(seed), 0
        self.ext = {"edgekit": {"deadline_s": deadline_s}} if deadline_s else {}

    def body(self) -> tuple[str, dict]:
        kind, b = self._body()
        return kind, {**b, **self.ext}

    def _body(self) -> tuple[str, dict]:
        self.k += 1
        if self.rng.random() < 0.75:
            return "robot", {
                "model": self.model,
                "messages": [
                    {"role": "system", "content": self.system},
                    {"role": "user", "content": observation(self.k)},
                ],
                "response_format": {"type": "json_schema", "json_schema": {"name": "action", "schema": SCHEMA}},
                "max_tokens": 32,
                "temperature": 0.0,
                "stream": True,
            }
        q = QUESTIONS[self.k % len(QUESTIONS)].format(o=OBJECTS[self.k % len(OBJECTS)])
        return "generic", {
            "model": self.model,
            "messages": [{"role": "user", "content": q}],
            "max_tokens": 32,
            "temperature": 0.7,
            "seed": self.k,
            "stream": True,
        }


async def one(client: httpx.AsyncClient, url: str, kind: str, body: dict, deadline: float) -> dict:
    t0 = time.perf_counter()
    rec = {"kind": kind, "t_send": t0, "status": None, "latency_s": None, "ttft_s": None, "flags": [], "error": None}
    try:
        async with client.stream("POST", url + "/v1/chat/completions", json=body, headers=HDR) as r:
            rec["status"] = r.status_code
            if r.status_code != 200:
                body = await r.aread()
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    rec["code"] = json.loads(body)["error"]["code"]
            else:
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    d = json.loads(line[6:])
                    pieces = ((c.get("delta") or {}).get("content") for c in d.get("choices", []))
                    if rec["ttft_s"] is None and any(pieces):
                        rec["ttft_s"] = time.perf_counter() - t0
                    if d.get("edgekit"):
                        ext = d["edgekit"]
                        rec["flags"] = ext.get("flags") or []
                        t = ext.get("timings") or {}
                        rec["server"] = {k: t.get(k) for k in TIMING_KEYS} | {"finish": ext.get("finish_reasons")}
        rec["latency_s"] = time.perf_counter() - t0
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        rec["error"] = f"{type(e).__name__}: {e}"[:200]
    rec["good"] = (
        rec["status"] == 200
        and rec["error"] is None
        and "deadline" not in rec["flags"]
        and rec["latency_s"] is not None
        and rec["latency_s"] <= deadline
    )
    return rec


def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))


async def closed_loop(url: str, mix: Mix, clients: int, seconds: float, deadline: float) -> list[dict]:
    end = time.perf_counter() + seconds
    recs: list[dict] = []
    async with client() as c:

        async def worker() -> None:
            while time.perf_counter() < end:
                recs.append(await one(c, url, *mix.body(), deadline))

        await asyncio.gather(*(worker() for _ in range(clients)))
    return recs


async def open_loop(url: str, mix: Mix, rate: float, seconds: float, deadline: float, seed: int) -> list[dict]:
    rng = random.Random(seed)
    t, arrivals = 0.0, []
    while True:
        t += rng.expovariate(rate)
        if t >= seconds:
            break
        arrivals.append(t)
    tasks = []
    async with client() as c:
        t0 = time.perf_counter()
        for at in arrivals:
            await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
            tasks.append(asyncio.create_task(one(c, url, *mix.body(), deadline)))
        return list(await asyncio.gather(*tasks))


class RssWatch:
    """The server's RSS (with its children), sampled every 0.25 s in a thread."""

    def __init__(self, pid: int):
        self.p, self.samples, self._stop = psutil.Process(pid), [], threading.Event()

    def rss_mb(self) -> float:
        procs = [self.p, *self.p.children(recursive=True)]
        return sum(p.memory_info().rss for p in procs if p.is_running()) / 2**20

    def __enter__(self) -> RssWatch:
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self.rss_mb())
            except psutil.Error:
                pass
            self._stop.wait(0.25)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()


def metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics", headers=HDR, timeout=10).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


TIMING_KEYS = ("queue_s", "prefill_s", "decode_s", "steps", "generated_tokens", "cached_prompt_tokens")


def missed(recs: list[dict]) -> list[dict]:
    """The admitted requests that did not make their deadline, for diagnosis: kind, send time (from the
    row's first send), latency, TTFT, flags and the server's own timings."""
    t0 = min((r["t_send"] for r in recs), default=0.0)
    out = []
    for r in recs:
        if r["status"] == 503 or r["good"]:
            continue
        keep = {k: r.get(k) for k in ("kind", "status", "latency_s", "ttft_s", "flags", "error", "server")}
        out.append({"t_send_s": round(r["t_send"] - t0, 3), **keep})
    return out


def summarise(recs: list[dict], seconds: float) -> dict:
    ok = [r for r in recs if r["status"] == 200 and r["error"] is None]
    lat = [r["latency_s"] for r in ok]
    ttft = [r["ttft_s"] for r in ok if r["ttft_s"] is not None]
    refused = sum(r["status"] == 503 for r in recs)
    lost = sum(r["error"] is not None or r["status"] not in (200, 503) for r in recs)
    good = sum(r["good"] for r in recs)
    admitted = len(recs) - refused
    by_kind = {k: pct([r["latency_s"] for r in ok if r["kind"] == k], 0.5) for k in sorted({r["kind"] for r in recs})}
    return {
        "sent": len(recs),
        "answered": len(ok),
        "answered_rps": len(ok) / seconds,
        "p50_s": pct(lat, 0.5),
        "p95_s": pct(lat, 0.95),
        "p99_s": pct(lat, 0.99),
        "ttft_p50_s": pct(ttft, 0.5),
        "ttft_p95_s": pct(ttft, 0.95),
        "ttft_p99_s": pct(ttft, 0.99),
        "goodput": good / len(recs) if recs else None,
        "goodput_admitted": good / admitted if admitted else None,
        "goodput_rps": good / seconds,
        "deadline_flagged": sum("deadline" in r["flags"] for r in ok),
        "rejected_503": refused / len(recs) if recs else None,
        "rejected_503_count": refused,
        "rejected_by_code": dict(collections.Counter(r.get("code") or "?" for r in recs if r["status"] == 503)),
        "lost": lost,
        "errors": sorted(
            {r["error"] or f"status {r['status']}" for r in recs if r["error"] or r["status"] not in (200, 503)}
        )[:5],
        "p50_by_kind_s": by_kind,
        "missed": missed(recs),
    }


def prefix_ttft(url: str, model: str, system: str, other: str, reps: int) -> dict:
    """TTFT of a robot request with the pinned system prompt (warm) and with another of the same length (cold)."""

    async def go() -> dict:
        cold, warm = [], []
        async with client() as c:
            for i in range(reps):
                for name in ("cold", "warm") if i % 2 == 0 else ("warm", "cold"):
                    sysp = system if name == "warm" else f"Variant {i}. " + other
                    mix = Mix(model, sysp, 0)
                    kind, b = mix.body()
                    while kind != "robot":
                        kind, b = mix.body()
                    r = await one(c, url, kind, b, 1e9)
                    (warm if name == "warm" else cold).append(r["ttft_s"])
        return {
            "cold_ttft_s": statistics.median(cold),
            "warm_ttft_s": statistics.median(warm),
            "ratio": statistics.median(w / c for w, c in zip(warm, cold)),
            "cold_all_s": [round(x, 4) for x in cold],
            "warm_all_s": [round(x, 4) for x in warm],
            "reps": reps,
        }

    return asyncio.run(go())


def solo_robot(url: str, model: str, system: str, reps: int = 5) -> float:
    """p50 latency of a robot request alone (warm prefix)."""

    async def go() -> list[float]:
        mix, out = Mix(model, system, 7), []
        async with client() as c:
            while len(out) < reps:
                kind, b = mix.body()
                if kind == "robot":
                    out.append((await one(c, url, kind, b, 1e9))["latency_s"])
        return out

    return statistics.median(asyncio.run(go()))


def plot(rows: list[dict], path: str, deadline: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    x = [r["offered_rps"] for r in rows]
    for key, style in (("p50_s", "o-"), ("p95_s", "s--"), ("p99_s", "^:")):
        ax.plot(x, [r[key] for r in rows], style, label=key[:-2])
    ax.axhline(deadline, color="grey", lw=0.8)
    ax.text(x[0], deadline, " deadline", va="bottom", fontsize=8, color="grey")
    for r in rows:
        ax.annotate(
            f"{r['load']}x\ngoodput {r['goodput']:.0%}\n503 {r['rejected_503']:.0%}",
            (r["offered_rps"], r["p99_s"]),
            fontsize=7,
            textcoords="offset points",
            xytext=(4, 4),
        )
    ax.set_xlabel("offered load (requests/s, open-loop Poisson)")
    ax.set_ylabel("latency of answered requests (s)")
    ax.set_title("edgekit serve under robot traffic (measured)", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    ap = parser(__doc__, model="qwen2.5-coder-0.5b-instruct", threads=True)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--cap-seconds", type=float, default=20.0)
    ap.add_argument(
        "--deadline",
        default="auto",
        help="every request's deadline (edgekit.deadline_s), seconds, or auto: 3x the solo robot request's p50",
    )
    ap.add_argument("--loads", default="0.5,0.9,1.5")
    ap.add_argument("--max-queue", type=int, default=4)
    ap.add_argument("--sys-words", type=int, default=600, help="system prompt size in words (~1,000 tokens)")
    ap.add_argument("--prefix-reps", type=int, default=6)
    ap.add_argument("--plot", default=None, help="write the latency-vs-load plot here (PNG)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="SmolLM2, 4 s per load: checks that it runs")
    a = ap.parse_args(argv)
    if a.smoke:
        a.model, a.seconds, a.cap_seconds, a.prefix_reps = "smollm2-135m-instruct", 4.0, 3.0, 2
    path = str(resolve(a.model).path)
    threads = a.threads or 2
    system = system_text(a.sys_words)
    other = system_text(a.sys_words, variant="(cold) ")
    loads = [float(x) for x in a.loads.split(",")]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(system)
        sys_file = f.name
    cmd = [
        sys.executable, "-m", "edgekit.cli.main", "serve", "--model", path, "--port", "{port}", "--host", "127.0.0.1",
        "--max-seqs", "8", "--max-n", "1", "--max-queue", str(a.max_queue),
        "--system-prompt-file", sys_file, "--ctx", "8192", "--threads", str(threads), "--max-tokens-cap", "64",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "EDGEKIT_API_KEY"}
    try:
        with loopback_server(cmd, ready_path="/healthz", timeout=300, env=env, name="edgekit-serve") as srv:
            url = srv.url
            model = httpx.get(url + "/v1/models", headers=HDR, timeout=10).json()["data"][0]["id"]
            log("prefix: TTFT with the pinned system prompt vs another of the same length")
            prefix = prefix_ttft(url, model, system, other, a.prefix_reps)
            log(f"  cold {prefix['cold_ttft_s']:.3f} s, warm {prefix['warm_ttft_s']:.3f} s")
            solo = solo_robot(url, model, system)
            deadline = 3 * solo if a.deadline == "auto" else float(a.deadline)
            log(f"solo robot request p50 {solo:.2f} s; deadline {deadline:.2f} s")
            cap_rows = []
            for c in (1, 2, 4, 8):
                mix = Mix(model, system, 100 + c, deadline)
                recs = asyncio.run(closed_loop(url, mix, c, a.cap_seconds, deadline))
                s = summarise(recs, a.cap_seconds)
                cap_rows.append(
                    {"clients": c, **{k: s[k] for k in ("answered_rps", "goodput_rps", "goodput", "p50_s", "p95_s")}}
                )
                log(f"  closed loop, {c} client(s): {s['goodput_rps']:.2f}/s in time, p50 {s['p50_s']} s")
            capacity = max(r["goodput_rps"] for r in cap_rows)
            rows = []
            for i, f in enumerate(loads):
                rate = f * capacity
                hits0, miss0 = metric(url, "edgekit_prefix_cache_hits"), metric(url, "edgekit_prefix_cache_misses")
                with RssWatch(srv.proc.pid) as rss:
                    recs = asyncio.run(
                        open_loop(url, Mix(model, system, 1000 + i, deadline), rate, a.seconds, deadline, a.seed + i)
                    )
                    time.sleep(0.5)
                hits, miss = (
                    metric(url, "edgekit_prefix_cache_hits") - hits0,
                    metric(url, "edgekit_prefix_cache_misses") - miss0,
                )
                s = summarise(recs, a.seconds)
                row = {
                    "load": f,
                    "offered_rps": rate,
                    **s,
                    "prefix_hit_rate": hits / (hits + miss) if hits + miss else None,
                    "peak_rss_mb": max(rss.samples) if rss.samples else None,
                    "rss_start_mb": rss.samples[0] if rss.samples else None,
                    "rss_end_mb": rss.samples[-1] if rss.samples else None,
                }
                rows.append(row)
                log(
                    f"  {f}x ({rate:.2f}/s): p50 {row['p50_s']} p99 {row['p99_s']} goodput {row['goodput']:.3f} "
                    f"503 {row['rejected_503']:.3f} lost {row['lost']}"
                )
            held = metric(url, "edgekit_engine_held_for_deadlines")
    finally:
        os.unlink(sys_file)
    out = {
        "rows": rows,
        "prefix": prefix,
        "capacity": {
            "rps": capacity,
            "closed_loop": cap_rows,
            "how": "highest answers-within-deadline rate of 1/2/4/8 closed-loop clients",
        },
        "held_for_deadlines_steps": held,
        "settings": {
            "model": a.model,
            "threads": threads,
            "deadline_s": deadline,
            "deadline_how": "3x the solo robot request's p50 (measured)" if a.deadline == "auto" else "given",
            "solo_robot_p50_s": solo,
            "max_seqs": 8,
            "max_queue": a.max_queue,
            "seconds": a.seconds,
            "cap_seconds": a.cap_seconds,
            "mix": "3/4 robot (pinned ~1,000-token system prompt + ~30-token observation, JSON schema, greedy, 32 "
            "tokens), 1/4 generic (short question, T=0.7, 32 tokens)",
            "method": "measured: open-loop Poisson arrivals (seeded) against a separate `edgekit serve` process "
            "on loopback, streaming; latency = send to last byte",
            "cpu": f"{os.cpu_count()} logical CPUs",
        },
    }
    if a.plot and rows:
        plot(rows, a.plot, deadline)
    summary = "; ".join(
        f"{r['load']}x: goodput {r['goodput']:.1%}, p50 {r['p50_s']:.2f} s, p99 {r['p99_s']:.2f} s, "
        f"503 {r['rejected_503']:.1%}, lost {r['lost']}"
        for r in rows
        if r["p50_s"] is not None
    )
    pre = f"prefix TTFT cold {prefix['cold_ttft_s']:.3f} s, warm {prefix['warm_ttft_s']:.3f} s"
    emit(out, a.json, f"capacity {capacity:.2f}/s; {summary}; {pre}")
    return 0


if __name__ == "__main__":
    run_main(main)
