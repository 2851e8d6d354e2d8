"""Bad input, as a user meets it: every case is a real `python -m edgekit.cli.main ...` subprocess
that must exit 2 with exactly one stderr line, ``error: <what> (fix: <how>)``, no traceback, and a
case-specific phrase. Ctrl-C cases must exit 130 with one line ``interrupted... (fix: ...)`` (the
project's convention for an interruption, shared with `edgekit profile`).

Nearly every case fails before a model loads (that is the point): they run with an empty
EDGEKIT_HOME, and with pip and the Hugging Face Hub offline, so a case that wrongly reached a
model download fails fast instead of fetching. Cases marked REAL use the real model cache (only
``--json-schema`` with an unenforceable keyword loads a model: smollm2, the smallest).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "ci-2core-amd-epyc.json"
T05 = ROOT / "tables" / "object_counting-qwen0.5b-cot.json"
TSMOL = ROOT / "tables" / "object_counting-smollm2-cot.json"
PLAN_V2 = ROOT / "tests" / "fixtures" / "plan-v2.json"
SMOL = "smollm2-135m-instruct"
QWEN = "qwen2.5-coder-0.5b-instruct"
OC = "bigbench:object_counting"


@dataclass
class Case:
    args: list  # str (placeholders {port}) or bytes (argv that is not UTF-8)
    needle: str  # a phrase the error line must contain
    real: bool = False  # use the real model cache (EDGEKIT_HOME unset)
    interrupt: bool = False  # SIGINT once the command's request reaches the hanging server: exit 130
    id: str = ""


def C(line, needle, **kw) -> Case:
    args = line.split() if isinstance(line, str) else list(line)
    return Case(
        args, needle, id=kw.pop("id", None) or " ".join(a if isinstance(a, str) else repr(a) for a in args)[:90], **kw
    )


def numeric(cmd: str, flag: str, bad: dict[str, str]) -> list[Case]:
    """Bad numbers for one numeric flag: value -> needle."""
    return [C(f"{cmd} {flag} {v}", needle) for v, needle in bad.items()]


INT_PARSE = "valid integer"
NUM_PARSE = "valid number"
RUN = "run hi"
EV = f"eval {OC}"
PLAN = "plan -p prof.json -a tab.json"

CASES: list[Case] = [
    C("profile -m garbage.json --ns 0", "--ns"),
    C("profile -m garbage.json -o adir", "directory"),
    C("calibrate --task bigbench:object_counting --plan plan-v2.json --offload-budget inf", "--offload-budget"),
    C("calibrate --task bigbench:object_counting --plan nosuch.json --alpha 0.1 --delta 0.1", "nosuch.json"),
    # ---------------------------------------------------------------- run: every numeric flag
    *numeric(RUN, "--n", {"0": "must be >= 1", "1000": "must be <= 64"}),
    *numeric(RUN, "--max-tokens", {"99999999999999999999": "must be <= 32768"}),
    *numeric(RUN, "--temperature", {"nan": "finite", "inf": "finite"}),
    *numeric(RUN, "--top-p", {"nan": "finite"}),
    *numeric(RUN, "--seed", {"-1": "must be >= 0"}),
    *numeric(RUN, "--deadline", {"0": "must be > 0", "abc": NUM_PARSE}),
    *numeric(RUN, "--threads", {"0": "1..512", "99999": "1..512"}),
    *numeric(RUN, "--ctx", {"99999999999999": "16..16777216"}),
    # ---------------------------------------------------------------- run: everything else
    C(["run", b"caf\xe9"], "not valid UTF-8", id="run non-UTF-8 prompt"),
    C(["run", "hi", "--system", b"\xff"], "--system is not valid UTF-8", id="run non-UTF-8 --system"),
    C(["run", " "], "empty prompt", id="run empty prompt"),
    C("run hi --model nosuch-model", "unknown model 'nosuch-model'"),
    C("run hi --model garbage.json", "not a GGUF model"),
    C("run hi --aggregate first_verified", "needs a verifier"),
    C(["run", "hi", "--stop", ""], "non-empty strings"),
    C("run hi --json-schema {bad", "--json-schema '{bad' is not valid JSON"),
    C(
        ["run", "hi", "--json-schema", '{"type": "object"}', "--grammar", "g.gbnf"],
        "pass --json-schema or --grammar, not both",
        id="run --json-schema with --grammar",
    ),
    C(
        ["run", "hi", "--json-schema", '{"type": "object"}', "--extractor", "number"],
        "does not apply with --json-schema",
        id="run --json-schema with --extractor number",
    ),
    C(
        [
            "run",
            "hi",
            "-m",
            SMOL,
            "--max-tokens",
            "4",
            "--json-schema",
            '{"type": "object", "patternProperties": {"^a": {"type": "string"}}}',
        ],
        "patternProperties",
        real=True,
        id="run --json-schema with patternProperties (loads smollm2)",
    ),
    C("run hi --engine nosuch", "unknown engine 'nosuch'"),
    C("run hi --engine openai --base-url http://[::1", "not a valid URL"),
    C("run hi --base-url http://127.0.0.1:9/v1", "--base-url applies to a server engine"),
    C(
        "run hi --engine openai -m served --base-url http://127.0.0.1:9/v1",
        "cannot connect",
        id="run unreachable --base-url",
    ),
    C("run hi --plan nosuch.json", "does not exist"),
    C("run hi --plan zero.json", "not valid JSON"),
    C("run hi --plan v99.json", "schema_version 99"),
    C("run hi --plan plan-badn.json", "chosen.options.n"),
    C("run hi --plan plan-badsha.json", "re-plan", real=True, id="run --plan whose model_sha256 does not match"),
    C(
        "run hi --engine openai -m served --base-url http://127.0.0.1:{port}/v1",
        "interrupted (Ctrl-C)",
        interrupt=True,
        id="run Ctrl-C while the server thinks",
    ),
    # ---------------------------------------------------------------- eval
    *numeric(EV, "--n", {"-1": "must be >= 1"}),
    *numeric(EV, "--max-tokens", {"0": "must be >= 1"}),
    *numeric(EV, "--temperature", {"inf": "finite"}),
    *numeric(EV, "--top-p", {"nan": "finite"}),
    *numeric(EV, "--seed", {"99999999999999999999999": "must be <="}),
    *numeric(EV, "--limit", {"0": "--limit must be >= 1"}),
    *numeric(EV, "--threads", {"-1": "1..512"}),
    C("eval nosuch", "unknown task 'nosuch'"),
    C("eval jsonl:adir", "is a directory"),
    C("eval jsonl:latin1.jsonl", "line 2 is not valid UTF-8"),
    C("eval jsonl:surrogate.jsonl", "lone surrogate"),
    C("eval jsonl:empty.jsonl", "has no problems"),
    C(f"eval --perplexity {SMOL} --text adir", "--text adir is a directory"),
    C(f"eval --perplexity {SMOL} --n-ctx 4", "--n-ctx must be an integer in 16..32768"),
    C(f"eval --perplexity {SMOL} --reference missing.npz", "reference file missing.npz does not exist"),
    C(f"eval --perplexity {SMOL} --text latin1.jsonl", "is not UTF-8"),
    C(f"{EV} --template nosuch", "unknown prompt template"),
    C(f"{EV} --split 9999:", "selects no problems"),
    C(f"{EV} --constrain nosuch", "unknown answer format"),
    C(f"{EV} --engine openai --base-url ftp://x", "not an http(s) URL"),
    C(f"{EV} --base-url http://127.0.0.1:9/v1", "--base-url applies to a server engine"),
    C(
        f"{EV} --limit 1 -o ev/unreach.json --engine openai -m served --base-url http://127.0.0.1:9/v1",
        "cannot connect",
        id="eval unreachable --base-url",
    ),
    C(f"{EV} -o adir", "--output adir is a directory"),
    C(f"{EV} -o /proc/edgekit/t.json", "cannot write in /proc"),
    C(
        "eval jsonl:ok.jsonl -o ev/int.json --engine openai -m served --base-url http://127.0.0.1:{port}/v1",
        "stopped before its first problem finished; nothing was saved",
        interrupt=True,
        id="eval Ctrl-C while the server thinks",
    ),
    # ---------------------------------------------------------------- plan
    *numeric(
        PLAN,
        "-t",
        {
            "-1s": "must be > 0",
            "nan": "not a finite duration",
            "inf": "not a finite duration",
            "abc": "cannot read duration",
        },
    ),
    *numeric(f"{PLAN} -t 2s", "--percentile", {"90": "50 or 95"}),
    *numeric(f"{PLAN} -t 2s", "--energy-cap", {"nan": "finite number > 0", "inf": "finite number > 0"}),
    *numeric(f"{PLAN} -t 2s", "--memory-cap", {"0": "finite number > 0"}),
    C("plan -p nosuch.json -a tab.json -t 2s", "profile file nosuch.json does not exist"),
    C("plan -p garbage.json -a tab.json -t 2s", "not valid JSON"),
    C("plan -p v99.json -a tab.json -t 2s", "schema_version 99"),
    C("plan -p prof.json -a nosuch.json -t 2s", "accuracy table file nosuch.json does not exist"),
    C("plan -p prof.json -a zero.json -t 2s", "not valid JSON"),
    C("plan -p prof.json -a v99.json -t 2s", "schema_version 99"),
    C("plan -p prof.json -a empty.json -t 2s", "malformed"),
    C("plan -p prof.json -a tab.json -t 2s stray", "unexpected argument 'stray'"),
    C("plan -p prof.json -t 2s", "missing option --accuracy"),
    C("plan -p prof.json -a tab.json -t 1ms", "raise the target"),
    C("plan -p prof.json -a tab.json -t 60s -o adir", "--output adir is a directory"),
    C("plan -p prof.json -a tab.json -t 60s -o ok-plan.json --plot adir", "--plot adir is a directory"),
    # ---------------------------------------------------------------- profile (flags checked by profile_cmd today)
    C("profile -m nosuch-model", "unknown model"),
    C("profile --ns abc", "comma-separated integers"),
    C("profile --append -o garbage.json", "not valid JSON"),
    C("profile --append -o v99.json", "schema_version 99"),
    # ---------------------------------------------------------------- models, device, top level
    C("models pull nosuch", "unknown model 'nosuch'"),
    C(f"models path {SMOL}", f"edgekit models pull {SMOL}", id="models path of an uncached id"),
    C("models verify garbage.json", "not a GGUF model"),
    C(f"models verify {SMOL} --record", "catalogue model"),
    C("models nosuch", "edgekit models --help"),
    C("device --json extra", "edgekit device --help"),
    C("nosuch", "No such command"),
]

# Cases other engineers' commands still get wrong (not strict: they pass once fixed):
# edgekit/cli/profile_cmd.py checks --ns/--reps/--cooldown/--threads/--ctx and -o DIR only after the
# model loads; edgekit/cli/calibrate_cmd.py prints a blank line above every error (rich's
# Progress.stop() on a bar that never started, as eval did).


def _files(d: Path) -> None:
    (d / "adir").mkdir()
    (d / "ev").mkdir()
    for name, text in {
        "empty.json": "{}",
        "zero.json": "",
        "garbage.json": "garbage{",
        "v99.json": '{"schema_version": 99}',
        "g.gbnf": 'root ::= "yes"\n',
        "empty.jsonl": "\n\n",
    }.items():
        (d / name).write_text(text)
    shutil.copy(PROFILE, d / "prof.json")
    shutil.copy(T05, d / "tab.json")
    shutil.copy(T05, d / "tab.json.bak")
    plan = json.loads(PLAN_V2.read_text())
    (d / "plan-v2.json").write_text(json.dumps(plan))
    bad = json.loads(PLAN_V2.read_text())
    bad["chosen"]["model_sha256"] = "0" * 64
    (d / "plan-badsha.json").write_text(json.dumps(bad))
    badn = json.loads(PLAN_V2.read_text())
    badn["chosen"]["options"]["n"] = 0
    (d / "plan-badn.json").write_text(json.dumps(badn))
    rows = {
        "ok.jsonl": ['{"prompt": "What is 2 + 2?", "answer": "4"}', '{"prompt": "What is 3 + 3?", "answer": "6"}'],
        "surrogate.jsonl": ['{"prompt": "caf\\udce9", "answer": "1"}'],
        "dup.jsonl": ['{"prompt": "a", "answer": "1", "id": "x"}', '{"prompt": "b", "answer": "2", "id": "x"}'],
        "badchoice.jsonl": ['{"prompt": "a", "answer": "Z", "choices": ["red", "blue"]}'],
        "nanswer.jsonl": ['{"prompt": "a", "answer": NaN}'],
        "extra.jsonl": ['{"prompt": "a", "answer": "1", "weight": 2}'],
    }
    for name, lines in rows.items():
        (d / name).write_text("\n".join(lines) + "\n")
    (d / "latin1.jsonl").write_bytes(b'{"prompt": "a", "answer": "1"}\n{"prompt": "caf\xe9", "answer": "1"}\n')


def _env(d: Path, real: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("EDGEKIT_DEBUG", "EDGEKIT_WHEELHOUSE")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(PIP_NO_INDEX="1", HF_HUB_OFFLINE="1", PYTHONIOENCODING="utf-8")  # a wrong turn to a download fails fast
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # compile edgekit once for ~100 processes, not once each
    env["PYTHONPYCACHEPREFIX"] = str(d.parent / "pycache")
    if not real:
        env["EDGEKIT_HOME"] = str(d / "home")
    return env


class HangingServer:
    """Accepts connections and never answers: a request is 'in flight' until the client gives up."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.conns.append(c)

    def count(self) -> int:
        with self.lock:
            return len(self.conns)

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


