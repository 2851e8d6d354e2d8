"""`edgekit deploy`: splits, sizing, the held-out verdict, bad input, and one real deployment end to end
(SmolLM2 locally, llama-cpp-python's own server as the cloud)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SMOL

from edgekit.deployment.splits import MIN_TUNE, MIN_VERIFY, make_splits
from edgekit.deployment.verify import prediction_interval, summarize
from edgekit.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args, cwd=None, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "edgekit.cli.main", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


def _task_file(path: Path, n: int, start: int = 0) -> Path:
    """Object-counting problems as a user's labelled JSONL (question, answer, id)."""
    from edgekit.evaluate.tasks import load_task

    t = load_task("bigbench:object_counting", template="terse")
    with path.open("w") as f:
        for p in t.problems[start : start + n]:
            f.write(
                json.dumps({"id": "q" + p.id.split("/")[-1], "prompt": p.prompt.rsplit("\n", 1)[0], "answer": p.target})
                + "\n"
            )
    return path


# ---------------------------------------------------------------- splits


@pytest.mark.parametrize("n,need", [(40, None), (69, 29), (200, 29), (1000, 29), (78, 29), (61, 20)])
def test_splits_are_disjoint_cover_the_task_and_keep_their_minimums(n, need):
    s = make_splits(n, need)
    ranges = [(x.start, x.stop) for x in s.values()]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # contiguous, no overlap, no gap
    assert s["tune"].size >= MIN_TUNE and s["verify"].size >= MIN_VERIFY
    assert ("calibrate" in s) == (need is not None)
    if need:
        assert s["calibrate"].size >= need


def test_too_few_problems_says_how_many_are_needed():
    with pytest.raises(UsageError) as e:
        make_splits(60, 29)
    assert "60 labelled problems" in e.value.message and "at least 69" in e.value.message
    assert "calibrate 29" in e.value.message


# ---------------------------------------------------------------- the verdict


def _plan():
    from edgekit.plan.export import to_plan_file
    from edgekit.plan.make import make_plan

    res, _ = make_plan(
        ROOT / "profiles/ci-2core-amd-epyc.json",
        [ROOT / "tables/object_counting-qwen0.5b-terse.json", ROOT / "tables/object_counting-qwen1.5b-terse.json"],
        2.0,
    )
    return to_plan_file(res)


def _records(n_right: int, m: int, latency: float) -> list[dict]:
    return [{"id": f"p{i}", "correct": i < n_right, "latency_s": latency} for i in range(m)]


def test_a_measurement_inside_the_prediction_holds():
    pf = _plan()
    pr = pf.predicted
    m = 40
    right = round((pr.accuracy - (pr.accuracy_optimism or 0)) * m)
    v = summarize(_records(right, m, float(pr.latency_s.value)), pf, n_table=30)
    assert not v["acc_contradicted"] and not v["p50_contradicted"] and not v["p95_contradicted"]
    assert v["acc_pred_lo"] < v["acc"] < v["acc_pred_hi"]
    assert v["p50_ratio"] == pytest.approx(1.0)


def test_a_measurement_outside_the_prediction_is_flagged():
    from edgekit.deployment.pipeline import _flags
    from edgekit.deployment.report import DeployReport

    pf = _plan()
    slow = pf.predicted.latency_hi_s * 1.5
    v = summarize(_records(0, 40, slow), pf, n_table=30)  # nothing right, every query slow
    assert v["acc"] == 0 and v["acc_contradicted"] and v["p50_contradicted"] and v["p95_contradicted"]
    rep = DeployReport("t", "0" * 64, 2.0, 50, "d", ["m"], {}, verify=v)
    _flags(rep)
    assert any(f.startswith("accuracy: measured 0.0%") for f in rep.flags)
    assert any(f.startswith("latency: measured p50") for f in rep.flags)
    md = rep.to_markdown() if rep.plan else None
    assert md is None or "contradicted" in md


