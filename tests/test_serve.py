"""`edgekit serve`: the real daemon on loopback (SmolLM2, the official openai SDK), and the app
in-process with the fake engine for fuzzing (>= 1,000 hostile bodies) and plan behaviour.

Order matters (never two llama.cpp processes of ours at once): the robot example runs first, then
server A (module fixture) for the SDK/limits/auth/metrics tests, then A is stopped and server B
(--max-queue 1 --max-seqs 2 --max-n 2, under W^X via PR_SET_MDWE) serves the queue and SIGTERM-drain tests.
Both batch concurrent requests (continuous batching: A with the default --max-seqs 8).
"""

from __future__ import annotations

import ctypes
import inspect
import json
import os
import re
import runpy
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
openai = pytest.importorskip("openai")

from conftest import free_port  # noqa: E402 - after the importorskip of the optional serve extras

ROOT = Path(__file__).resolve().parents[1]
SMOL = "smollm2-135m-instruct"
KEY = "test-key-7f3a"
AUTH = {"Authorization": f"Bearer {KEY}"}
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
ENV.pop("EDGEKIT_API_KEY", None)
ENV.pop("EDGEKIT_DEBUG", None)

MDWE = (
    "import ctypes, runpy, sys; ctypes.CDLL(None).prctl(65, 1, 0, 0, 0); "
    "sys.argv = ['edgekit'] + sys.argv[1:]; runpy.run_module('edgekit.cli.main', run_name='__main__')"
)


def mdwe_supported() -> bool:
    return ctypes.CDLL(None).prctl(66, 0, 0, 0, 0) >= 0  # PR_GET_MDWE (Linux >= 6.3)