def run_case(case: Case, d: Path, server: HangingServer, interrupt_lock: threading.Lock):
    t0 = time.monotonic()
    try:
        return _run_case(case, d, server, interrupt_lock)
    finally:
        TIMES[case.id] = time.monotonic() - t0


TIMES: dict[str, float] = {}


def _run_case(case: Case, d: Path, server: HangingServer, interrupt_lock: threading.Lock):
    args = [a.replace("{port}", str(server.port)) if isinstance(a, str) else a for a in case.args]
    cmd = [sys.executable, "-m", "edgekit.cli.main", *args]
    env = _env(d, case.real)
    if not case.interrupt:
        r = subprocess.run(cmd, capture_output=True, cwd=d, env=env, timeout=240)
        return r.returncode, r.stdout.decode("utf-8", "replace"), r.stderr.decode("utf-8", "replace")
    with interrupt_lock:  # one at a time: "its request reached the server" is counted on one server
        before = server.count()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=d, env=env)
        deadline = time.monotonic() + 60
        while server.count() == before and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
        return p.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def _cached(model_id: str) -> bool:
    from edgekit.models.catalog import CATALOG
    from edgekit.models.store import is_cached

    return is_cached(CATALOG[model_id])


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    """Every case, run once, two at a time (at most one of them loads a model)."""
    d = tmp_path_factory.mktemp("bad-input")
    _files(d)
    server = HangingServer()
    lock = threading.Lock()
    real_ok = _cached(SMOL) and _cached(QWEN)
    todo = [c for c in CASES if real_ok or not c.real]
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip((c.id for c in todo), pool.map(lambda c: run_case(c, d, server, lock), todo)))
    server.close()
    if os.environ.get("EDGEKIT_TEST_TIMES"):
        print("\nslowest:", sorted(TIMES.items(), key=lambda kv: -kv[1])[:10])
    return {"dir": d, "results": results, "seconds": time.monotonic() - t0, "real_ok": real_ok}


