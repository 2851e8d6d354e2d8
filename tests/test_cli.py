"""The CLI as a user meets it: real subprocesses, exit codes, one-line errors."""

import json
import os
import subprocess
import sys

import pytest

SMOL = "smollm2-135m-instruct"


def edgekit(*args, env=None, timeout=300):
    e = {**os.environ, **(env or {})}
    e.pop("EDGEKIT_DEBUG", None) if not (env and "EDGEKIT_DEBUG" in env) else None
    return subprocess.run(
        [sys.executable, "-m", "edgekit.cli.main", *args], capture_output=True, text=True, timeout=timeout, env=e
    )


@pytest.mark.parametrize(
    "args,needle",
    [
        (["run", "hi", "--n", "0"], "invalid n (--n): must be >= 1"),
        (["run", "hi", "--n", "1000"], "must be <= 64"),
        (["run", "hi", "--max-tokens", "0"], "invalid max_tokens (--max-tokens): must be >= 1"),
        (["run", "hi", "--temperature", "nan"], "must be a finite number"),
        (["run", "hi", "--temperature", "-1"], "temperature"),
        (["run", "hi", "--model", "nosuch-model"], "edgekit models list"),
        (["run", "hi", "--model", "/nonexistent/x.gguf"], "does not exist"),
        (["models", "pull", "qwen-7b"], "unknown model"),
        (["plan", "--profile", "nope.json", "--accuracy", "t.json", "--latency-target", "2s"], "nope.json"),
        (
            [
                "plan",
                "--profile",
                "profiles/jetson-agx-orin-64gb-published.json",
                "--accuracy",
                "t.json",
                "--latency-target",
                "soon",
            ],
            "2s",
        ),
        (["eval", "bigbench:no_such_task"], "task"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, needle):
    r = edgekit(*args)
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert needle in lines[0]
    assert "Traceback" not in r.stderr + r.stdout


def test_debug_shows_traceback():
    r = edgekit("run", "hi", "--n", "0", env={"EDGEKIT_DEBUG": "1"})
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_run_json_and_human():
    r = edgekit(
        "run",
        "What is 2 + 2? Answer with a number.",
        "--model",
        SMOL,
        "--n",
        "3",
        "--max-tokens",
        "16",
        "--seed",
        "1",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["n"] == 3 and len(res["samples"]) == 3
    assert res["timings"]["total_s"] > 0 and res["confidence"]["n"] == 3
    assert all(s["tokens"] <= 16 for s in res["samples"])
    h = edgekit("run", "Say hi.", "--model", SMOL, "--max-tokens", "8")
    assert h.returncode == 0 and "agreement" in h.stdout and "measured" in h.stdout


def test_models_list_json_and_path():
    r = edgekit("models", "list", "--json")
    ids = {m["id"] for m in json.loads(r.stdout)["models"]}
    assert "qwen2.5-coder-0.5b-instruct" in ids
    p = edgekit("models", "path", SMOL)
    assert p.returncode == 0 and p.stdout.strip().endswith(".gguf") and os.path.exists(p.stdout.strip())


def test_device_json():
    r = edgekit("device", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["cpu_cores_logical"] >= 1
    for s in d["power_sensors"]:
        assert s["available"] or s["why_unavailable"]