def test_verify_records_of_an_edited_task_file_are_not_reused(tmp_path):
    """Same file name, split, model and options, but one verify answer changed: the old records must not count."""
    from edgekit.deployment.verify import VerifyRun, _settings
    from edgekit.evaluate.tasks import load_task

    pf = _plan()
    f = _task_file(tmp_path / "t.jsonl", 45)
    v = VerifyRun(pf, f"jsonl:{f}", "25:45", 20, 60.0, tmp_path / "verify.jsonl")
    before = _settings(v, load_task(v.task, template=pf.chosen.prompt_template, split=v.split))
    lines = f.read_text().splitlines()
    d = json.loads(lines[30])
    d["answer"] = str(int(d["answer"]) + 1)
    lines[30] = json.dumps(d)
    f.write_text("\n".join(lines) + "\n")
    after = _settings(v, load_task(v.task, template=pf.chosen.prompt_template, split=v.split))
    assert before != after and before["problems_sha256"] != after["problems_sha256"]


def test_the_prediction_interval_widens_with_fewer_problems():
    lo1, hi1 = prediction_interval(0.5, 30, 20)
    lo2, hi2 = prediction_interval(0.5, 300, 200)
    assert hi1 - lo1 > hi2 - lo2 > 0
    assert prediction_interval(0.0, 30, 20)[1] > 0  # a 0 % table still leaves room for a lucky verify set


# ---------------------------------------------------------------- bad input: one line, exit 2


@pytest.mark.parametrize(
    "lines,expect",
    [
        ([{"id": 1, "prompt": "How many?"}], "needs a field 'answer'"),
        ([{"id": 1, "prompt": "a?", "answer": "1"}, {"id": 1, "prompt": "b?", "answer": "2"}], "duplicate id '1'"),
        ([{"id": i, "prompt": f"{i}+1?", "answer": str(i + 1)} for i in range(30)], "deploy needs at least 40"),
    ],
)
def test_bad_task_files_get_one_line(tmp_path, lines, expect):
    f = tmp_path / "t.jsonl"
    f.write_text("".join(json.dumps(d) + "\n" for d in lines))
    r = _cli("deploy", f"jsonl:{f}", "--target", "2s", "--models", SMOL, "-o", str(tmp_path / "d"), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert expect in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "d" / "plan.json").exists()


@pytest.mark.parametrize(
    "args,expect",
    [
        (["--time-budget", "ten"], "cannot read --time-budget"),
        (["--target", "0s"], "--target must be > 0"),
        (["--alpha", "0.1"], "--alpha and --delta go together"),
        (["--cloud-url", "http://127.0.0.1:9/v1"], "--cloud-url needs the cloud's model name"),
    ],
)
def test_bad_options_get_one_line(tmp_path, args, expect):
    f = _task_file(tmp_path / "t.jsonl", 45)
    base = ["deploy", f"jsonl:{f}", "--target", "2s", "--models", SMOL, "-o", str(tmp_path / "d")]
    r = _cli(*base, *args, cwd=tmp_path)
    assert r.returncode == 2 and expect in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def _tiny_profile_fn():
    from edgekit.profile.sweep import SweepConfig, profile_model

    cfg = SweepConfig(
        prompt_lengths=[32, 128], contexts=[0, 256], ns=[1, 2, 4], decode_steps=8, reps=2, load_reps=1, idle_s=0.2
    )
    return lambda spec, output, existing: profile_model(spec, cfg, output=output, existing=existing)


def test_a_time_budget_too_small_for_any_plan_names_the_minimum(tmp_path, monkeypatch):
    from edgekit.deployment import deploy

    monkeypatch.chdir(tmp_path)
    f = _task_file(tmp_path / "t.jsonl", 45)
    with pytest.raises(UsageError) as e:
        deploy(
            f"jsonl:{f}", 2.0, models=[SMOL], time_budget_s=20, out_dir=tmp_path / "d", profile_fn=_tiny_profile_fn()
        )
    assert "too small for any plan here: it needs at least" in e.value.message
    assert e.value.fix.startswith("pass --time-budget ")
    assert not (tmp_path / "d" / "plan.json").exists()


