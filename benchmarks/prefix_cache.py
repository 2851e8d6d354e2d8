"""Prompt-prefix KV cache (#20): time to first token of a robot-shaped request (a shared ~1,000-token
system prompt + a ~30-token observation) with the cache against without it, interleaved in one process.

    python benchmarks/prefix_cache.py [--model qwen2.5-coder-0.5b-instruct] [--reps 5] [--sys-tokens 1000] [--json]

Two engines of the daemon's kind (llama.cpp, continuous batching ``max_seqs=8``, ``--ctx 4096``) are
loaded side by side: ``cold`` with ``prefix_cache=0`` and ``warm`` with the system prompt pinned at
start-up (``LlamaCppEngine.pin_prefix``, what ``edgekit serve --system-prompt-file`` does). Each rep
sends the same new observation to both, in alternating order (the VM's speed drifts minute to
minute): TTFT = ``timings.queue_s + timings.prefill_s`` (submit to the first sampled token), measured
per request. The same comparison runs on the one-request-at-a-time path (the library and CLI default:
the last prompt's cells are kept; ``prefix_cache=0`` turns that off). Requests are robot-shaped: a JSON
schema action (``{"action": "move"|"grasp"|"wait", "target": str}``), greedy, 24 tokens.

--json: {"prefix": {"cold_ttft_s", "warm_ttft_s", "ratio", "ratios", "cached_tokens", "prompt_tokens",
"pin_s"}, "single": {...same...}, "settings": {...}}. Goal: ratio <= 0.25.
"""

from __future__ import annotations

import statistics

from _common import emit, log, parser, run_main

from edgekit.engines.llamacpp import LlamaCppEngine
from edgekit.runtime import Runtime
from edgekit.schemas.options import SamplingOptions

SCHEMA = {
    "type": "object",
    "properties": {"action": {"enum": ["move", "grasp", "wait"]}, "target": {"type": "string", "maxLength": 20}},
    "required": ["action", "target"],
}
OBJECTS = ["red cup", "blue box", "screwdriver", "apple", "phone", "green bottle", "book", "sponge"]


def system_prompt(rt: Runtime, tokens: int) -> str:
    """A robot's system prompt of about ``tokens`` tokens: role, action schema, numbered safety rules."""
    head = (
        "You are the task planner of a mobile manipulator in a kitchen. Reply with one JSON action "
        '{"action": "move" | "grasp" | "wait", "target": <object or place>}. Safety rules:'
    )
    rules: list[str] = []
    i = 0
    while len(rt.engine.tokenize(" ".join([head, *rules]))) < tokens:
        i += 1
        rules.append(
            f"Rule {i}: never approach a person closer than {30 + i} cm, keep the gripper below {i % 7 + 2} N "
            f"near {OBJECTS[i % len(OBJECTS)]}s, and stop when zone {i} reports a fault."
        )
    return " ".join([head, *rules])


def observation(k: int) -> str:
    return (
        f"Observation {k}: the {OBJECTS[k % len(OBJECTS)]} is on shelf {k % 5 + 1}, {20 + 7 * k % 50} cm to the "
        f"left; a person is {90 + 13 * k % 200} cm away. Next action?"
    )


def ttft(rt: Runtime, system: str, k: int) -> tuple[float, int, int]:
    r = rt.generate(observation(k), system=system, max_tokens=24, temperature=0.0, json_schema=SCHEMA)
    t = r.timings
    return t.queue_s + t.prefill_s, t.cached_prompt_tokens, t.prompt_tokens


def compare(cold: Runtime, warm: Runtime, system: str, reps: int, offset: int) -> dict:
    c, w, cached, prompt = [], [], [], []
    ttft(cold, system, offset - 1)  # one request each before timing (the single path keeps its first prompt)
    ttft(warm, system, offset - 1)
    for i in range(reps):
        k = offset + i
        order = (("cold", cold), ("warm", warm)) if i % 2 == 0 else (("warm", warm), ("cold", cold))
        got = {name: ttft(rt, system, k) for name, rt in order}
        c.append(got["cold"][0])
        w.append(got["warm"][0])
        cached.append(got["warm"][1])
        prompt.append(got["warm"][2])
        assert got["cold"][1] == 0, "the cold engine reused a prefix"
        log(f"  rep {i + 1}: cold {got['cold'][0]:.3f} s, warm {got['warm'][0]:.3f} s ({got['warm'][1]} cached)")
    ratios = [b / a for a, b in zip(c, w, strict=True)]
    return {
        "cold_ttft_s": statistics.median(c),
        "warm_ttft_s": statistics.median(w),
        "ratio": statistics.median(ratios),
        "ratios": [round(x, 4) for x in ratios],
        "cold_ttft_all_s": [round(x, 4) for x in c],
        "warm_ttft_all_s": [round(x, 4) for x in w],
        "cached_tokens": statistics.median(cached),
        "prompt_tokens": statistics.median(prompt),
    }


def main(argv=None) -> int:
    ap = parser(__doc__, reps=5, model="qwen2.5-coder-0.5b-instruct", threads=2)
    ap.add_argument("--sys-tokens", type=int, default=1000, help="system prompt length in tokens (default 1000)")
    ap.add_argument("--ctx", type=int, default=4096)
    args = ap.parse_args(argv)
    out: dict = {
        "settings": {
            "model": args.model,
            "threads": args.threads,
            "reps": args.reps,
            "ctx": args.ctx,
            "sys_tokens": args.sys_tokens,
            "how": "measured: median over reps of per-request TTFT (queue_s + prefill_s), cold and warm interleaved",
        }
    }
    kw = {"n_ctx": args.ctx, "threads": args.threads}
    for name, batch in (("prefix", {"max_seqs": 8}), ("single", {})):
        log(f"{name}: loading two engines ({'continuous batching' if batch else 'one request at a time'})")
        with Runtime(LlamaCppEngine(args.model, prefix_cache=0, **kw, **batch)) as cold:
            with Runtime(LlamaCppEngine(args.model, **kw, **batch)) as warm:
                system = system_prompt(warm, args.sys_tokens)
                pin_s = None
                if batch:
                    import time

                    t0 = time.perf_counter()
                    n = warm.engine.pin_prefix(system, SamplingOptions())
                    pin_s = time.perf_counter() - t0
                    log(f"  pinned {n} tokens in {pin_s:.2f} s")
                row = compare(cold, warm, system, args.reps, offset=1 if batch else 101)
                row["pin_s"] = pin_s
                if batch:
                    row["engine_stats"] = {k: v for k, v in warm.engine.batching_stats().items() if "prefix" in k}
                out[name] = row
    for name in ("prefix", "single"):
        r = out[name]
        log(
            f"{name}: TTFT cold {r['cold_ttft_s']:.3f} s, warm {r['warm_ttft_s']:.3f} s, ratio {r['ratio']:.3f} "
            f"({r['cached_tokens']:.0f} of {r['prompt_tokens']:.0f} prompt tokens cached) -- goal <= 0.25: "
            f"{'met' if r['ratio'] <= 0.25 else 'NOT met'}"
        )
    emit(out, args.json)
    return 0


if __name__ == "__main__":
    run_main(main)