class Server:
    """`python -m edgekit.cli.main serve ...` as a subprocess on 127.0.0.1, ready once /healthz answers."""

    def __init__(self, tmp: Path, *args: str, wx: bool = False):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base = self.url + "/v1"
        self.log = open(tmp / f"serve-{self.port}.log", "w+")
        head = [sys.executable, "-c", MDWE] if wx else [sys.executable, "-m", "edgekit.cli.main"]
        self.proc = subprocess.Popen(
            [
                *head,
                "serve",
                "-m",
                SMOL,
                "--port",
                str(self.port),
                "--api-key",
                KEY,
                "--ctx",
                "2048",
                "--threads",
                "2",
                *args,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=ENV,
            cwd=ROOT,
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                pytest.fail("edgekit serve exited at start: " + self.text()[-800:])
            try:
                if httpx.get(self.url + "/healthz", headers=AUTH, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.proc.kill()
        pytest.fail("edgekit serve did not come up in 120 s: " + self.text()[-800:])

    def text(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def post(self, path: str, body: dict, timeout: float = 60, **kw) -> httpx.Response:
        return httpx.post(self.base + path, json=body, headers=kw.pop("headers", AUTH), timeout=timeout, **kw)

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", headers=AUTH, timeout=10).text

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close() if not self.log.closed else None
        return self.proc.returncode


def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pat = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" ([0-9.e+-]+)"
    m = re.search(r"^" + pat + r"$", text, re.M)
    return float(m.group(1)) if m else 0.0


def chat_body(content: str = "Say hello.", **kw) -> dict:
    return {"model": SMOL, "messages": [{"role": "user", "content": content}], "max_tokens": 4, **kw}


# ------------------------------------------------------------------------------ no server yet
def test_robot_assistant_example_runs():
    r = subprocess.run(
        [
            sys.executable,
            "examples/robot_assistant.py",
            "--model",
            SMOL,
            "--max-tokens",
            "6",
            "--n",
            "2",
            "--tasks",
            "2",
            "--threads",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        env=ENV,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("agreement=") == 3, r.stdout
    assert "preempted: yes" in r.stdout and "obstacle detected" in r.stdout, r.stdout


def refused_in_one_line(*args: str) -> str:
    """`edgekit serve ARGS` must exit 2 at start-up with one `error: ... (fix: ...)` line; that line."""
    r = subprocess.run(
        [sys.executable, "-m", "edgekit.cli.main", "serve", *args, "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=ENV,
    )
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "(fix: " in lines[0], r.stderr
    return lines[0]


def test_bad_plan_refuses_to_start_with_one_line(tmp_path):
    bad = tmp_path / "plan.json"
    bad.write_text('{"schema_version": 2, "chosen": 7}')
    for plan in (str(bad), str(tmp_path / "missing.json")):
        refused_in_one_line("--plan", plan)


def test_systemd_unit_is_valid_and_hardened(tmp_path):
    unit = (ROOT / "examples/systemd/edgekit.service").read_text()
    env = (ROOT / "examples/systemd/edgekit.env").read_text()
    for key in (
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=",
        "MemoryDenyWriteExecute=yes",
        "KillSignal=SIGTERM",
        "EnvironmentFile=",
        "ExecStart=",
        "[Install]",
    ):
        assert re.search(r"^" + re.escape(key), unit, re.M), key
    assert re.search(r"^EDGEKIT_API_KEY=", env, re.M) and "EDGEKIT_SERVE_ARGS=" in env
    exe = shutil.which("systemd-analyze")
    if exe is None:
        return  # the keys above are the check on machines without systemd
    copy_ = tmp_path / "edgekit.service"  # verify needs an executable ExecStart and a readable env file
    copy_.write_text(
        unit.replace("/opt/edgekit/venv/bin/edgekit", shutil.which("edgekit") or "/bin/true").replace(
            "EnvironmentFile=", "EnvironmentFile=-"
        )
    )
    r = subprocess.run([exe, "verify", str(copy_)], capture_output=True, text=True, timeout=60)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert not re.search(r"Unknown key|Failed to parse|ignoring", out), out


def test_a_pinned_system_prompt_is_reused_and_shown_in_metrics(tmp_path):
    sys_prompt = "You control a warehouse robot. " + " ".join(f"Rule {i}: keep aisle {i} clear." for i in range(30))
    f = tmp_path / "system.txt"
    f.write_text(sys_prompt)
    s = Server(tmp_path, "--system-prompt-file", str(f), "--max-seqs", "4")
    try:
        assert "system prompt pinned in the prefix cache" in s.text()
        m0 = s.metrics()
        pinned = metric(m0, "edgekit_prefix_cache_tokens")
        assert pinned > 200 and metric(m0, "edgekit_prefix_cache_budget_tokens") == 1024  # half of --ctx 2048
        body = chat_body("Box at shelf 3. Next action?", temperature=0)
        body["messages"].insert(0, {"role": "system", "content": sys_prompt})
        for _ in range(2):
            r = s.post("/chat/completions", body)
            assert r.status_code == 200, r.text
            assert r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] >= pinned
        m = s.metrics()
        assert metric(m, "edgekit_prefix_cache_hits") == 2
        assert metric(m, "edgekit_prefix_cache_reused_tokens") >= 2 * pinned
    finally:
        assert s.stop() == 0


def test_a_system_prompt_file_too_long_or_a_negative_cache_is_one_line(tmp_path):
    f = tmp_path / "long.txt"
    f.write_text("Always be careful near people. " * 200)  # ~1,200 tokens: more than the cache of 512
    assert "holds 512" in refused_in_one_line("-m", SMOL, "--system-prompt-file", str(f), "--ctx", "1024")
    assert "--prefix-cache" in refused_in_one_line("-m", SMOL, "--prefix-cache", "-1")


# ------------------------------------------------------------------------------ server A
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(
        tmp_path_factory.mktemp("serve"),
        "--max-n",
        "4",
        "--max-tokens-cap",
        "256",
        "--max-body-bytes",
        "100000",
        "--max-prompt-tokens",
        "1500",
    )
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base, api_key=KEY, max_retries=0, timeout=120)


def test_sdk_chat_completions_and_models(client):
    assert [m.id for m in client.models.list().data] == [SMOL]
    r = client.chat.completions.create(
        model=SMOL, messages=[{"role": "user", "content": "What is 2 + 2?"}], max_tokens=6
    )
    assert r.object == "chat.completion" and len(r.choices) == 1 and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens <= 6
    ek = r.model_extra["edgekit"]
    assert ek["source"] == "local" and ek["confidence"]["n"] == 1 and ek["threshold"] is None
    assert ek["timings"]["total_s"] > 0 and ek["latency"]["measured_s"] == ek["timings"]["total_s"]
    c = client.completions.create(model=SMOL, prompt="The sky is", max_tokens=4)
    assert c.object == "text_completion" and isinstance(c.choices[0].text, str) and c.usage.prompt_tokens > 0


def test_sdk_streaming_concatenates_to_the_final_text(client, server):
    for extra in ({}, {"stop": ["."]}):  # with a stop sequence the tail is held back until it cannot be cut
        msgs = [{"role": "user", "content": "Describe the sea in one sentence."}]
        full = (
            client.chat.completions.create(model=SMOL, messages=msgs, max_tokens=16, **extra).choices[0].message.content
        )
        chunks = list(client.chat.completions.create(model=SMOL, messages=msgs, max_tokens=16, stream=True, **extra))
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert text == full and len(chunks) > 2
        assert chunks[-1].choices[0].finish_reason in ("stop", "length") and "edgekit" in chunks[-1].model_extra
    comp = "".join(
        ch.choices[0].text
        for ch in client.completions.create(model=SMOL, prompt="One, two,", max_tokens=6, stream=True)
    )
    assert comp == client.completions.create(model=SMOL, prompt="One, two,", max_tokens=6).choices[0].text
    with httpx.stream(
        "POST",
        server.base + "/chat/completions",
        headers=AUTH,
        timeout=60,
        json=chat_body(stream=True, stream_options={"include_usage": True}),
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events[:-1])
    usage = json.loads(events[-3][6:])
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] <= 4


def test_n3_three_choices_from_one_batch(client, server):
    before = metric(server.metrics(), "edgekit_engine_batches")
    r = client.chat.completions.create(
        model=SMOL, messages=[{"role": "user", "content": "Pick a colour."}], n=3, max_tokens=5, seed=3
    )
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert r.model_extra["edgekit"]["confidence"]["n"] == 3
    assert metric(server.metrics(), "edgekit_engine_batches") - before == 1  # one engine call: one batch of 3


def test_auth_401_and_constant_time_compare(server):
    from edgekit.serve.app import Guard

    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}, {"Authorization": KEY}):
        r = server.post("/chat/completions", chat_body(), headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["error"]["code"] == "invalid_api_key" and r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(server.base + "/models", timeout=10).status_code == 401
    assert httpx.get(server.url + "/metrics", timeout=10).status_code == 401
    assert "hmac.compare_digest" in inspect.getsource(Guard)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.base, api_key="nope", max_retries=0).models.list()


def test_limits_and_bad_input_are_4xx_naming_the_field(server, client):
    r = httpx.post(
        server.base + "/chat/completions",
        headers={**AUTH, "Content-Type": "application/json"},
        content=b'{"model": "' + b"x" * 200_000 + b'"}',
        timeout=30,
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunked():  # no Content-Length: the cap applies while reading
        for _ in range(30):
            yield b" " * 10_000

    r = httpx.post(server.base + "/completions", headers=AUTH, content=chunked(), timeout=30)
    assert r.status_code == 413
    cases = [
        (chat_body(max_tokens=10_000), 400, "max_tokens"),
        ({**chat_body(), "max_completion_tokens": 257}, 400, "max_completion_tokens"),
        (chat_body(n=5), 400, "n"),
        (chat_body(n=0), 400, "n"),
        (chat_body(temperature=-1), 400, "temperature"),
        (chat_body(temperature="hot"), 400, "temperature"),
        (chat_body(top_logprobs=3, logprobs=True), 400, "top_logprobs"),
        (chat_body(edgekit={"deadline_s": -1}), 400, "edgekit.deadline_s"),  # a deadline in the past
        (chat_body(edgekit={"deadline_s": 0}), 400, "edgekit.deadline_s"),
        (chat_body(edgekit={"deadline_s": "soon"}), 400, "edgekit.deadline_s"),  # not a number
        (chat_body(edgekit={"deadline_s": "2.5"}), 400, "edgekit.deadline_s"),
        (
            chat_body(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}),
            400,
            "response_format",
        ),
        ({**chat_body(), "model": "gpt-4"}, 404, "model"),
        ({"model": SMOL}, 400, "messages"),
        (chat_body("word " * 1600), 400, "messages"),  # over --max-prompt-tokens
        (chat_body("word " * 1100, n=4, max_tokens=256), 400, "messages"),  # prompt + 4 x 256 beyond the 2048 context
    ]
    for body, status, param in cases:
        r = server.post("/chat/completions", body)
        assert r.status_code == status, (param, r.text)
        err = r.json()["error"]
        assert err["param"] == param and err["message"] and "type" in err and "code" in err, (param, err)
        if body.get("messages", [{}])[0].get("content", "").startswith("word"):
            assert err["code"] == "context_length_exceeded" and ("cap of 1500" in err["message"]) != (
                "context" in err["message"]
            )
    r = httpx.post(server.base + "/chat/completions", headers=AUTH, content=b"{not json", timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=SMOL, messages=[{"role": "user", "content": "hi"}], max_tokens=100_000)
    assert e.value.param == "max_tokens"
    assert server.post("/chat/completions", chat_body()).status_code == 200  # still serving


def test_response_format_json_schema_every_choice_validates(client):
    import jsonschema

    schema = runpy.run_path(str(ROOT / "examples/openai_client.py"))["MOVE_SCHEMA"]  # the example's schema
    r = client.chat.completions.create(
        model=SMOL,
        n=3,
        max_tokens=48,
        temperature=0.8,
        seed=1,
        messages=[{"role": "user", "content": "Obstacle ahead. Which move? JSON please."}],
        response_format={"type": "json_schema", "json_schema": {"name": "move", "schema": schema}},
    )
    assert len(r.choices) == 3
    for c in r.choices:
        assert c.finish_reason == "stop", c
        jsonschema.validate(json.loads(c.message.content), schema)
    o = client.chat.completions.create(
        model=SMOL,
        max_tokens=48,
        messages=[{"role": "user", "content": "A JSON object, please."}],
        response_format={"type": "json_object"},
    )
    if o.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(o.choices[0].message.content), dict)


def test_metrics_move_and_healthz(server):
    before = server.metrics()
    assert server.post("/chat/completions", chat_body()).status_code == 200
    assert server.post("/chat/completions", chat_body(n=99)).status_code == 400
    after = server.metrics()
    ep = "/v1/chat/completions"
    assert (
        metric(after, "edgekit_requests_total", endpoint=ep, status="200")
        == metric(before, "edgekit_requests_total", endpoint=ep, status="200") + 1
    )
    assert (
        metric(after, "edgekit_requests_total", endpoint=ep, status="400")
        == metric(before, "edgekit_requests_total", endpoint=ep, status="400") + 1
    )
    assert metric(after, "edgekit_results_total", source="local") > metric(
        before, "edgekit_results_total", source="local"
    )
    assert metric(after, "edgekit_completion_tokens_total") > metric(before, "edgekit_completion_tokens_total")
    assert metric(after, "edgekit_queue_wait_seconds_count") == metric(before, "edgekit_queue_wait_seconds_count") + 1
    for name in (
        "edgekit_request_seconds_bucket",
        "edgekit_queue_depth",
        "edgekit_in_flight",
        "edgekit_generation_seconds_count",
    ):
        assert name in after
    h = httpx.get(server.url + "/healthz", headers=AUTH, timeout=10)
    doc = h.json()
    assert h.status_code == 200 and doc["status"] == "ok" and doc["model_loaded"] and doc["model"] == SMOL
    assert doc["queue_depth"] == 0 and doc["cloud"] == {"configured": False}


def test_client_disconnect_frees_the_server(server):
    long = chat_body("Count from one to one hundred.", max_tokens=200, stream=True, edgekit={"ignore_eos": True})
    before = metric(server.metrics(), "edgekit_cancelled_total", reason="client_disconnected")
    with httpx.stream("POST", server.base + "/chat/completions", headers=AUTH, json=long, timeout=60) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(5)]  # a few chunks of the stream, then hang up
        assert any(x.startswith("data: {") for x in got)
    t0 = time.perf_counter()

    def gone(what: str) -> None:  # the abandoned 200-token generation ends at its next step and frees its slot
        for _ in range(300):
            if httpx.get(server.url + "/healthz", headers=AUTH, timeout=10).json()["in_flight"] == 0:
                return
            time.sleep(0.05)
        pytest.fail(f"the abandoned {what} kept the model")

    gone("stream")
    r = server.post("/chat/completions", chat_body(max_tokens=2))
    assert r.status_code == 200
    # the same for a non-streaming request whose client times out
    with pytest.raises(httpx.ReadTimeout):
        server.post("/chat/completions", {**long, "stream": False}, timeout=1.0)
    gone("non-streaming request")
    r = server.post("/chat/completions", chat_body(max_tokens=2))
    assert r.status_code == 200
    assert time.perf_counter() - t0 < 30
    assert metric(server.metrics(), "edgekit_cancelled_total", reason="client_disconnected") >= before + 2


