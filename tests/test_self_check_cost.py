"""The P(True) self-check's cost is measured at calibration and known to the runtime's latency prediction: a score
that reads P(True) makes every local answer pay one more prefill, so the plan's local prediction must include it
(a pre-route decision that ignored it would keep queries local that cannot meet their deadline)."""

from __future__ import annotations

import json

import pytest
from conftest import SMOL
from test_calibrate_cli import FIXTURE

from edgekit.figures import measured
from edgekit.models.catalog import CATALOG
from edgekit.plan.offload_threshold import CalibrationRun, calibrate
from edgekit.runtime.routing import Offload
from edgekit.schemas.offload import OffloadCalibration, reads_p_true
from edgekit.schemas.plan import load_plan


def _cal(score: str, features=None, check_s: float | None = 0.25) -> OffloadCalibration:
    return OffloadCalibration(
        method="ltt-binomial",
        score=score,
        threshold=0.5,
        guarantee="g",
        features=features,
        self_check_s=None if check_s is None else measured([check_s] * 3, "s", source="test"),
    )


@pytest.mark.parametrize(
    "score,features,reads",
    [
        ("p_true", None, True),
        ("combined", ["vote_share", "p_true"], True),
        ("combined", ["vote_share", "mean_logprob"], False),
        ("combined", None, False),
        ("vote_share", None, False),
    ],
)
def test_which_scores_read_p_true(score, features, reads):
    assert reads_p_true(score, features) is reads
    assert _cal(score, features).reads_p_true() is reads


def test_predicted_local_latency_adds_the_self_check_only_when_the_score_reads_it():
    off = Offload(cloud=None, calibration=_cal("p_true"), local_predicted_s=1.0)
    assert off.predicted_local_s("p_true") == pytest.approx(1.25)
    assert off.predicted_local_s("vote_share") == pytest.approx(1.0)  # a per-query score override: no self-check
    assert Offload(cloud=None, calibration=_cal("p_true", check_s=None), local_predicted_s=1.0).predicted_local_s(
        "p_true"
    ) == pytest.approx(1.0)
    assert Offload(cloud=None, calibration=_cal("p_true")).predicted_local_s("p_true") is None


def test_calibrating_a_p_true_score_measures_the_self_check_and_saves_it(tmp_path):
    d = json.loads(FIXTURE.read_text())
    c = d["chosen"]
    c.update(model_id=SMOL, model_sha256=CATALOG[SMOL].sha256, prompt_template="terse", budget=4, n=1)
    c["options"].update(n=1, max_tokens=4, temperature=0.0, grammar="root ::= [1-9]")  # always an answer
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(d))
    run = CalibrationRun(
        plan_path=str(plan), task="bigbench:object_counting", offload_budget=0.5, score="p_true", split="100:106"
    )
    run.threads = 2
    cal, path = calibrate(run)
    answered = [r for r in run.records if r["self_check_s"]]
    assert cal.score == "p_true" and answered
    assert cal.self_check_s is not None and cal.self_check_s.method == "measured"
    assert cal.self_check_s.reps == len(answered) and cal.self_check_s.value > 0
    assert load_plan(path).offload.self_check_s == cal.self_check_s
    from edgekit.cli.calibrate_cmd import self_check_line

    line = self_check_line(cal, load_plan(path))
    assert "reads P(True)" in line and f"{cal.self_check_s.value:.3f} s" in line and "measured, median of" in line
    # a score that does not read P(True) records no self-check cost
    run2 = CalibrationRun(
        plan_path=str(plan),
        task="bigbench:object_counting",
        offload_budget=0.5,
        score="answer_logprob",
        split="100:106",
        output=str(tmp_path / "p2.json"),
        threads=2,
    )
    assert calibrate(run2)[0].self_check_s is None