def check_one_line(case: Case, rc: int, out: str, err: str) -> None:
    want, head = (130, "interrupted") if case.interrupt else (2, "error: ")  # Ctrl-C: the project's "interrupted" line
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == want, f"exit {rc} (want {want}); stderr: {err!r}"
    assert "Traceback" not in err + out, err
    assert len(lines) == 1, f"stderr has {len(lines)} non-empty lines: {err!r}"
    assert err.startswith(head) and lines[0].startswith(head), err
    assert "(fix: " in lines[0], lines[0]
    assert case.needle in lines[0], f"{case.needle!r} not in {lines[0]!r}"


def test_the_table_is_large_and_covers_every_command():
    assert len(CASES) >= 60
    cmds = {str(c.args[0]) for c in CASES}
    assert {"run", "plan", "eval", "profile", "models", "device"} <= cmds
    assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(table_run, case):
    if case.real and not table_run["real_ok"]:
        pytest.skip("needs smollm2 and qwen2.5-coder-0.5b in the model cache")
    check_one_line(case, *table_run["results"][case.id])


def test_table_is_fast_and_leaves_no_debris(table_run):
    d = table_run["dir"]
    print(f"\n{len(table_run['results'])} bad-input subprocesses in {table_run['seconds']:.1f} s")
    debris = [
        p.relative_to(d)
        for p in d.rglob("*")
        if p.name.endswith((".tmp", ".partial.jsonl")) or p.name.startswith(".edgekit-write-test-")
    ]
    assert not debris, debris  # eval -o DIR and failed zero-work evals leave nothing behind
    assert not (d / "home" / "models").exists() or not any((d / "home" / "models").rglob("*.gguf"))