def test_deadline_and_logprobs(server, client):
    t0 = time.perf_counter()
    r = server.post(
        "/chat/completions",
        chat_body("Count to one hundred.", max_tokens=256, edgekit={"deadline_s": 0.3, "ignore_eos": True}),
    )
    ek = r.json()["edgekit"]
    assert r.status_code == 200 and ek["deadline_s"] == 0.3 and "deadline" in ek["flags"]
    assert ek["finish_reasons"] == ["cancelled"] and r.json()["choices"][0]["finish_reason"] == "length"
    assert ek["timings"]["generated_tokens"] < 256 and time.perf_counter() - t0 < 20
    lp = client.chat.completions.create(
        model=SMOL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=5, logprobs=True
    )
    content = lp.choices[0].logprobs.content
    assert content and all(t.logprob <= 0 for t in content)
    assert "".join(t.token for t in content) == lp.choices[0].message.content


def test_stop_rule_in_the_body_stops_the_vote_and_a_bad_one_is_a_400(server):
    body = chat_body("Write one short sentence about a robot arm.", max_tokens=48, n=4, seed=3)
    r = server.post("/chat/completions", {**body, "edgekit": {"stop_rule": "decided", "extractor": "text"}})
    ek = r.json()["edgekit"]
    assert r.status_code == 200 and ek["stopping"]["rule"] == "decided"
    assert ek["stopping"]["counted"] == sum(f != "cancelled" for f in ek["finish_reasons"])
    bad = server.post("/chat/completions", {**body, "edgekit": {"stop_rule": "beta:2"}})
    err = bad.json()["error"]
    assert bad.status_code == 400 and err["param"] == "edgekit.stop_rule" and "(0.5, 1)" in err["message"]
    none = server.post("/chat/completions", {**body, "edgekit": {"stop_rule": "decided", "aggregate": "none"}})
    assert none.status_code == 400 and "stops a vote" in none.json()["error"]["message"]


