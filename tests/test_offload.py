"""Offload to a real OpenAI-compatible server on loopback (llama_cpp.server serving SmolLM2), through a
fault-injecting HTTP proxy on 127.0.0.1: endpoint down, too slow for the deadline, 500s, 429 with
Retry-After, malformed JSON, a half-closed connection. Each returns the local answer, flagged,
within deadline + 10 %. The circuit breaker opens and closes; the API key never leaks."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from conftest import free_port

from edgekit.engines.llamacpp import LlamaCppEngine
from edgekit.engines.openai import OpenAIEngine
from edgekit.runtime import Runtime
from edgekit.runtime.routing import Offload

KEY = "sk-edgekit-test-secret-7731"
Q = "What is 2 + 3? Answer with a number."


class FaultProxy:
    """Modes by path prefix: /ok, /slow, /500, /429once, /429, /bad, /half; or /switch (self.mode)."""

    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.hits: dict[str, int] = {}
        self.mode = "500"
        self.auth: list[str] = []
        proxy = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                proxy.auth.append(self.headers.get("authorization", ""))
                mode = self.path.split("/")[1]
                if mode == "switch":
                    mode = proxy.mode
                proxy.hits[mode] = proxy.hits.get(mode, 0) + 1
                if mode == "slow":
                    time.sleep(8)
                    mode = "ok"
                if mode == "429once" and proxy.hits[mode] == 1:
                    return self._send(429, b'{"error": "slow down"}', {"Retry-After": "1"})
                if mode in ("ok", "429once"):
                    r = httpx.post(
                        proxy.upstream + "/chat/completions",
                        content=body,
                        headers={"content-type": "application/json"},
                        timeout=60,
                    )
                    return self._send(r.status_code, r.content)
                if mode == "500":
                    return self._send(500, b'{"error": "internal"}')
                if mode == "429":
                    return self._send(429, b'{"error": "rate limited"}', {"Retry-After": "0.2"})
                if mode == "bad":
                    return self._send(200, b'{"choices": [{"message": ')
                if mode == "half":  # promise 1000 bytes, send 10, close
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", "1000")
                    self.end_headers()
                    self.wfile.write(b'{"choices"')
                    self.wfile.flush()
                    self.connection.shutdown(1)
                    self.close_connection = True
                    return None
                return self._send(404, b"{}")

            def _send(self, code, data, headers=None):
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.port = free_port()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), H)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.port}/{mode}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def proxy(server):
    p = FaultProxy(server)
    yield p
    p.close()


@pytest.fixture(scope="module")
def local_engine(smol_path):
    e = LlamaCppEngine(str(smol_path), n_ctx=2048, max_n=4, threads=1)  # 1 thread: robust on a busy 2-core box
    yield e
    e.close()


def hybrid(local_engine, url, monkeypatch=None, **kw):
    if monkeypatch is not None:
        monkeypatch.setenv("EDGEKIT_CLOUD_API_KEY", KEY)
    cloud = OpenAIEngine(
        "smol",
        base_url=url,
        max_retries=kw.pop("max_retries", 2),
        failures_to_open=kw.pop("failures_to_open", 3),
        cooldown_s=kw.pop("cooldown_s", 30.0),
        latency_prior_s=kw.pop("latency_prior_s", None),
    )
    return Runtime(
        local_engine,
        offload=Offload(
            cloud=cloud, mode=kw.pop("mode", "auto"), score="vote_share", threshold=kw.pop("threshold", 1.01), **kw
        ),
    )


def test_low_confidence_goes_to_the_cloud(local_engine, proxy, monkeypatch):
    rt = hybrid(local_engine, proxy.url("ok"), monkeypatch)
    r = rt.generate(Q, n=2, max_tokens=16, seed=0, deadline_s=30)
    assert r.source == "cloud" and r.offload.reason.startswith("offloaded")
    assert r.offload.score == "vote_share" and r.offload.threshold == 1.01 and not r.offload.calibrated
    assert r.offload.local_s > 0 and r.offload.cloud_s > 0 and r.engine == "openai"
    assert proxy.auth[-1] == f"Bearer {KEY}"
    confident = hybrid(local_engine, proxy.url("ok"), threshold=0.0).generate(Q, n=2, max_tokens=16, seed=0)
    assert confident.source == "local" and confident.offload.reason.startswith("confident")
    assert any("no guarantee" in f for f in r.flags + confident.flags)


@pytest.mark.parametrize("mode", ["down", "slow", "500", "429", "bad", "half"])
def test_cloud_faults_return_the_local_answer_within_the_deadline(mode, local_engine, proxy, monkeypatch, caplog):
    url = f"http://127.0.0.1:{free_port()}/v1" if mode == "down" else proxy.url(mode)
    rt = hybrid(local_engine, url, monkeypatch)
    t0 = time.perf_counter()
    Runtime(local_engine).generate(Q, n=2, max_tokens=16, seed=0)
    deadline = 3 * (time.perf_counter() - t0) + 3.0  # room for the local batch; the slow server sleeps 8 s
    caplog.set_level(logging.DEBUG)
    t0 = time.perf_counter()
    r = rt.generate(Q, n=2, max_tokens=16, seed=0, deadline_s=deadline)
    wall = time.perf_counter() - t0
    assert r.source == "local-fallback", (r.source, r.offload)
    assert r.offload.local_answer == r.answer and r.offload.cloud_error
    assert any(f.startswith("local-fallback") for f in r.flags)
    assert wall <= deadline * 1.1, (wall, r.offload)
    assert KEY not in r.model_dump_json() and KEY not in caplog.text and KEY not in r.offload.cloud_error


def test_retry_after_is_honoured_then_succeeds(local_engine, proxy, monkeypatch):
    rt = hybrid(local_engine, proxy.url("429once"), monkeypatch)
    r = rt.generate(Q, n=2, max_tokens=16, seed=0, deadline_s=30)
    assert r.source == "cloud" and r.offload.cloud_s >= 1.0  # waited the server's Retry-After: 1
    assert proxy.hits["429once"] == 2


def test_no_call_when_the_cloud_cannot_make_the_deadline(local_engine, proxy):
    rt = hybrid(local_engine, proxy.url("ok"), latency_prior_s=300.0)
    before = proxy.hits.get("ok", 0)
    r = rt.generate(Q, n=2, max_tokens=16, seed=0, deadline_s=120.0)
    assert r.source == "local" and "kept local" in r.offload.reason and "offload skipped: deadline" in r.flags
    assert proxy.hits.get("ok", 0) == before


def test_pre_routing_when_local_cannot_meet_the_deadline(local_engine, proxy):
    rt = hybrid(local_engine, proxy.url("ok"), local_predicted_s=90.0)
    r = rt.generate(Q, n=2, max_tokens=16, seed=0, deadline_s=60.0)
    assert r.source == "cloud" and r.offload.reason.startswith("pre-routed") and r.offload.local_s is None


def test_circuit_breaker_opens_and_closes(local_engine, proxy):
    proxy.mode = "500"
    rt = hybrid(local_engine, proxy.url("switch"), max_retries=0, failures_to_open=2, cooldown_s=1.0)
    br = rt.offload.cloud.breaker
    for _ in range(2):
        r = rt.generate(Q, max_tokens=8)
        assert r.source == "local-fallback", r.offload
    assert br.state == "open"
    hits = proxy.hits["500"]
    r = rt.generate(Q, max_tokens=8)
    assert r.source == "local-fallback" and "circuit open" in r.offload.cloud_error
    assert proxy.hits["500"] == hits  # failed fast: no request went out
    time.sleep(1.1)
    assert br.state == "half-open"
    proxy.mode = "ok"
    assert rt.generate(Q, max_tokens=8).source == "cloud"
    assert br.state == "closed"


def test_never_and_always(local_engine, proxy):
    assert hybrid(local_engine, proxy.url("ok"), mode="never").generate(Q, max_tokens=8).source == "local"
    r = hybrid(local_engine, proxy.url("ok"), mode="always").generate(Q, max_tokens=8)
    assert r.source == "cloud" and r.offload.reason == "mode always"
    r = hybrid(local_engine, proxy.url("500"), mode="always", max_retries=0).generate(Q, max_tokens=8)
    assert r.source == "local-fallback" and r.answer is not None


def test_cloud_latency_is_tracked(local_engine, proxy):
    rt = hybrid(local_engine, proxy.url("ok"))
    for _ in range(3):
        rt.generate(Q, max_tokens=8)
    lat = rt.offload.cloud.latency
    assert lat.count >= 3 and 0 < lat.p50() <= lat.p95()
    assert "measured" in lat.describe()


def test_cli_offload_json_hides_the_key(proxy, smol_path, tmp_path):
    from test_engines import cli

    r = cli(
        "run",
        Q,
        "-m",
        str(smol_path),
        "--n",
        "2",
        "--max-tokens",
        "16",
        "--cloud-url",
        proxy.url("ok"),
        "--cloud-model",
        "smol",
        "--offload",
        "auto",
        "--threshold",
        "1.01",
        "--json",
        env={"EDGEKIT_CLOUD_API_KEY": KEY},
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["source"] == "cloud" and res["offload"]["mode"] == "auto"
    assert KEY not in r.stdout + r.stderr
    r = cli("run", Q, "-m", str(smol_path), "--max-tokens", "8", "--offload", "auto")
    assert r.returncode == 2 and "needs a cloud" in r.stderr