# ------------------------------------------------------------------------- defect-specific
def edgekit(d: Path, *args, real: bool = False, timeout: int = 120):
    return subprocess.run(
        [sys.executable, "-m", "edgekit.cli.main", *args],
        capture_output=True,
        text=True,
        cwd=d,
        env=_env(d, real),
        timeout=timeout,
    )


def test_plan_accuracy_takes_several_files_after_one_flag(tmp_path):
    shutil.copy(PROFILE, tmp_path / "p.json")
    shutil.copy(T05, tmp_path / "a.json")
    shutil.copy(TSMOL, tmp_path / "b.json")
    one = edgekit(tmp_path, "plan", "-p", "p.json", "-a", "a.json", "b.json", "-t", "30s", "-o", "one.json", "--json")
    two = edgekit(
        tmp_path, "plan", "-p", "p.json", "-a", "a.json", "-a", "b.json", "-t", "30s", "-o", "two.json", "--json"
    )
    late = edgekit(tmp_path, "plan", "-a", "a.json", "-t", "30s", "-p", "p.json", "-o", "late.json")
    assert one.returncode == 0 and two.returncode == 0 and late.returncode == 0, one.stderr + two.stderr + late.stderr
    a, b = json.loads(one.stdout), json.loads(two.stdout)
    assert a["tables"] == b["tables"] == ["a.json", "b.json"]
    drop = lambda p: {k: v for k, v in p.items() if k != "created"}
    assert drop(a) == drop(b)
    assert drop(json.loads((tmp_path / "one.json").read_text())) == drop(
        json.loads((tmp_path / "two.json").read_text())
    )
    assert (tmp_path / "late.json").exists()