def test_eight_concurrent_clients_share_decode_steps(server):
    """Eight clients at once, different options (greedy, sampled n=2, stop, logprobs, JSON schema,
    streaming): every one answered in full, in shared llama_decode steps, and the server is idle after."""
    import jsonschema

    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    bodies = [
        chat_body("Count to ten.", max_tokens=12, edgekit={"ignore_eos": True}),
        chat_body("Name a fruit.", max_tokens=10, n=2, temperature=0.9, seed=4),
        chat_body("List three animals.", max_tokens=12, stop=["\n"]),
        chat_body("Say hi.", max_tokens=8, logprobs=True),
        chat_body(
            "Is water wet? Answer in JSON.",
            max_tokens=16,
            response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": schema}},
        ),
        chat_body("Describe the moon.", max_tokens=12, stream=True),
        {"model": SMOL, "prompt": "Once upon a time", "max_tokens": 12, "edgekit": {"ignore_eos": True}},
        chat_body("What is 3 + 4?", max_tokens=10, temperature=0.5, seed=1),
    ]
    before = server.metrics()
    out: dict = {}
    barrier = threading.Barrier(len(bodies))

    def go(i: int) -> None:
        path = "/completions" if "prompt" in bodies[i] else "/chat/completions"
        barrier.wait()
        out[i] = server.post(path, bodies[i], timeout=180)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(200)
    assert sorted(out) == list(range(8)) and all(r.status_code == 200 for r in out.values()), {
        i: (r.status_code, r.text[:200]) for i, r in out.items()
    }
    assert out[5].text.endswith("data: [DONE]\n\n")
    docs = {i: r.json() for i, r in out.items() if i != 5}
    assert docs[0]["usage"]["completion_tokens"] == 12 and docs[6]["usage"]["completion_tokens"] == 12
    assert len(docs[1]["choices"]) == 2
    assert "\n" not in docs[2]["choices"][0]["message"]["content"]
    assert docs[3]["choices"][0]["logprobs"]["content"]
    if docs[4]["choices"][0]["finish_reason"] == "stop":
        jsonschema.validate(json.loads(docs[4]["choices"][0]["message"]["content"]), schema)
    after = server.metrics()
    shared = metric(after, "edgekit_engine_shared_steps") - metric(before, "edgekit_engine_shared_steps")
    steps = metric(after, "edgekit_engine_steps") - metric(before, "edgekit_engine_steps")
    assert shared >= 5 and metric(after, "edgekit_engine_max_rows_in_step") >= 4, (shared, steps)
    assert steps < 12 + 10 + 12 + 8 + 16 + 12 + 12 + 10, steps  # fewer decodes than one request at a time
    h = httpx.get(server.url + "/healthz", headers=AUTH, timeout=10).json()
    assert h["in_flight"] == 0 and h["queue_depth"] == 0 and h["slots"] == 8
    assert h["batching"]["running"] == 0 and h["batching"]["free_rows"] == 8


