"""`edgekit calibrate` end to end: a real local model (SmolLM2) on a labelled split, the cloud a real
loopback server; threshold, guarantee and curve saved into the plan; `run --plan` then routes by it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SMOL, free_port

from edgekit.errors import SchemaError, UsageError
from edgekit.models.catalog import CATALOG
from edgekit.plan.offload_threshold import CalibrationRun, calibrate
from edgekit.schemas.plan import load_plan

FIXTURE = Path(__file__).parent / "fixtures" / "plan-v2.json"


@pytest.fixture
def smol_plan(tmp_path):
    d = json.loads(FIXTURE.read_text())
    c = d["chosen"]
    c.update(model_id=SMOL, model_sha256=CATALOG[SMOL].sha256, prompt_template="terse", budget=16, n=3)
    c["options"].update(n=3, max_tokens=16, temperature=0.8)
    p = tmp_path / "plan.json"
    p.write_text(json.dumps(d))
    return p


def test_calibrate_saves_threshold_guarantee_and_curve(smol_plan, server, tmp_path):
    out = tmp_path / "calibrated.json"
    run = CalibrationRun(
        plan_path=str(smol_plan),
        task="bigbench:object_counting",
        alpha=0.45,
        delta=0.3,
        split="100:108",
        cloud_url=server,
        cloud_model="smol",
        output=str(out),
        threads=2,
    )
    cal, path = calibrate(run)
    assert path == out and len(run.records) == 8
    p = load_plan(out)
    assert p.offload == cal and p.offload.method == "ltt-binomial" and p.offload.n_calibration == 8
    assert p.offload.model_sha256 == CATALOG[SMOL].sha256 and p.cloud.base_url == server
    assert "with probability >= 0.7" in p.offload.guarantee and "at most 45%" in p.offload.guarantee
    # the chosen point is consistent with the records it was chosen on
    scores = [r[cal.score] for r in run.records]
    kept = [s is not None and s >= cal.threshold for s in scores]
    assert cal.offload_rate == pytest.approx(1 - sum(kept) / 8)
    assert cal.local_wrong_rate == pytest.approx(sum(k and not r["correct"] for k, r in zip(kept, run.records)) / 8)
    assert all("system_accuracy" in pt for pt in cal.curve)
    assert not Path(str(out) + ".calibration.partial.jsonl").exists()
    # run --plan uses the calibrated threshold (and says the guarantee)
    from test_engines import cli

    r = cli("run", "How many legs do 2 cats have?", "--plan", str(out), "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["offload"]["calibrated"] and res["offload"]["threshold"] == pytest.approx(cal.threshold)
    assert res["offload"]["guarantee"] == cal.guarantee and res["source"] in ("local", "cloud", "local-fallback")
    # overriding the calibrated configuration withdraws the guarantee (never a stale one shown as good)
    r = cli("run", "How many legs do 2 cats have?", "--plan", str(out), "--n", "2", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert not res["offload"]["calibrated"] and "no guarantee holds" in res["offload"]["guarantee"]
    assert "n=2 (plan: 3)" in res["offload"]["guarantee"]


@pytest.mark.parametrize(
    "kw,needle",
    [
        (dict(alpha=0.1, delta=0.05, split="0:10"), "need at least 29"),
        (dict(alpha=1.5, delta=0.1), "--alpha must be in (0, 1)"),
        (dict(alpha=0.1, delta=0.0), "--delta must be in (0, 1)"),
        (dict(alpha=0.1), "go together"),
        (dict(), "nothing to calibrate"),
        (dict(offload_budget=1.5), "--offload-budget must be in [0, 1]"),
    ],
)
def test_calibrate_refusals(smol_plan, kw, needle):
    with pytest.raises(UsageError) as e:
        calibrate(CalibrationRun(plan_path=str(smol_plan), task="bigbench:object_counting", **kw))
    assert needle in e.value.one_line() and e.value.fix


def test_unreachable_cloud_is_refused_before_any_work(smol_plan):
    with pytest.raises(UsageError, match="unreachable at calibration time"):
        calibrate(
            CalibrationRun(
                plan_path=str(smol_plan),
                task="bigbench:object_counting",
                offload_budget=0.2,
                split="0:10",
                cloud_url=f"http://127.0.0.1:{free_port()}/v1",
                cloud_model="x",
            )
        )


def test_plan_calibrated_for_another_model_is_refused(smol_plan, tmp_path):
    from edgekit.runtime.query import Query, run_query

    d = json.loads(smol_plan.read_text())
    d["offload"] = {
        "method": "ltt-binomial",
        "score": "vote_share",
        "threshold": 0.5,
        "n_calibration": 100,
        "guarantee": "g",
        "model_sha256": "0" * 64,
    }
    d["cloud"] = {"base_url": "http://127.0.0.1:9/v1", "model": "m"}
    p = tmp_path / "p.json"
    p.write_text(json.dumps(d))
    with pytest.raises(SchemaError, match="calibrated for another model"):
        run_query(Query(prompt="hi", plan=str(p)))


def test_auto_without_calibration_says_no_guarantee(smol_rt):
    from edgekit.engines.openai import OpenAIEngine
    from edgekit.runtime.routing import Offload

    off = Offload(cloud=OpenAIEngine("m", base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=0))
    sc, tau, calibrated, guarantee = off.rule(4)
    assert (
        (sc, tau, calibrated) == ("vote_share", 0.6, False) and "no guarantee" in guarantee and "default" in guarantee
    )
