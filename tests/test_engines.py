"""The engine contract: registry and plugins, the OpenAI engine against a real server, lifetime
and concurrency of a Runtime, Ctrl-C, one source of defaults, structured output, the layers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import jsonschema
import pytest
from conftest import SMOL
from fake_engine import FakeEngine

from edgekit import engines
from edgekit.errors import EdgekitError, UsageError
from edgekit.runtime import Runtime
from edgekit.schemas.options import SamplingOptions

TESTS = Path(__file__).parent
ROOT = TESTS.parent


def cli(*args, env=None, timeout=300, cwd=None):
    e = {**os.environ, **(env or {})}
    e.pop("EDGEKIT_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "edgekit.cli.main", *args],
        capture_output=True,
        text=True,
        env=e,
        timeout=timeout,
        cwd=cwd,
    )


@pytest.fixture
def plugin_path(tmp_path):
    """A fake engine installed as a plugin through the entry-point group, next to a broken one."""
    site = tmp_path / "site"
    dist = site / "edgekit_fake_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    shutil.copy(TESTS / "fake_engine.py", site / "fake_engine.py")
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: edgekit-fake-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[edgekit.engines]\nfake = fake_engine:FakeEngine\nbroken = no_such_module_xyz:Engine\n"
    )
    return {"PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}


# ----------------------------------------------------------------------------- registry
def test_fake_engine_through_the_registry_and_runtime():
    engines.register("fake-inproc", FakeEngine)
    try:
        assert "fake-inproc" in engines.names() and "llama.cpp" in engines.names() and "openai" in engines.names()
        with Runtime("fake-1", engine="fake-inproc") as rt:
            r = rt.generate("What is 2 + 2?", n=4, seed=3)
            assert rt.engine.calls == 1 and r.engine == "fake" and r.confidence.n == 4
            assert r.answer in {"4", "5", "6"} and r.confidence.votes == sum(s.answer == r.answer for s in r.samples)
    finally:
        engines.unregister("fake-inproc")
    with pytest.raises(UsageError, match="unknown engine 'fake-inproc'") as e:
        Runtime("x", engine="fake-inproc")
    assert "llama.cpp" in e.value.fix and "openai" in e.value.fix


def test_plugin_engine_runs_through_edgekit_run_and_eval(plugin_path, tmp_path):
    r = cli("run", "What is 2 + 2?", "--engine", "fake", "-m", "fake-0", "--json", env=plugin_path)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["engine"] == "fake" and res["answer"] == "4" and res["n"] == 1 and res["temperature"] == 0.0
    task = tmp_path / "t.jsonl"
    task.write_text("".join(json.dumps({"prompt": f"{i} + {4 - i}?", "answer": "4"}) + "\n" for i in range(3)))
    out = tmp_path / "table.json"
    r = cli(
        "eval",
        f"jsonl:{task}",
        "--engine",
        "fake",
        "-m",
        "fake-0",
        "--n",
        "4",
        "--max-tokens",
        "32",
        "-o",
        str(out),
        "--json",
        env=plugin_path,
    )
    assert r.returncode == 0, r.stderr
    table = json.loads(out.read_text())
    assert table["backend"] == "fake" and table["n_problems"] == 3 and table["model_id"] == "fake-0"
    printed = json.loads(r.stdout)  # eval --json: the table without its raw sample pool
    assert (
        "problems" not in printed
        and printed["rows"] == table["rows"]
        and printed["task_sha256"] == table["task_sha256"]
    )


def test_unknown_and_broken_engines_are_one_line_errors(plugin_path):
    r = cli("run", "hi", "--engine", "nosuch", env=plugin_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "unknown engine 'nosuch'" in r.stderr and "fake" in r.stderr and "llama.cpp" in r.stderr
    assert "broken" in r.stderr  # the plugin that failed to import is named, the others still listed
    r = cli("run", "hi", "--engine", "broken", env=plugin_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "engine plugin 'broken' failed to import" in r.stderr and "no_such_module_xyz" in r.stderr


# ----------------------------------------------------------------------------- OpenAI engine, real server
def test_openai_engine_against_a_real_server(server, monkeypatch):
    monkeypatch.setenv("EDGEKIT_CLOUD_API_KEY", "sk-never-shown-42")
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
    with Runtime("smol", engine="openai", base_url=server) as rt:
        r = rt.generate("What is 3 + 4? Reply in JSON.", n=2, max_tokens=24, seed=1, json_schema=schema)
        assert r.engine == "openai" and len(r.samples) == 2 and r.timings.prompt_tokens > 0
        for s in r.samples:  # the server enforced the schema (json_object + schema fallback)
            jsonschema.validate(json.loads(s.text), schema)
            assert s.answer == json.dumps(json.loads(s.text), sort_keys=True, separators=(",", ":"))
        if r.answer is not None:  # the cloud's winner parsed as well
            assert r.value == json.loads(r.answer) and isinstance(r.value["answer"], int)
        free = rt.generate("Say hello.", max_tokens=8)
        assert free.samples[0].tokens >= 1 and free.temperature == 0.0 and free.value is None  # no schema: no value
        assert "sk-never-shown-42" not in repr(rt.engine) and "sk-never-shown-42" not in r.model_dump_json()
    out = cli(
        "run",
        "Say hi.",
        "--engine",
        "openai",
        "--base-url",
        server,
        "-m",
        "smol",
        "--max-tokens",
        "4",
        "--json",
        env={"EDGEKIT_CLOUD_API_KEY": "sk-never-shown-42"},
    )
    assert out.returncode == 0, out.stderr
    assert "sk-never-shown-42" not in out.stdout + out.stderr


# ----------------------------------------------------------------------------- lifetime
LIFETIME = {
    "generate_after_close": """
        rt = Runtime(PATH, n_ctx=512, max_n=2, threads=2)
        rt.close()
        rt.generate("hi", max_tokens=2)
    """,
    "after_with_block": """
        with Runtime(PATH, n_ctx=512, max_n=2, threads=2) as rt:
            rt.generate("hi", max_tokens=2)
        rt.count_tokens("hi")
    """,
    "close_during_generate": """
        import threading, time
        rt = Runtime(PATH, n_ctx=2048, max_n=4, threads=2)
        out = {}
        def work():
            out["r"] = rt.generate("Count from 1 to 500.", n=4, max_tokens=400, temperature=0.8, seed=0)
        t = threading.Thread(target=work); t.start()
        time.sleep(0.8)
        rt.close()  # cancels the batch at its next step, waits, frees
        t.join()
        r = out["r"]
        assert any(s.finish_reason == "cancelled" for s in r.samples), r.samples
        assert any(f.startswith("closed") for f in r.flags), r.flags
        rt.generate("hi", max_tokens=2)
    """,
}


@pytest.mark.parametrize("case", sorted(LIFETIME))
def test_use_after_close_is_an_exception_never_a_crash(case, smol_path, tmp_path):
    script = tmp_path / "s.py"
    script.write_text(
        "from edgekit.runtime import Runtime\nfrom edgekit.errors import EdgekitError\n"
        f"PATH = {str(smol_path)!r}\ntry:\n"
        + textwrap.indent(textwrap.dedent(LIFETIME[case]), "    ")
        + "\nexcept EdgekitError as e:\n    print('EDGEKIT', e.one_line())\n    raise SystemExit(3)\n"
    )
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 3, (r.returncode, r.stdout, r.stderr[-2000:])  # -11 would be SIGSEGV
    assert "runtime is closed" in r.stdout


def test_concurrent_calls_queue_and_report_the_wait(smol_rt):
    prompt = "Name three colours."
    smol_rt.generate(prompt, max_tokens=8)  # warm
    alone = sorted(smol_rt.generate(prompt, max_tokens=8).timings.prefill_s for _ in range(3))[1]
    results, lock = [], threading.Lock()

    def client():
        for _ in range(3):
            t0 = time.perf_counter()
            r = smol_rt.generate(prompt, max_tokens=8)
            with lock:
                results.append((r, time.perf_counter() - t0))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 12
    pre = sorted(r.timings.prefill_s for r, _ in results)
    assert pre[len(pre) // 2] < 2 * alone + 0.05, (alone, pre)  # the wait is not counted as prefill
    assert max(r.timings.queue_s for r, _ in results) > alone  # some calls did wait
    for r, wall in results:  # queue + total accounts for the caller's wall time
        assert r.timings.queue_s + r.timings.total_s == pytest.approx(wall, abs=0.05)


def test_cancel_token_preempts_a_running_query(smol_rt):
    from edgekit import CancelToken

    tok = CancelToken()
    threading.Timer(0.3, tok.cancel, kwargs={"reason": "preempted by action server"}).start()
    # ignore_eos: no sample may end by itself before the cancel (a short answer would make this pass vacuously)
    r = smol_rt.generate(
        "Count from 1 to 500.", n=2, max_tokens=400, temperature=0.7, seed=0, cancel=tok, ignore_eos=True
    )
    assert all(s.finish_reason == "cancelled" for s in r.samples) and "cancelled: preempted by action server" in r.flags
    assert r.timings.steps < 400


def test_sigint_during_load_exits_130(tmp_path):
    from edgekit.models import resolve

    path = str(resolve("qwen2.5-coder-0.5b-instruct").path)
    env = {**os.environ}
    env.pop("EDGEKIT_DEBUG", None)
    p = subprocess.Popen(
        [sys.executable, "-m", "edgekit.cli.main", "run", "Count to 1000.", "-m", path, "--max-tokens", "500"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.time() + 60
    while time.time() < deadline:  # wait until the model file is mapped: the load has begun
        try:
            if path in Path(f"/proc/{p.pid}/maps").read_text():
                break
        except OSError:
            pass
        time.sleep(0.01)
    time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, (p.returncode, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted"), err
    assert "Exception ignored" not in err and "Traceback" not in err


# ----------------------------------------------------------------------------- one source of defaults
@pytest.mark.parametrize(
    "given,expect",
    [
        ({}, {"n": 1, "max_tokens": 256, "temperature": 0.0, "top_p": 0.95, "aggregate": "majority"}),
        ({"n": 4}, {"n": 4, "max_tokens": 256, "temperature": 0.8, "top_p": 0.95, "aggregate": "majority"}),
        ({"n": 4, "temperature": 0.5}, {"n": 4, "temperature": 0.5}),
        ({"max_tokens": 32, "top_p": 0.9}, {"n": 1, "max_tokens": 32, "temperature": 0.0, "top_p": 0.9}),
    ],
)
def test_same_defaults_from_cli_library_and_plan(given, expect, plugin_path, tmp_path):
    # library
    eng = FakeEngine()
    Runtime(eng).generate("What is 1 + 3?", **given)
    lib = eng.options_seen[-1]
    # CLI (through the plugin registry)
    flags = [x for k, v in given.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    r = cli("run", "What is 1 + 3?", "--engine", "fake", "-m", "fake-0", "--json", *flags, env=plugin_path)
    assert r.returncode == 0, r.stderr
    from_cli = SamplingOptions.model_validate(json.loads(r.stdout)["options"])
    # plan file: the options a plan carries are validated by the same model
    plan_opts = SamplingOptions.model_validate(json.loads(SamplingOptions.build(**given).model_dump_json()))
    for o in (lib, from_cli, plan_opts):
        got = {k: (o.effective_temperature if k == "temperature" else getattr(o, k)) for k in expect}
        assert got == expect


@pytest.mark.parametrize(
    "bad,field",
    [
        ({"n": 0}, "n"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": float("inf")}, "top_p"),
        ({"seed": -1}, "seed"),
        ({"stop": [""]}, "stop"),
        ({"json_schema": {"type": "object"}, "grammar": 'root ::= "a"'}, "json_schema"),
        ({"grammar": "x ::= y"}, "grammar"),
        ({"nonsense": 1}, "nonsense"),
    ],
)
def test_bad_options_from_every_front_door(bad, field, tmp_path):
    with pytest.raises(UsageError) as e:  # library
        Runtime(FakeEngine()).generate("hi", **bad)
    assert field in e.value.one_line() and e.value.fix
    with pytest.raises(EdgekitError):  # a plan file carrying them
        from edgekit.schemas.plan import load_plan

        plan = json.loads((ROOT / "tests" / "fixtures" / "plan-v2.json").read_text())
        plan["chosen"]["options"].update(bad)
        p = tmp_path / "plan.json"
        p.write_text(json.dumps(plan))
        load_plan(p)


# ----------------------------------------------------------------------------- structured output
ACTION = {
    "type": "object",
    "properties": {"action": {"enum": ["pick", "place", "move"]}, "x": {"type": "integer"}, "y": {"type": "integer"}},
    "required": ["action", "x", "y"],
    "additionalProperties": False,
}
ROBOT = "A robot must pick up the red cup at position 3, 4. Reply with the action as JSON with fields action, x and y."


def test_constrained_samples_all_validate_and_unconstrained_do_not(smol_path):
    with Runtime(str(smol_path), n_ctx=4096, max_n=25, threads=2) as rt:
        samples = []
        for seed in (0, 1):
            r = rt.generate(ROBOT, n=25, max_tokens=48, temperature=0.9, seed=seed, json_schema=ACTION)
            samples += r.samples
            assert r.answer is not None and json.loads(r.answer)["action"] in ACTION["properties"]["action"]["enum"]
            # the Python API hands over the vote's winner parsed (#20): a dict, equal to the answer's JSON
            assert isinstance(r.value, dict) and r.value == json.loads(r.answer)
        assert len(samples) == 50
        for s in samples:
            assert s.finish_reason == "stop", s.text
            jsonschema.validate(json.loads(s.text), ACTION)
            assert s.answer is not None
        free = rt.generate(ROBOT, n=25, max_tokens=48, temperature=0.9, seed=0, extractor="json")
        valid = 0
        for s in free.samples:
            try:
                jsonschema.validate(json.loads(s.text), ACTION)
                valid += 1
            except (ValueError, jsonschema.ValidationError):
                pass
        assert valid < 25


def test_majority_compares_parsed_json_not_strings():
    from edgekit.runtime.aggregate import extract_json, majority_vote

    a, b, c = '{"x": 1, "y": 2}', '{ "y":2,"x":1 }', '```json\n{"y": 2, "x": 1}\n```'
    assert extract_json(a) == extract_json(b) == extract_json(c)
    assert majority_vote([extract_json(a), extract_json(b), extract_json('{"x": 2}')])[1] == 2


@pytest.mark.parametrize(
    "schema,needle",
    [
        ({"type": "object", "patternProperties": {"^a": {}}}, "'patternProperties'"),
        ({"type": "string", "not": {"const": "x"}}, "'not'"),
        ({"$ref": "http://example.com/s.json"}, "Unsupported ref"),
        ({"type": "wat"}, "cannot be turned into a grammar"),
    ],
)
def test_schema_that_cannot_be_a_grammar_is_refused(smol_rt, schema, needle):
    with pytest.raises(UsageError, match="refusing to generate unconstrained|cannot be enforced") as e:
        smol_rt.generate("hi", max_tokens=4, json_schema=schema)
    assert needle in e.value.one_line()


def test_keywords_outside_the_grammar_are_validated_after(smol_rt):
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1000}}, "required": ["n"]}
    r = smol_rt.generate(
        'Give a small number as JSON with field n, e.g. {"n": 3}.',
        n=4,
        max_tokens=16,
        temperature=0.0,
        json_schema=schema,
    )
    for s in r.samples:
        v = json.loads(s.text)["n"]
        assert (s.answer is not None) == (v >= 1000)
    if any(s.answer is None for s in r.samples):
        assert any(f.startswith("schema:") for f in r.flags)


def test_gbnf_grammar_constrains_every_sample(smol_rt):
    r = smol_rt.generate(
        "Is the sky blue?",
        n=4,
        max_tokens=8,
        temperature=1.0,
        seed=5,
        grammar='root ::= ("yes" | "no")',
        extractor="yesno",
    )
    assert all(s.text in ("yes", "no") for s in r.samples)


# ----------------------------------------------------------------------------- layers
def test_import_layers_hold():
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is missing: pip install -e '.[dev]' (import-linter)")
    r = subprocess.run([exe], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "0 broken" in r.stdout


def test_no_import_cycles_between_modules():
    import grimp

    # a type-only import (under TYPE_CHECKING) never runs, so it cannot make a cycle at import time
    g = grimp.build_graph("edgekit", exclude_type_checking_imports=True)
    mods = sorted(m for m in g.modules if m.startswith("edgekit."))
    cycles = []
    for m in mods:
        for other in g.find_modules_directly_imported_by(m):
            if (
                other != m
                and other.startswith("edgekit.")
                and g.chain_exists(importer=other, imported=m, as_packages=False)
            ):
                if not m.startswith(other + ".") and not other.startswith(m + "."):
                    cycles.append((m, other))
    assert not cycles, cycles[:10]


# ----------------------------------------------------------------------------- answer formats (eval --constrain)
def test_eval_constrain_gives_every_finished_sample_an_answer(smol_rt, tmp_path):
    from edgekit.evaluate.api import evaluate
    from edgekit.schemas.formats import answer_grammar

    t = evaluate(
        "bigbench:object_counting",
        SMOL,
        out_path=tmp_path / "c.json",
        n_samples=3,
        max_tokens=16,
        limit=3,
        template="terse",
        seed=1,
        runtime=smol_rt,
        answer_format="answer",
    )
    assert t.answer_format == "answer"
    samples = [s for p in t.problems for s in p.samples + [p.greedy]]
    assert all(s.answer is not None and s.answer.lstrip("-").isdigit() for s in samples if s.finished)
    assert sum(s.finished for s in samples) >= len(samples) // 2
    g = answer_grammar("number", "reason:200")
    assert g.startswith("root ::= reason") and "{0,200}" in g
    with pytest.raises(UsageError, match="unknown answer format"):
        answer_grammar("number", "essay")
    with pytest.raises(UsageError, match="number, choice and yes/no"):
        evaluate("humaneval", SMOL, runtime=smol_rt, answer_format="answer", limit=1, out_path=tmp_path / "x.json")


# ----------------------------------------------------------------------------- run --plan
def _smol_plan(tmp_path, **chosen):
    from edgekit.models.catalog import CATALOG

    d = json.loads((ROOT / "tests" / "fixtures" / "plan-v2.json").read_text())
    c = d["chosen"]
    c.update(
        {
            "model_id": SMOL,
            "model_sha256": CATALOG[SMOL].sha256,
            "prompt_template": "terse",
            "budget": 8,
            "n": 2,
            **chosen,
        }
    )
    c["options"].update(n=2, max_tokens=8, temperature=0.8, seed=1)
    c["prompt"] = "{question}\nAnswer with a single number."
    p = tmp_path / "plan.json"
    p.write_text(json.dumps(d))
    return p


def test_run_plan_applies_its_prompt_and_options(tmp_path):
    p = _smol_plan(tmp_path)
    r = cli("run", "How many legs do 2 cats have?", "--plan", str(p), "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["model"] == SMOL and res["n"] == 2 and res["max_tokens"] == 8 and res["options"]["seed"] == 1
    assert res["extra"]["predicted_latency_s"] > 0 and "plan_overrides" not in res["extra"]
    assert res["timings"]["prompt_tokens"] > 10  # the plan's template was applied around the question


def test_run_plan_with_explicit_flags_applies_them_and_says_so(tmp_path):
    p = _smol_plan(tmp_path)
    r = cli("run", "How many legs do 2 cats have?", "--plan", str(p), "--n", "3", "--max-tokens", "6", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["n"] == 3 and res["max_tokens"] == 6
    assert res["extra"]["plan_overrides"] == ["n=3 (plan: 2)", "max_tokens=6 (plan: 8)"]
    assert "predicted_latency_s" not in res["extra"]
    assert any("does not apply" in n for n in res["extra"]["notes"])
    human = cli("run", "How many legs do 2 cats have?", "--plan", str(p), "--n", "3")
    assert human.returncode == 0 and "note: the plan's latency prediction does not apply" in human.stderr


def test_run_plan_for_another_model_file_is_refused(tmp_path):
    p = _smol_plan(tmp_path, model_sha256="f" * 64)
    r = cli("run", "hi", "--plan", str(p))
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "plan was made for" in r.stderr and "edgekit models pull" in r.stderr


def test_llama_cpp_log_goes_to_the_edgekit_logger(smol_path, caplog):
    import logging

    from edgekit.engines.llamacpp import LlamaCppEngine

    caplog.set_level(logging.DEBUG, logger="edgekit.llama_cpp")
    with LlamaCppEngine(str(smol_path), n_ctx=256, max_n=1, threads=1):
        pass
    msgs = [r.getMessage() for r in caplog.records if r.name == "edgekit.llama_cpp"]
    assert any("llama" in m.lower() for m in msgs), msgs[:5]
    assert all(r.levelno == logging.DEBUG for r in caplog.records if r.name == "edgekit.llama_cpp")