def test_openai_client_example_runs(server):
    r = subprocess.run(
        [
            sys.executable,
            "examples/openai_client.py",
            "--base-url",
            server.base,
            "--model",
            SMOL,
            "--max-tokens",
            "6",
            "--n",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        env={**ENV, "EDGEKIT_API_KEY": KEY},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "agreement" in r.stdout and "stream:" in r.stdout and r.stdout.rstrip().endswith("done"), r.stdout


# ------------------------------------------------------------------------------ server B
@pytest.fixture(scope="module")
def small_queue(server, tmp_path_factory):
    """A second server with --max-queue 1 --max-seqs 2 --max-n 2 (admits 1 + 2), started after A stops; under W^X
    (PR_SET_MDWE) where the kernel has it."""
    assert server.stop() == 0
    s = Server(
        tmp_path_factory.mktemp("serve-b"), "--max-queue", "1", "--max-seqs", "2", "--max-n", "2", wx=mdwe_supported()
    )
    yield s
    s.stop()


def test_bounded_queue_503_with_retry_after(small_queue):
    body = chat_body("Count to fifty.", max_tokens=16, edgekit={"ignore_eos": True})
    out: list = []

    def go():
        out.append(small_queue.post("/chat/completions", body, timeout=120))

    threads = [threading.Thread(target=go) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in out)
    assert set(codes) <= {200, 503} and codes.count(200) >= 3 and codes.count(503) >= 1, codes
    for r in out:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1 and r.json()["error"]["code"] == "queue_full"
    assert metric(small_queue.metrics(), "edgekit_rejected_total", reason="queue_full") == codes.count(503)


def test_sigterm_drains_in_flight_then_exits_0(small_queue):
    long = chat_body("Count to one hundred.", max_tokens=96, edgekit={"ignore_eos": True})
    box: dict = {}
    t = threading.Thread(target=lambda: box.update(r=small_queue.post("/chat/completions", long, timeout=120)))
    t.start()
    for _ in range(200):
        if httpx.get(small_queue.url + "/healthz", headers=AUTH, timeout=5).json()["in_flight"] >= 1:
            break
        time.sleep(0.02)
    small_queue.proc.send_signal(signal.SIGTERM)
    for _ in range(100):
        h = httpx.get(small_queue.url + "/healthz", headers=AUTH, timeout=5)
        if h.status_code == 503:
            break
        time.sleep(0.02)
    assert h.json()["status"] == "draining"
    late = small_queue.post("/chat/completions", chat_body())
    assert late.status_code == 503 and late.json()["error"]["code"] == "draining" and "retry-after" in late.headers
    t.join(120)
    assert box["r"].status_code == 200 and box["r"].json()["choices"][0]["finish_reason"] == "length"
    assert small_queue.proc.wait(60) == 0, small_queue.text()[-1500:]
    assert "stopped" in small_queue.text()


# ------------------------------------------------------------------------------ in process, fake engine
def fake_app(plan=None, **limits):
    from fake_engine import FakeEngine

    from edgekit.runtime import Runtime
    from edgekit.serve.app import build_app
    from edgekit.serve.service import Limits, Service

    svc = Service(
        Runtime(FakeEngine()),
        limits=Limits(**{"max_n": 8, "max_tokens_cap": 512, "max_body_bytes": 50_000, **limits}),
        plan=plan,
        plan_path="plan.json" if plan else None,
    )
    return svc, build_app(svc, api_key=KEY)


def _json_values():
    from hypothesis import strategies as st

    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**80), max_value=2**80)
        | st.floats(allow_nan=True, allow_infinity=True)
        | st.text(max_size=30)
    )
    return st.recursive(
        scalars,
        lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids, max_size=4),
        max_leaves=12,
    )


