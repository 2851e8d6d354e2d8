"""The official OpenAI Python SDK, unchanged, against `edgekit serve`.

    edgekit serve -m smollm2-135m-instruct --port 8080 &          # EDGEKIT_API_KEY=... to require a key
    python examples/openai_client.py --base-url http://127.0.0.1:8080/v1 --max-tokens 32

Shows: n samples from one batch with edgekit's confidence, streaming, the legacy completions
endpoint, a JSON-schema-constrained answer, and the `edgekit` extension (deadline) via extra_body.
"""

from __future__ import annotations

import argparse
import json
import os

from openai import OpenAI

# the JSON schema of step 4: one move, nothing else
MOVE_SCHEMA = {
    "type": "object",
    "properties": {"move": {"type": "string", "enum": ["left", "right", "stop"]}},
    "required": ["move"],
    "additionalProperties": False,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    ap.add_argument("--api-key", default=os.environ.get("EDGEKIT_API_KEY", "none"), help="default: $EDGEKIT_API_KEY")
    ap.add_argument("--model", default=None, help="default: the model the server serves")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--n", type=int, default=3)
    a = ap.parse_args()

    client = OpenAI(base_url=a.base_url, api_key=a.api_key, max_retries=1)
    model = a.model or client.models.list().data[0].id
    print(f"model: {model}")

    # 1. n samples, decoded in one batch; the vote and its agreement come back in `edgekit`
    r = client.chat.completions.create(
        model=model,
        n=a.n,
        max_tokens=a.max_tokens,
        temperature=0.8,
        seed=1,
        messages=[
            {"role": "user", "content": "A robot arm has 3 red and 4 blue blocks. How many blocks? Answer: <number>"}
        ],
        extra_body={"edgekit": {"deadline_s": 30}},
    )
    ek = r.model_extra["edgekit"]
    for c in r.choices:
        print(f"sample {c.index} ({c.finish_reason}): {c.message.content!r}")
    print(
        f"answer {ek['answer']!r}, agreement {ek['confidence']['votes']}/{ek['confidence']['n']}, "
        f"source {ek['source']}, "
        f"{ek['timings']['total_s']:.2f}s, tokens {r.usage.completion_tokens}"
    )

    # 2. streaming: tokens as they are decoded
    print("stream: ", end="", flush=True)
    stream = client.chat.completions.create(
        model=model, max_tokens=a.max_tokens, stream=True, messages=[{"role": "user", "content": "Name three colours."}]
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    print()

    # 3. the legacy completions endpoint (no chat template)
    c = client.completions.create(model=model, prompt="The capital of France is", max_tokens=min(8, a.max_tokens))
    print(f"completion: {c.choices[0].text!r}")

    # 4. a JSON-schema-constrained answer: every sample follows the schema (grammar-enforced)
    r = client.chat.completions.create(
        model=model,
        max_tokens=max(16, a.max_tokens),
        n=2,
        messages=[{"role": "user", "content": "Obstacle ahead. Which move? Reply in JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "move", "schema": MOVE_SCHEMA}},
    )
    for ch in r.choices:
        print(f"json sample {ch.index}: {ch.message.content!r}")
        if ch.finish_reason == "stop":
            json.loads(ch.message.content)
    print("done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
