"""Hostile input against the daemon with the real model loaded (SmolLM2): >= 1,000 generated requests,
never a 5xx (a deliberate 503 queue_full / draining / deadline_unmeetable aside), every error in
OpenAI's format, no admission slot leaked, and the server still answers a normal request after.

Bodies come from hypothesis: mostly a valid body with one field made hostile (wrong type, huge or
non-finite number, unicode incl. lone surrogates, deep nesting), raw bytes and JSON documents
(non-UTF-8, NaN/Infinity literals, 1e999, numbers of 400 digits, 100,000-deep arrays), wrong
content types, methods and paths. Valid bodies are rare on purpose and the caps keep generation
tiny (max_tokens <= 4, n <= 2, prompts <= 48 tokens): the point is the parsing and validation
path in front of a real model, plus enough real generations to reach the engine (>= 10).
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("llama_cpp")

SMOL = "smollm2-135m-instruct"
KEY = "hostile-key-3"
AUTH = {"Authorization": f"Bearer {KEY}"}
DELIBERATE_503 = {"queue_full", "draining", "deadline_unmeetable"}


@pytest.fixture(scope="module")
def real():
    from fastapi.testclient import TestClient

    from edgekit.runtime import Runtime
    from edgekit.serve.app import build_app
    from edgekit.serve.service import Limits, Service

    rt = Runtime(SMOL, threads=2, n_ctx=512, max_n=2)
    svc = Service(
        rt,
        limits=Limits(
            max_queue=4, max_body_bytes=1 << 20, max_prompt_tokens=48, max_tokens_cap=4, max_n=2, deadline_s=30
        ),
    )
    with TestClient(build_app(svc, api_key=KEY), raise_server_exceptions=False) as c:
        yield svc, c
    rt.close()
    svc.close()


class _Raw(str):
    """Already-encoded JSON text (punctuation, keys) on dumps_deep's stack."""


def dumps_deep(obj) -> str:
    """``json.dumps(obj, allow_nan=True)`` without recursion: the bodies nest up to 3000 deep, past what the
    recursive encoder can reach inside Hypothesis' stack allowance (it failed on a body nested 1991 deep in the
    full suite, before the request was sent)."""
    out, stack = [], [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, _Raw):
            out.append(x)
        elif isinstance(x, (dict, list)):
            items = list(x.items()) if isinstance(x, dict) else [(None, v) for v in x]
            out.append("{" if isinstance(x, dict) else "[")
            stack.append(_Raw("}" if isinstance(x, dict) else "]"))
            for i, (k, v) in reversed(list(enumerate(items))):
                stack.append(v)
                if isinstance(x, dict):  # json's key rules: a str as is, True -> "true", 1.5 -> "1.5", None -> "null"
                    stack.append(_Raw(json.dumps(k if isinstance(k, str) else json.dumps(k, allow_nan=True)) + ": "))
                if i:
                    stack.append(_Raw(", "))
        else:
            out.append(json.dumps(x, allow_nan=True))
    return "".join(out)