def test_plan_refuses_non_finite_targets_and_caps_in_the_library():
    from edgekit.errors import UsageError
    from edgekit.plan.make import make_plan, parse_duration
    from edgekit.plan.planner import plan
    from edgekit.schemas.profile import load_profile
    from edgekit.schemas.table import load_table

    for text in ("inf", "nan", "-inf", "1e999", "0", "-2s", "0ms", "nanms"):
        with pytest.raises(UsageError) as e:
            parse_duration(text)
        assert e.value.fix
    assert parse_duration("500ms") == pytest.approx(0.5)
    prof, tab = load_profile(PROFILE), load_table(T05)
    for target in (float("inf"), float("nan")):
        with pytest.raises(UsageError, match="finite"):
            plan(prof, [tab], target)
        with pytest.raises(UsageError, match="finite"):
            make_plan(PROFILE, [T05], target)
    for cap in (float("inf"), float("nan"), 0.0):
        with pytest.raises(UsageError, match="finite"):
            plan(prof, [tab], 30.0, energy_cap_j=cap)
        with pytest.raises(UsageError, match="finite"):
            make_plan(PROFILE, [T05], 30.0, memory_cap_gb=cap)


def test_eval_output_directory_fails_before_any_work(tmp_path):
    """`eval -o DIR` used to run every problem, then fail writing, leaving .tmp and .partial files."""
    from fake_engine import FakeEngine

    from edgekit.errors import UsageError
    from edgekit.evaluate.api import evaluate
    from edgekit.runtime import Runtime

    (tmp_path / "out").mkdir()
    rt = Runtime(FakeEngine())
    with pytest.raises(UsageError, match="is a directory"):
        evaluate(OC, "fake-0", out_path=tmp_path / "out", limit=2, n_samples=2, max_tokens=16, runtime=rt)
    assert rt.engine.calls == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failed_zero_work_eval_does_not_block_the_next_run(tmp_path):
    """The first run cannot reach its server; the rerun with the fixed URL is not refused as 'other settings'."""
    (tmp_path / "t.jsonl").write_text('{"prompt": "What is 2 + 2?", "answer": "4"}\n')
    first = edgekit(
        tmp_path,
        "eval",
        "jsonl:t.jsonl",
        "-o",
        "t.json",
        "--engine",
        "openai",
        "-m",
        "m",
        "--base-url",
        "http://127.0.0.1:9/v1",
    )
    assert first.returncode == 2 and "cannot connect" in first.stderr
    assert not (tmp_path / "t.json.partial.jsonl").exists()
    # a partial with no finished problem (left by an older edgekit) under other settings does not block either
    (tmp_path / "t.json.partial.jsonl").write_text(
        json.dumps({"format": 1, "settings": {"backend": "other", "n_samples": 3}}) + "\n"
    )
    again = edgekit(
        tmp_path,
        "eval",
        "jsonl:t.jsonl",
        "-o",
        "t.json",
        "--engine",
        "openai",
        "-m",
        "m",
        "--base-url",
        "http://127.0.0.1:10/v1",
    )
    assert again.returncode == 2 and "cannot connect" in again.stderr and "settings" not in again.stderr, again.stderr
    assert not (tmp_path / "t.json.partial.jsonl").exists()