def test_hostile_bodies_never_500_and_the_server_keeps_serving():
    from fastapi.testclient import TestClient
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    svc, app = fake_app()
    c = TestClient(app, raise_server_exceptions=True)
    v = _json_values()

    def mostly(valid, hostile):  # 9 in 10 values valid, so that bodies get past the first checks
        return st.integers(0, 9).flatmap(lambda k: valid if k else hostile)

    text = st.text(min_size=1, max_size=40)
    part = st.fixed_dictionaries({"type": st.just("text"), "text": text})
    message = st.fixed_dictionaries(
        {
            "role": mostly(
                st.sampled_from(["user", "system", "assistant", "developer"]), st.sampled_from(["tool", "", 3]) | v
            ),
            "content": mostly(text | st.lists(part, min_size=1, max_size=2), v),
        }
    )
    messages = st.lists(message, min_size=1, max_size=3).map(lambda ms: ms + [{"role": "user", "content": "2+2?"}])
    schema = st.fixed_dictionaries(
        {"type": st.sampled_from(["object", "string", "integer", 5])}, optional={"properties": v}
    )
    valid = {
        "model": st.just("fake-0"),
        "messages": messages,
        "prompt": text | st.lists(text, min_size=1, max_size=2),
        "max_tokens": st.integers(1, 64),
        "max_completion_tokens": st.integers(1, 64),
        "n": st.integers(1, 8),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0.01, 1),
        "seed": st.integers(0, 2**32),
        "stop": st.text(min_size=1, max_size=4) | st.lists(st.text(min_size=1, max_size=4), max_size=4),
        "stream": st.booleans(),
        "logprobs": st.booleans() | st.integers(0, 1),
        "top_logprobs": st.integers(0, 2),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
        "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"}])
        | schema.map(lambda sc: {"type": "json_schema", "json_schema": {"name": "x", "schema": sc}}),
        "edgekit": st.fixed_dictionaries(
            {},
            optional={
                "deadline_s": st.floats(0.001, 100),
                "aggregate": st.sampled_from(["majority", "none"]),
                "extractor": st.sampled_from(["number", "text", "json", "regex:(a+)+$"]),
                "top_k": st.integers(0, 100),
                "min_p": st.floats(0, 1),
                "ignore_eos": st.booleans(),
            },
        ),
        "frequency_penalty": st.just(0),
        "user": text,
        "metadata": v,
    }
    hostile = {
        "model": st.sampled_from(["", "gpt-4", "fake-0 "]) | v,
        "messages": st.lists(message, max_size=2) | v,
        "max_tokens": st.integers(-5, 10**30) | v,
        "n": st.integers(-2, 10**6) | v,
        "temperature": st.floats() | v,
        "top_p": st.floats() | v,
        "seed": st.integers(-(2**70), 2**70) | v,
        "stop": st.lists(st.text(max_size=3), max_size=20) | v,
        "edgekit": st.dictionaries(
            st.sampled_from(["deadline_s", "aggregate", "extractor", "top_k", "zzz"]), v, max_size=3
        )
        | v,
    }
    fields = {k: mostly(vs, hostile.get(k, v)) for k, vs in valid.items()}
    required = {k: fields.pop(k) for k in ("model", "messages", "prompt")}
    body = st.fixed_dictionaries(required, optional=fields)
    raw = st.integers(0, 9).flatmap(
        lambda k: (
            body.map(lambda d: json.dumps(d).encode())
            if k
            else (st.binary(max_size=200) | v.map(lambda x: json.dumps(x).encode()))
        )
    )
    sent = {"n": 0}

    @settings(
        max_examples=1000, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(payload=raw, path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]))
    def fuzz(payload: bytes, path: str):
        sent["n"] += 1
        r = c.post(path, content=payload, headers={**AUTH, "Content-Type": "application/json"})
        assert r.status_code < 500, (r.status_code, r.text[:300], payload[:300])
        if r.status_code >= 400:
            err = r.json()["error"]
            assert set(err) == {"message", "type", "param", "code"} and err["message"]
        elif r.headers["content-type"].startswith("text/event-stream"):
            assert r.text.endswith("data: [DONE]\n\n")
        else:
            assert r.json()["choices"]

    fuzz()
    assert sent["n"] >= 1000
    assert svc.admitted == 0 and svc.waiting == 0  # every admitted request released its slot
    ok = c.post(
        "/v1/chat/completions",
        json={"model": "fake-0", "messages": [{"role": "user", "content": "3 + 1?"}], "n": 3},
        headers=AUTH,
    )
    assert ok.status_code == 200 and len(ok.json()["choices"]) == 3


