"""`edgekit eval --backend openai` against a real OpenAI-compatible server on loopback
(llama-cpp-python's own server, serving SmolLM2)."""

import socket
import subprocess
import sys
import time

import httpx
import pytest

from edgekit.errors import FetchError
from edgekit.evaluate.api import evaluate
from edgekit.evaluate.table import load_table

pytest.importorskip("sse_starlette", reason="install the dev extra: pip install -e '.[dev]'")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(smol_path, tmp_path_factory):
    port = free_port()
    log = open(tmp_path_factory.mktemp("server") / "server.log", "w+")  # a pipe would fill and block the server
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(smol_path), "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", "2048", "--n_threads", "2", "--model_alias", "smol"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail("llama_cpp.server exited at start: " + log.read()[-600:])
        try:
            if httpx.get(url + "/models", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("llama_cpp.server did not come up in 90 s")
    yield url
    proc.terminate()
    log.close()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_eval_against_openai_server(server, tmp_path):
    out = tmp_path / "remote.json"
    t = evaluate("bigbench:object_counting", "smol", backend="openai", base_url=server, out_path=out, n_samples=2,
                 max_tokens=16, limit=2, template="terse", seed=3)
    again = load_table(out)
    assert again.backend.startswith("openai") and again.n_problems == 2 and again.n_samples == 2
    for p in again.problems:
        assert len(p.samples) == 2
        for s in p.samples:
            assert 0 <= s.tokens <= 16
    assert {r.aggregation for r in t.rows} >= {"majority"}


def test_unreachable_server_is_one_clear_error(tmp_path):
    with pytest.raises(FetchError) as ei:
        evaluate("bigbench:object_counting", "smol", backend="openai", base_url=f"http://127.0.0.1:{free_port()}/v1",
                 out_path=tmp_path / "x.json", n_samples=1, max_tokens=8, limit=1)
    assert "\n" not in ei.value.one_line()