def test_eval_ctrl_c_after_a_problem_keeps_it_and_says_where(tmp_path):
    """A server answers the first problem (n=1 sample + the greedy one) and then hangs: Ctrl-C keeps
    the finished problem, says where, and the same command continues from it."""
    import http.server

    calls, hung = [], threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            calls.append(1)
            if len(calls) > 2 and not hung.is_set():
                hung.set()
                time.sleep(20)
                return
            body = json.dumps(
                {
                    "choices": [{"message": {"content": "Answer: 4"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 3},
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    (tmp_path / "t.jsonl").write_text('{"prompt": "2 + 2?", "answer": "4"}\n{"prompt": "1 + 3?", "answer": "4"}\n')
    args = [
        sys.executable,
        "-m",
        "edgekit.cli.main",
        "eval",
        "jsonl:t.jsonl",
        "--n",
        "1",
        "-o",
        "t.json",
        "--engine",
        "openai",
        "-m",
        "m",
        "--base-url",
        f"http://127.0.0.1:{srv.server_address[1]}/v1",
        "--json",
    ]
    try:
        p = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=_env(tmp_path, False)
        )
        assert hung.wait(60)
        time.sleep(0.2)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
        assert p.returncode == 130 and out == "", err
        (line,) = [ln for ln in err.splitlines() if ln.strip()]
        assert line.startswith("interrupted: eval of jsonl:t.jsonl stopped after 1 of 2 problems; they are kept in ")
        assert "t.json.partial.jsonl" in line and "--no-resume" in line
        assert len((tmp_path / "t.json.partial.jsonl").read_text().splitlines()) == 2  # header + the finished problem
        again = subprocess.run(
            args, capture_output=True, text=True, cwd=tmp_path, env=_env(tmp_path, False), timeout=120
        )
        assert again.returncode == 0, again.stderr
        assert len(calls) == 3 + 2  # only problem 2 ran again (its sample + greedy)
        assert json.loads(again.stdout)["n_problems"] == 2 and not (tmp_path / "t.json.partial.jsonl").exists()
    finally:
        srv.shutdown()


def test_run_warns_when_ctx_exceeds_the_trained_context(tmp_path):
    """Warned, not refused: the n samples share the context, so more than the trained length is often needed."""
    if not _cached(SMOL):
        pytest.skip("needs smollm2 in the model cache")
    r = edgekit(tmp_path, "run", "Say hi.", "-m", SMOL, "--ctx", "8704", "--max-tokens", "2", real=True, timeout=300)
    assert r.returncode == 0, r.stderr
    warn = [ln for ln in r.stderr.splitlines() if ln.startswith("warning: ")]
    assert len(warn) == 1 and "--ctx 8704" in warn[0] and "8192" in warn[0] and "(fix: " in warn[0], r.stderr


def test_error_line_always_has_a_fix():
    from edgekit.cli.main import _error_line
    from edgekit.errors import BackendError, UsageError

    assert _error_line(UsageError("bad", fix="do x"), ["eval"]) == "error: bad (fix: do x)"
    line = _error_line(BackendError("engine said\nno"), ["eval", "humaneval"])
    assert (
        line.startswith("error: engine said no (fix: see `edgekit") and "EDGEKIT_DEBUG=1" in line and "\n" not in line
    )


# Modules this branch owns: every EdgekitError raised there names its fix.
OWNED = [
    "edgekit/cli/main.py",
    "edgekit/cli/run_cmd.py",
    "edgekit/cli/eval_cmd.py",
    "edgekit/cli/plan_cmd.py",
    "edgekit/cli/models_cmd.py",
    "edgekit/evaluate/runner.py",
    "edgekit/evaluate/tasks.py",
    "edgekit/evaluate/api.py",
    "edgekit/plan/make.py",
    "edgekit/runtime/query.py",
    "edgekit/plan/planner.py",
    "edgekit/schemas/checks.py",
    "edgekit/schemas/options.py",
    "edgekit/schemas/formats.py",
]
ERRORS = {
    "EdgekitError",
    "UsageError",
    "ModelNotFound",
    "ChecksumMismatch",
    "GGUFError",
    "ContextOverflow",
    "FetchError",
    "SchemaError",
    "BackendError",
    "SensorError",
    "InfeasibleTarget",
}


@pytest.mark.parametrize("path", OWNED)
def test_every_raised_error_names_a_fix(path):
    src = (ROOT / path).read_text()
    missing = []
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            name = getattr(node.exc.func, "id", getattr(node.exc.func, "attr", None))
            if name in ERRORS and len(node.exc.args) < 2 and not any(k.arg == "fix" for k in node.exc.keywords):
                missing.append(f"{path}:{node.lineno}")
    assert not missing, missing
