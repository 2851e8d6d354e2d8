"""Real eval on a few problems -> real tiny profile -> plan -> run --plan (measured vs predicted)."""

import json
import os
import subprocess
import sys

import pytest

from edgekit.evaluate.api import evaluate
from edgekit.profile.sweep import SweepConfig, profile_model
from edgekit.schemas.table import load_table

SMOL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def table_path(tmp_path_factory, smol_rt):
    out = tmp_path_factory.mktemp("eval") / "oc.json"
    evaluate(
        "bigbench:object_counting",
        SMOL,
        out_path=out,
        n_samples=3,
        max_tokens=24,
        limit=3,
        template="terse",
        runtime=smol_rt,
    )
    return out


def test_real_eval_table(table_path):
    t = load_table(table_path)
    assert t.model_id == SMOL and t.n_problems == 3 and t.n_samples == 3 and t.model_sha256
    assert len(t.problems) == 3 and all(len(p.samples) == 3 for p in t.problems)
    for p in t.problems:
        for s in p.samples:
            assert 0 <= s.tokens <= 24
            assert s.finished == (s.tokens < 24 or s.finished)
    aggs = {r.aggregation for r in t.rows}
    assert {"majority", "greedy"} <= aggs
    for r in t.rows:
        assert 0 <= r.accuracy <= 1 and 0 <= r.expected_steps <= r.budget
    # k=1 majority == mean single-sample correctness at the full budget (estimator vs raw pool)
    full = max(r.budget for r in t.rows)
    m1 = next(r for r in t.rows if r.aggregation == "majority" and r.k == 1 and r.budget == full)
    raw = sum(s.correct and s.finished for p in t.problems for s in p.samples) / 9
    assert m1.accuracy == pytest.approx(raw)


def test_plan_then_run_plan(table_path, tmp_path):
    prof = tmp_path / "smol.json"
    cfg = SweepConfig(
        prompt_lengths=[16, 64, 128],
        contexts=[0, 128],
        ns=[1, 2, 3],
        decode_steps=6,
        reps=2,
        load_reps=1,
        idle_s=0.2,
        n_ctx=1024,
    )
    profile_model(SMOL, cfg, output=prof)
    plan_path = tmp_path / "plan.json"
    env = {k: v for k, v in os.environ.items() if k != "EDGEKIT_DEBUG"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgekit.cli.main",
            "plan",
            "--profile",
            str(prof),
            "--accuracy",
            str(table_path),
            "--latency-target",
            "30s",
            "--output",
            str(plan_path),
            "--plot",
            str(tmp_path / "p.png"),
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["chosen"]["model_id"] == SMOL and plan_path.exists()
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    # infeasible target: says so and names the fastest configuration
    r2 = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgekit.cli.main",
            "plan",
            "--profile",
            str(prof),
            "--accuracy",
            str(table_path),
            "--latency-target",
            "1ms",
            "--output",
            str(tmp_path / "x.json"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r2.returncode == 2 and "fastest" in r2.stderr
    r3 = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgekit.cli.main",
            "run",
            "How many legs do 2 cats have?",
            "--plan",
            str(plan_path),
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r3.returncode == 0, r3.stderr
    res = json.loads(r3.stdout)
    assert res["n"] == plan["chosen"]["n"] and res["max_tokens"] == plan["chosen"]["budget"]
    assert res["extra"]["predicted_latency_s"] == pytest.approx(plan["predicted"]["latency_s"]["value"])
    assert res["timings"]["total_s"] > 0