def test_plan_applies_template_deadline_and_prediction():
    from fastapi.testclient import TestClient

    from edgekit.schemas.plan import PlanFile

    d = json.loads((ROOT / "tests/fixtures/plan-v2.json").read_text())
    d["chosen"].update(model_id="fake-0", model_sha256=None, prompt="Q: {question}\nAnswer: <number>")
    plan = PlanFile.model_validate(d)
    svc, app = fake_app(plan=plan)
    c = TestClient(app)
    r = c.post(
        "/v1/chat/completions", json={"model": "fake-0", "messages": [{"role": "user", "content": "2+2"}]}, headers=AUTH
    )
    ek = r.json()["edgekit"]
    assert r.status_code == 200 and len(r.json()["choices"]) == plan.chosen.options.n  # the plan's n
    assert ek["deadline_s"] == plan.target_s and ek["plan"] == "plan.json"
    assert ek["latency"]["predicted_s"] == plan.predicted.latency_at_percentile_s and ek["latency"]["note"] is None
    assert svc.tap.inner.options_seen[-1].max_tokens == plan.chosen.options.max_tokens
    assert metric(svc.metrics.render().decode(), "edgekit_latency_measured_over_predicted_count") == 1
    r = c.post(
        "/v1/chat/completions",
        json={
            "model": "fake-0",
            "messages": [{"role": "user", "content": "2+2"}],
            "temperature": 0.1,
            "edgekit": {"deadline_s": 1.5},
        },
        headers=AUTH,
    )
    ek = r.json()["edgekit"]
    assert ek["latency"]["predicted_s"] is None and "temperature" in ek["latency"]["note"] and ek["deadline_s"] == 1.5
    assert c.get("/v1/models/qwen2.5-coder-0.5b-instruct", headers=AUTH).status_code == 404


