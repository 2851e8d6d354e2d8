import os
import socket
import subprocess
import sys
import tempfile
import time

import httpx
import pytest

# The kernel probe's verdicts: one folder for the whole session (and the CLI processes it starts), so tests
# that move EDGEKIT_HOME to a temporary folder do not probe every model again. tests/test_cpu_probe.py uses
# its own folders.
os.environ.setdefault("EDGEKIT_PROBE_DIR", tempfile.mkdtemp(prefix="edgekit-probe-"))
# This process holds models while it runs CLI processes: it is not "another edgekit process" to them
# (tests/test_cpu_share.py turns the registry back on where it tests it).
os.environ.setdefault("EDGEKIT_PEER_REGISTRY", "off")

SMOL = "smollm2-135m-instruct"
GEMMA = "gemma-3-270m"
QWEN = "qwen2.5-coder-0.5b-instruct"


@pytest.fixture(scope="session")
def smol_path():
    from edgekit.models import resolve

    return resolve(SMOL).path


@pytest.fixture(scope="session")
def smol_rt():
    from edgekit.runtime import Runtime

    rt = Runtime(SMOL, n_ctx=2048, max_n=8, threads=2)
    yield rt
    rt.close()


@pytest.fixture
def edgekit_home(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(smol_path, tmp_path_factory):
    """A real OpenAI-compatible server on loopback: llama-cpp-python's own, serving SmolLM2 as "smol"."""
    pytest.importorskip("sse_starlette", reason="install the dev extra: pip install -e '.[dev]'")
    port = free_port()
    log = open(tmp_path_factory.mktemp("server") / "server.log", "w+")  # a pipe would fill and block the server
    # llama_cpp.server with the kernel configuration edgekit's probe found safe on this CPU (AMX hosts)
    proc = subprocess.Popen(
        [
            sys.executable,
            os.path.join(os.path.dirname(__file__), "safe_llama.py"),
            "--model",
            str(smol_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "2048",
            "--n_threads",
            "2",
            "--model_alias",
            "smol",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
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