def test_a_target_no_configuration_meets_lists_the_fastest(tmp_path, monkeypatch):
    from edgekit.deployment import deploy
    from edgekit.errors import EdgekitError

    monkeypatch.chdir(tmp_path)
    f = _task_file(tmp_path / "t.jsonl", 45)
    with pytest.raises(EdgekitError) as e:
        deploy(
            f"jsonl:{f}",
            0.001,
            models=[SMOL],
            time_budget_s=600,
            out_dir=tmp_path / "d",
            n_samples=2,
            max_tokens=4,
            profile_fn=_tiny_profile_fn(),
        )
    assert "no configuration meets 0.001 s" in e.value.message and "the fastest is" in e.value.message
    assert not (tmp_path / "d" / "plan.json").exists()


# ---------------------------------------------------------------- end to end


def test_deploy_end_to_end_with_a_cloud_then_resume(tmp_path, monkeypatch, server):
    """A real deployment: profile (a small real sweep), tune, plan, calibrate against a real loopback server,
    verify, outputs; then the same command again continues instead of starting over."""
    from edgekit.deployment import deploy
    from edgekit.schemas.plan import load_plan

    monkeypatch.chdir(tmp_path)
    f = _task_file(tmp_path / "t.jsonl", 62)
    out = tmp_path / "dep"
    stages: dict[str, int] = {}
    kw = dict(
        models=[SMOL],
        cloud_url=server,
        cloud_model="smol",
        offload_budget=0.3,
        time_budget_s=400,
        out_dir=out,
        n_samples=4,
        max_tokens=8,
        threads=2,
        profile_fn=_tiny_profile_fn(),
        progress=lambda s, d, t: stages.__setitem__(s, d),
    )
    rep = deploy(f"jsonl:{f}", 2.0, **kw)
    for name in ("plan.json", "report.md", "report.json", "frontier.png", "edgekit.service", "verify.jsonl"):
        assert (out / name).is_file(), name
    assert not (out / "plan.pending.json").exists()
    # splits: disjoint ranges, the ids used inside their own range
    ids = {k: set(s["ids"]) for k, s in rep.splits.items()}
    assert set(ids) == {"tune", "calibrate", "verify"}
    assert not (ids["tune"] & ids["calibrate"]) and not (ids["tune"] & ids["verify"])
    assert not (ids["calibrate"] & ids["verify"])
    assert len(ids["verify"]) >= MIN_VERIFY and len(ids["calibrate"]) >= MIN_VERIFY
    # verify figures, in the report and in the plan
    v = rep.verify
    for k in ("acc", "acc_pred", "acc_pred_lo", "acc_pred_hi", "p50_s", "p95_s", "p50_pred_s", "offload"):
        assert k in v, k
    assert v["acc_pred_lo"] <= v["acc_pred"] <= v["acc_pred_hi"]
    pf = load_plan(out / "plan.json")
    assert pf.verify["acc"] == v["acc"] and pf.predicted.heldout_accuracy == v["acc"]
    assert pf.offload is not None and pf.offload.method.startswith("conformal")
    assert set(rep.stages) == {"profile", "tune", "plan", "calibrate", "verify", "outputs"}
    assert {"tune", "verify"} <= set(stages)
    saved = json.loads((out / "report.json").read_text())
    assert saved["verify"]["acc"] == v["acc"] and saved["splits"]["verify"]["range"] == rep.splits["verify"]["range"]
    assert "## Verify (held out)" in (out / "report.md").read_text()
    # the unit file runs this plan
    unit = (out / "edgekit.service").read_text()
    assert f"--plan {(out / 'plan.json').resolve()}" in unit and "Restart=on-failure" in unit
    if shutil.which("systemd-analyze"):
        r = subprocess.run(["systemd-analyze", "verify", str(out / "edgekit.service")], capture_output=True, text=True)
        bad = [ln for ln in r.stderr.splitlines() if "edgekit.service" in ln and "Unknown" in ln]
        assert not bad, r.stderr
    # the same command again: the tables, calibration and verify records are taken over, not redone
    rep2 = deploy(f"jsonl:{f}", 2.0, **kw)
    assert any(r.startswith("tune ") for r in rep2.resumed) and any(r.startswith("calibrate") for r in rep2.resumed)
    assert rep2.stages["tune"] < rep.stages["tune"] and rep2.verify["acc"] == v["acc"]
    assert rep2.profile["reused_from"] is not None and rep2.profile["measured_now"] == []