def test_sse_holdback_never_streams_a_stop_sequence():
    from edgekit.schemas.result import Confidence, Result, Sample, Timings
    from edgekit.serve.responses import Chunker

    ch = Chunker(chat=True, model="m", rid="r", stop=["END"])
    out = [ch.token(0, p) for p in ["Hel", "lo E", "N", "D"]]
    res = Result(
        model="m",
        answer=None,
        aggregate="none",
        confidence=Confidence(n=1),
        timings=Timings(),
        n=1,
        max_tokens=8,
        temperature=0.0,
        samples=[Sample(index=0, text="Hello ", tokens=4, finish_reason="stop")],
    )
    out += ch.finish(res, {"source": "local"}, None, False, False)
    deltas = [json.loads(x[6:])["choices"][0]["delta"]["content"] for x in out if x and x.startswith("data: {")]
    assert "".join(deltas) == "Hello " and out[-1] == "data: [DONE]\n\n"


def test_offload_source_threshold_and_buffered_stream():
    from fake_engine import FakeEngine
    from fastapi.testclient import TestClient

    from edgekit.runtime import Runtime
    from edgekit.serve.app import build_app
    from edgekit.serve.service import Service

    svc = Service(Runtime(FakeEngine(), cloud=FakeEngine("cloud-model"), offload="always"))
    c = TestClient(build_app(svc))  # no API key configured: open (loopback use)
    body = {"model": "fake-0", "messages": [{"role": "user", "content": "2+2"}], "n": 3}
    r = c.post("/v1/chat/completions", json=body)
    ek = r.json()["edgekit"]
    assert r.status_code == 200 and ek["source"] == "cloud" and ek["threshold"] is not None and ek["offload_reason"]
    s = c.post("/v1/chat/completions", json={**body, "stream": True})
    assert s.status_code == 200 and s.text.endswith("data: [DONE]\n\n") and '"source":"cloud"' in s.text
    doc = c.get("/healthz").json()
    assert doc["cloud"]["configured"] and doc["cloud"]["mode"] == "always"
    assert metric(svc.metrics.render().decode(), "edgekit_results_total", source="cloud") == 2
