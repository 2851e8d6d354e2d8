"""Behaviour unchanged: `edgekit plan --json`, `edgekit run --json`, the plan's terminal rendering and every
command's --help, against golden outputs recorded from the code before the house was restructured.

The comparison drops what is a measurement of time, a timestamp or host-specific (timings, `created`, the
kernel configuration), and keeps the structure and every decision (chosen configuration, frontier, competitors,
the answer, tokens, flags). Floats compare to a relative 1e-6 (logprobs to 1e-3).

`edgekit run` goldens hold one entry per CPU numerics (:func:`numerics`: the instruction sets llama.cpp's
kernels use, and the kernel configuration the run reports): the same greedy prompt gave "To add 3 and 4,"
on a Sapphire Rapids Xeon and "3 + 4 = 7" on an AVX2-only AMD EPYC, both correct for their kernels. Where
this machine's numerics are recorded the output must match exactly; elsewhere everything but the model's
output (options, prompt tokens, model, engine, the result's shape) is checked and the exact part skipped,
naming the numerics to record with ``--write``.

Regenerate (only when a change of behaviour is intended, and say so in the commit):
    PYTHONPATH=$PWD python tests/test_behaviour_golden.py --write
(plan, help and error goldens are rewritten; a run golden gains or replaces this machine's numerics entry.
The kernel probe picks `default` or `plain` by measured speed, so record both on a new CPU: run the command
once with EDGEKIT_EXTRA_BUFFERS=on and once with EDGEKIT_EXTRA_BUFFERS=off.)
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgekit.host.cpu import isa_flags

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "fixtures" / "golden"
SMOL = "smollm2-135m-instruct"

PLAN_SMOL = "tests/fixtures/golden/smol.plan.json"  # written by the plan case "smol" (the run case "plan" runs it)

QWEN_TABLES = ["tables/object_counting-qwen0.5b-terse.json", "tables/object_counting-qwen1.5b-terse.json"]
ALL_TABLES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tables").glob("*.json"))
CI = "profiles/ci-2core-amd-epyc.json"

PLAN_CASES: dict[str, list[str]] = {
    # README's plan section (the frontier and the paired competitors)
    "readme": ["-p", CI, "-a", *QWEN_TABLES, "-t", "2s"],
    # every shipped table, tight target at p95 under a memory cap, the most accurate
    "tight": [
        "-p",
        CI,
        "-a",
        *ALL_TABLES,
        "-t",
        "500ms",
        "--percentile",
        "95",
        "--memory-cap",
        "1",
        "--prefer",
        "most-accurate",
    ],  # fmt: skip
    # another device's profile, p95
    "h200": [
        "-p",
        "profiles/nvidia-h200.json",
        "-a",
        "tables/object_counting-smollm2-cot.json",
        "-t",
        "300ms",
        "--percentile",
        "95",
    ],  # fmt: skip
    # a plan that runs the small model greedily: its file is the run case "plan"'s plan
    "smol": ["-p", CI, "-a", "tables/object_counting-smollm2-cot.json", "-t", "5s"],
}
RUN_CASES: dict[str, list[str]] = {
    "greedy": ["What is 3 + 4?", "-m", SMOL, "-b", "8", "--seed", "0", "--temperature", "0", "--threads", "2"],
    "sampled": [
        "How many legs do 3 spiders have?",
        "-m",
        SMOL,
        "-n",
        "3",
        "-b",
        "6",
        "--seed",
        "0",
        "--temperature",
        "0.8",
        "--threads",
        "2",
    ],  # fmt: skip
    "plan": ["How many legs do 3 spiders have?", "--plan", PLAN_SMOL, "--threads", "2"],
    "plan-override": ["What is 2 + 2?", "--plan", PLAN_SMOL, "-b", "4", "--seed", "1", "--threads", "2"],
}

# refused: the one-line error, word for word
ERROR_CASES: dict[str, list[str]] = {
    "plan-no-crossmodel": ["plan", "-p", "profiles/jetson-agx-orin-64gb-published.json", "-a", *ALL_TABLES, "-t", "1s"],
    "plan-model-missing": ["plan", "-p", "profiles/nvidia-h200.json", "-a", *ALL_TABLES, "-t", "1s"],
    "plan-shared-cpu": ["plan", "-p", CI, "-a", *QWEN_TABLES, "-t", "3s", "--cores-available", "1"],
    "run-bad-plan": ["run", "hi", "--plan", "tables/object_counting-smollm2-cot.json"],
    "run-base-url": ["run", "hi", "--base-url", "http://127.0.0.1:9/v1"],
}

# keys that are a measurement of time, a timestamp or host-specific
DROP = {"created", "edgekit_version", "load_s", "queue_s", "prefill_s", "decode_s", "total_s", "prefill_tok_s",
        "decode_tok_s", "kernels"}  # fmt: skip
# sampled through the engine (log-probabilities and the confidence scores built on them): 1e-3
LOOSE = {"logprobs", "mean_logprob", "low_logprob", "scores", "answer_logprob", "answer_min_logprob", "group_conf",
         "tail_conf", "p_true"}  # fmt: skip


def env() -> dict[str, str]:
    e = {**os.environ, "COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"}
    for k in ("EDGEKIT_DEBUG", "FORCE_COLOR"):
        e.pop(k, None)
    return e


def edgekit(*args: str, timeout: float = 600, rc: int = 0) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [sys.executable, "-m", "edgekit.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(),
        cwd=ROOT,
    )
    assert r.returncode == rc, f"edgekit {' '.join(args)}: rc {r.returncode}\n{r.stderr[-3000:]}"
    return r


def plan_args(name: str, out: str) -> list[str]:
    return ["plan", *PLAN_CASES[name], "--variants", "none", "-o", out]


# lines that say how this machine differs from the profile's: true here, not part of the behaviour pinned
HOST_NOTES = ("warning: this profile was measured on another CPU", "warning: this profile's CPU had")


def normalize(x, key: str = ""):
    if isinstance(x, dict):
        return {k: normalize(v, k) for k, v in x.items() if k not in DROP}
    if isinstance(x, list):
        return [normalize(v, key) for v in x if not (isinstance(v, str) and v.startswith(HOST_NOTES))]
    return x


def same(a, b, path: str = "", loose: bool = False) -> list[str]:
    """Where a and b differ (paths), floats within tolerance."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}.{k}: only in {'golden' if k in a else 'now'}" for k in sorted(set(a) ^ set(b))]
        for k in a.keys() & b.keys():
            out += same(a[k], b[k], f"{path}.{k}", loose or k in LOOSE)
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} != {len(b)}"]
        return [d for i, (u, v) in enumerate(zip(a, b, strict=True)) for d in same(u, v, f"{path}[{i}]", loose)]
    if isinstance(a, float) and isinstance(b, float | int) and not isinstance(b, bool):
        ok = math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-3 if loose else 1e-9) or (math.isnan(a) and math.isnan(b))
        return [] if ok else [f"{path}: {a!r} != {b!r}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def text_lines(s: str) -> list[str]:
    return [line.rstrip() for line in s.strip().splitlines()]


# --help of every command, in one process (typer's runner), at a fixed width
HELP_SCRIPT = r"""
import json, sys
import typer
from typer.testing import CliRunner
from edgekit.cli import main as m
from edgekit.cli import models_cmd
m._register()
names = [c.name for c in m.app.registered_commands]
out = {"": None}
runner = CliRunner()
def helptext(args):
    r = runner.invoke(m.app, args, terminal_width=200, env={"COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"})
    return r.output
out[""] = helptext(["--help"])
for n in names:
    out[n] = helptext([n, "--help"])
out["models"] = helptext(["models", "--help"])
for c in models_cmd.app.registered_commands:
    out["models " + c.name] = helptext(["models", c.name, "--help"])
json.dump(out, sys.stdout)
"""


def help_texts() -> dict[str, str]:
    r = subprocess.run(
        [sys.executable, "-c", HELP_SCRIPT], capture_output=True, text=True, timeout=300, env=env(), cwd=ROOT
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return {k: "\n".join(text_lines(v)) for k, v in json.loads(r.stdout).items()}


def options_of(help_text: str) -> list[str]:
    return sorted(set(re.findall(r"(?<![\w-])--?[a-zA-Z][\w-]*", help_text)))


def golden(name: str):
    p = GOLDEN / name
    if not p.exists():
        pytest.skip(f"no golden {p.name}: run `python tests/test_behaviour_golden.py --write`")
    return json.loads(p.read_text()) if p.suffix == ".json" else p.read_text()


@pytest.mark.parametrize("name", sorted(PLAN_CASES))
def test_plan_json_unchanged(name, tmp_path):
    r = edgekit(*plan_args(name, str(tmp_path / "plan.json")), "--json")
    now = normalize(json.loads(r.stdout))
    diffs = same(golden(f"plan-{name}.json"), now)
    assert not diffs, "\n".join(diffs[:40])
    # the plan file is what --json printed
    assert not same(now, normalize(json.loads((tmp_path / "plan.json").read_text())))


def plan_text(out: Path) -> list[str]:
    r = edgekit(*plan_args("readme", str(out)))
    return text_lines(r.stdout.replace(str(out), "PLAN.json"))


def test_plan_terminal_output_unchanged(tmp_path):
    assert plan_text(tmp_path / "plan.json") == text_lines(golden("plan-readme.txt"))


def test_errors_unchanged():
    want = golden("errors.json")
    for name, args in ERROR_CASES.items():
        assert edgekit(*args, rc=2).stderr.strip() == want[name], name


# what the model produced (depends on the CPU's numerics); everything else in a run's JSON does not
MODEL_OUTPUT = {"samples", "answer", "value", "text", "confidence", "flags", "generated_tokens", "steps"}


def numerics(raw: dict) -> str:
    """The CPU numerics a run's tokens depend on: this machine's instruction sets and the kernel
    configuration the run reports (``timings.kernels``)."""
    flags = "+".join(sorted(k for k, v in isa_flags().items() if v)) or "unknown-isa"
    return f"{flags}; kernels={raw.get('timings', {}).get('kernels')}"


def skeleton(x, key: str = ""):
    """x with the model's output reduced to its shape (keys, list or value)."""
    if isinstance(x, dict):
        return {k: (shape(v) if k in MODEL_OUTPUT else skeleton(v, k)) for k, v in x.items()}
    if isinstance(x, list):
        return [skeleton(v, key) for v in x]
    return x


def shape(x):
    if isinstance(x, dict):
        return {k: shape(v) for k, v in x.items()}
    if isinstance(x, list):
        return "list" if not x or not isinstance(x[0], dict) else [shape(v) for v in x]
    return "value"


@pytest.mark.parametrize("name", sorted(RUN_CASES))
def test_run_json_unchanged(name):
    raw = json.loads(edgekit("run", *RUN_CASES[name], "--json").stdout)
    now, key = normalize(raw), numerics(raw)
    recorded = golden(f"run-{name}.json")["by_numerics"]
    if key in recorded:
        diffs = same(recorded[key], now)
        assert not diffs, "\n".join(diffs[:40])
        return
    for want in recorded.values():  # another CPU's numerics: all but the model's output must still match
        diffs = same(skeleton(want), skeleton(now))
        assert not diffs, "\n".join(diffs[:40])
    pytest.skip(
        f"exact tokens recorded for {sorted(recorded)}, not for this CPU ({key}); the rest matched: "
        "record it with `python tests/test_behaviour_golden.py --write`"
    )


def test_help_unchanged():
    want = golden("help.json")
    now = help_texts()
    assert sorted(now) == sorted(want), "commands differ"
    for cmd, text in want.items():
        assert options_of(now[cmd]) == options_of(text), f"`edgekit {cmd} --help`: options differ"
        assert now[cmd] == text, f"`edgekit {cmd} --help` differs"


def write() -> None:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for name in PLAN_CASES:
        out = ROOT / PLAN_SMOL if name == "smol" else GOLDEN / "plan-out.json"
        r = edgekit(*plan_args(name, str(out)), "--json")
        (GOLDEN / f"plan-{name}.json").write_text(json.dumps(normalize(json.loads(r.stdout)), indent=1) + "\n")
    (GOLDEN / "plan-out.json").unlink(missing_ok=True)
    (GOLDEN / "plan-readme.txt").write_text("\n".join(plan_text(GOLDEN / "plan-out.json")) + "\n")
    (GOLDEN / "plan-out.json").unlink(missing_ok=True)
    errors = {name: edgekit(*args, rc=2).stderr.strip() for name, args in ERROR_CASES.items()}
    (GOLDEN / "errors.json").write_text(json.dumps(errors, indent=1) + "\n")
    for name in RUN_CASES:
        raw = json.loads(edgekit("run", *RUN_CASES[name], "--json").stdout)
        p = GOLDEN / f"run-{name}.json"
        recorded = json.loads(p.read_text())["by_numerics"] if p.exists() else {}
        recorded[numerics(raw)] = normalize(raw)
        p.write_text(json.dumps({"by_numerics": dict(sorted(recorded.items()))}, indent=1) + "\n")
    (GOLDEN / "help.json").write_text(json.dumps(help_texts(), indent=1) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write()
    else:
        sys.exit(pytest.main([__file__, "-q"]))