def _strategies():
    from hypothesis import strategies as st

    big = st.sampled_from([10**30, -(10**30), 2**63, -(2**63) - 1, 10**400])
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(-(2**70), 2**70)
        | big
        | st.floats(allow_nan=True, allow_infinity=True)
        | st.text(max_size=20)
        | st.sampled_from(["\ud800", "\udfff x", "\x00", "\u202e", "𝔘𝔫𝔦", "\ufeff"])
    )
    anyjson = st.recursive(
        scalars, lambda k: st.lists(k, max_size=3) | st.dictionaries(st.text(max_size=8), k, max_size=3), max_leaves=10
    )
    # incl. empty, any unicode and lone surrogates (valid JSON escapes, not text): may pass validation and run
    text = st.text(max_size=30) | st.sampled_from(["\ud800 hi", "a\udfffb", "\x00", "\u202e", "\ud83d\ude00"])

    def nested(depth: int, leaf: object = 1) -> object:
        x = leaf
        for i in range(depth):
            x = [x] if i % 2 else {"a": x}
        return x

    deep = st.integers(1, 3000).map(nested)
    # hostile values per field: wrong types and out-of-range values (some are valid by chance: they run)
    hostile = {
        "model": anyjson | st.sampled_from(["", " ", SMOL + "\x00", "../../etc/passwd", "a" * 5000]),
        "messages": anyjson | deep | st.lists(st.fixed_dictionaries({"role": anyjson, "content": anyjson}), max_size=3),
        "prompt": anyjson | deep | st.lists(anyjson, max_size=3),
        "max_tokens": anyjson | st.integers(-5, 10**6).filter(lambda v: not 1 <= v <= 4),
        "n": anyjson | st.integers(-3, 10**6).filter(lambda v: not 1 <= v <= 2),
        "temperature": anyjson | st.floats(allow_nan=True).filter(lambda v: not 0 <= v <= 2),
        "top_p": anyjson | st.floats(allow_nan=True).filter(lambda v: not 0 < v <= 1),
        "seed": anyjson | big,
        "stop": anyjson | st.lists(st.text(max_size=3), min_size=5, max_size=30),
        "stream": anyjson,
        "logprobs": anyjson,
        "top_logprobs": anyjson,
        "stream_options": anyjson,
        "response_format": anyjson
        | st.fixed_dictionaries(
            {
                "type": st.just("json_schema"),
                "json_schema": st.fixed_dictionaries(
                    {
                        "name": st.just("x"),
                        "schema": anyjson | deep | st.fixed_dictionaries({"type": anyjson, "properties": anyjson}),
                    }
                ),
            }
        ),
        "edgekit": anyjson
        | st.dictionaries(
            st.sampled_from(["deadline_s", "aggregate", "extractor", "top_k", "min_p", "ignore_eos", "zzz"]),
            anyjson,
            min_size=1,
            max_size=3,
        ),
        "logit_bias": anyjson,
        "tools": anyjson,
        "best_of": anyjson,
        "echo": anyjson,
        "suffix": anyjson,
    }
    chat = st.fixed_dictionaries(
        {
            "model": st.just(SMOL),
            "messages": st.lists(
                st.fixed_dictionaries({"role": st.sampled_from(["user", "system"]), "content": text}),
                min_size=1,
                max_size=2,
            ).map(lambda ms: ms + [{"role": "user", "content": "hi"}]),
        },
        optional={
            "max_tokens": st.integers(1, 4),
            "n": st.integers(1, 2),
            "temperature": st.floats(0, 2),
            "seed": st.integers(0, 2**31),
            "stream": st.booleans(),
            "logprobs": st.booleans(),
            "stop": st.text(min_size=1, max_size=3),
        },
    )
    completion = st.fixed_dictionaries(
        {"model": st.just(SMOL), "prompt": text.map(lambda t: t + " hi")},
        optional={
            "max_tokens": st.integers(1, 4),
            "n": st.integers(1, 2),
            "stream": st.booleans(),
            "echo": st.just(False),
        },
    )
    chat_p, comp_p = "/v1/chat/completions", "/v1/completions"

    def mutate(body: dict, field: str, value: object) -> dict:
        return {**body, field: value}

    def one_field(path: str, base):
        keys = [
            k
            for k in hostile
            if not (path == chat_p and k in ("prompt", "echo", "suffix", "best_of"))
            and not (path == comp_p and k in ("messages", "response_format", "top_logprobs", "tools"))
        ]
        return st.tuples(base, st.sampled_from(keys)).flatmap(
            lambda bf: hostile[bf[1]].map(lambda v: (path, "POST", mutate(bf[0], bf[1], v), "application/json"))
        )

    valid = st.one_of(
        chat.map(lambda b: (chat_p, "POST", b, "application/json")),
        completion.map(lambda b: (comp_p, "POST", b, "application/json")),
    )
    mutated = one_field(chat_p, chat) | one_field(comp_p, completion)
    raw_bytes = st.one_of(
        st.binary(max_size=300),
        anyjson.map(lambda v: json.dumps(v, allow_nan=True).encode("utf-8", "surrogatepass")),
        st.sampled_from(
            [
                b"",
                b"{",
                b"[]",
                b"null",
                b'{"model": NaN}',
                b'{"model": "x", "max_tokens": Infinity}',
                b'{"max_tokens": 1e999}',
                b'{"n": -1e999}',
                b'{"seed": ' + b"9" * 400 + b"}",
                b"\xff\xfe{}",
                b'\xef\xbb\xbf{"model": "x"}',
                b'{"model": "\\ud800"}',
                b'{"a":' * 100000,
                b"[" * 100000 + b"]" * 100000,
                b'{"model": "x", "model": 3}',
            ]
        ),
    ).flatmap(lambda raw: st.sampled_from([chat_p, comp_p]).map(lambda p: (p, "POST", raw, "application/json")))
    transport = st.one_of(
        st.tuples(
            st.sampled_from([chat_p, comp_p]),
            st.just("POST"),
            mutated.map(lambda m: m[2]),
            st.sampled_from(
                [
                    "text/plain",
                    "application/x-www-form-urlencoded",
                    "multipart/form-data; boundary=x",
                    "application/json; charset=latin-1",
                    "",
                ]
            ),
        ),
        st.tuples(
            st.sampled_from(
                [
                    chat_p,
                    comp_p,
                    "/v1/models",
                    "/v1/models/" + SMOL,
                    "/v1/models/%00",
                    "/healthz",
                    "/metrics",
                    "/admin/replan",
                    "/admin/live",
                    "/v1/../metrics",
                    "/" + "x" * 3000,
                    "/v1/chat/completions/x",
                ]
            ),
            st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "POST"]),
            st.just(b"{}"),
            st.just("application/json"),
        ),
    )
    return st.one_of(valid, *([mutated] * 30), *([raw_bytes] * 10), *([transport] * 6))  # ~2 % valid: few generations


def test_1000_hostile_requests_never_5xx_with_the_real_model(real):
    from hypothesis import HealthCheck, given, settings

    svc, c = real
    seen: dict = {"n": 0, "status": {}, "generated": 0}

    @settings(
        max_examples=1100, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(req=_strategies())
    def fuzz(req):
        path, method, body, ctype = req
        content = body if isinstance(body, bytes) else dumps_deep(body).encode("utf-8", "surrogatepass")
        headers = {**AUTH, **({"Content-Type": ctype} if ctype else {})}
        before = svc.tap.batches
        r = c.request(method, path, content=content, headers=headers)
        seen["n"] += 1
        seen["status"][r.status_code] = seen["status"].get(r.status_code, 0) + 1
        seen["generated"] += svc.tap.batches - before
        if r.status_code >= 500:
            assert r.status_code == 503 and r.json()["error"]["code"] in DELIBERATE_503, (
                r.status_code,
                r.text[:300],
                content[:300],
            )
        if r.status_code >= 400 and method != "HEAD":
            err = r.json()["error"]
            assert set(err) == {"message", "type", "param", "code"} and err["message"], r.text[:300]
        elif path in ("/v1/chat/completions", "/v1/completions") and method == "POST":
            if r.headers["content-type"].startswith("text/event-stream"):
                assert r.text.endswith("data: [DONE]\n\n")
            else:
                assert r.json()["choices"], r.text[:300]

    fuzz()
    assert seen["n"] >= 1000, seen
    assert seen["generated"] >= 10, seen  # real generations happened, not only refusals
    assert svc.admitted == 0 and svc.waiting == 0, seen  # every admitted request released its slot
    ok = c.post(
        "/v1/chat/completions",
        json={"model": SMOL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 3},
        headers=AUTH,
    )
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] is not None
    assert c.get("/healthz", headers=AUTH).status_code == 200
    print("statuses:", dict(sorted(seen["status"].items())), "generations:", seen["generated"])
