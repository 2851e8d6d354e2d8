"""Confidence scores (edgekit.runtime.confidence): each score on hand-made sequences against brute
force, the grammar's forced tokens left out, P(True) on a real model, and the calibration's fitting
split kept apart from its calibration split."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from edgekit.calibrate import check_disjoint, check_fit_size
from edgekit.engines.llamacpp_sample import topk_mean
from edgekit.errors import UsageError
from edgekit.plan.offload_threshold import CalibrationRun, choose
from edgekit.runtime.confidence import answer_entropy, answer_span, lowest_group, sample_scores, tail_mean
from edgekit.runtime.routing import combine, score_of
from edgekit.schemas.result import Confidence, Result, Timings


# ----------------------------------------------------------------------------- scores by brute force
@pytest.mark.parametrize("seed", range(20))
def test_lowest_group_and_tail_match_brute_force(seed):
    rng = random.Random(seed)
    vals = [rng.uniform(0, 10) for _ in range(rng.randint(1, 40))]
    w, t = rng.randint(1, 12), rng.randint(1, 12)
    ww = min(w, len(vals))
    brute = min(sum(vals[i : i + ww]) / ww for i in range(len(vals) - ww + 1))
    assert lowest_group(vals, w) == pytest.approx(brute)
    assert tail_mean(vals, t) == pytest.approx(sum(vals[-t:]) / len(vals[-t:]))


def test_forced_tokens_are_left_out_of_group_and_tail():
    assert lowest_group([None, 2.0, None, 4.0], 1) == 2.0  # None: forced by a grammar
    assert tail_mean([5.0, None, None], 2) == 5.0
    assert lowest_group([None, None], 4) is None


@pytest.mark.parametrize("seed", range(10))
def test_topk_mean_matches_a_full_sort(seed):
    rng = np.random.default_rng(seed)
    row = (rng.standard_normal(5000) * rng.uniform(0.5, 8)).astype(np.float32)
    for k in (1, 5, 20, 64):
        want = float(np.sort(row.astype(np.float64))[-k:].mean())
        assert topk_mean(row, float(row.max()), k) == pytest.approx(want, rel=1e-6)


def test_answer_span_after_the_marker_and_at_the_last_occurrence():
    pieces = ["The", " count", " is", " 3", ".", " Answer", ":", " 1", "2", "\n"]
    text = "".join(pieces)
    starts = np.cumsum([0] + [len(p) for p in pieces[:-1]]).tolist()
    assert answer_span(text, starts, "12") == (7, 9)  # the tokens " 1", "2" after "Answer:"
    pieces = ["I", " think", " 7", " legs"]
    text = "".join(pieces)
    starts = np.cumsum([0] + [len(p) for p in pieces[:-1]]).tolist()
    assert answer_span(text, starts, "7") == (2, 3)


def test_sample_scores_sum_the_span_and_skip_forced_tokens():
    pieces = ["Answer", ":", " ", "no"]
    allowed = [None, None, None, math.log(0.25)]  # the grammar forced "Answer: "
    conf = [None, None, None, 1.5]
    sc = sample_scores("".join(pieces), [len(p) for p in pieces], "no", allowed, conf, 2048, 2048)
    assert sc["answer_logprob"] == pytest.approx(math.log(0.25))
    assert sc["answer_min_logprob"] == pytest.approx(math.log(0.25))
    assert sc["group_conf"] == sc["tail_conf"] == 1.5
    pieces = ["4", "2"]
    sc = sample_scores("42", [1, 1], "42", [-0.5, -1.0], [3.0, 1.0], 1, 1)
    assert sc["answer_logprob"] == pytest.approx(-1.5) and sc["answer_min_logprob"] == -1.0
    assert sc["group_conf"] == 1.0 and sc["tail_conf"] == 1.0
    assert sample_scores("42", [1, 1], None, [-0.5, -1.0], [3.0, 1.0], 4, 4)["answer_logprob"] is None


def test_answer_entropy():
    assert answer_entropy(["a", "a", "a"]) == 0.0
    assert answer_entropy(["a", "b", None, None]) == pytest.approx(math.log(2))
    assert answer_entropy([None]) is None


def _result(answer, **conf) -> Result:
    return Result(
        model="m",
        answer=answer,
        aggregate="majority",
        samples=[],
        confidence=Confidence(**conf),
        timings=Timings(),
        n=1,
        max_tokens=8,
        temperature=0.0,
    )


def test_missing_or_nan_scores_offload_first_never_crash():
    res = _result("7", answer_logprob=None, answer_entropy=0.5, no_answer_share=0.25)
    assert score_of(res, "answer_logprob") is None
    assert score_of(res, "low_entropy") == -0.5 and score_of(res, "answered") == 0.75
    assert combine([1.0, float("nan")], [1.0, 1.0, 0.0]) is None
    assert score_of(_result(None, vote_share=1.0), "vote_share") is None
    with pytest.raises(UsageError, match="chosen by calibration"):
        score_of(res, "auto")


# ----------------------------------------------------------------------------- fitting vs calibration split
def _records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ok = rng.random() < 0.6
        out.append(
            {
                "id": f"p{i}",
                "answer": "x",
                "correct": ok,
                "vote_share": 1.0,
                "answer_logprob": (-0.2 if ok else -1.5) + rng.gauss(0, 0.6),
                "group_conf": rng.gauss(5, 1),
                "answered": 1.0,
            }
        )
    return out


def test_auto_fits_on_one_split_and_calibrates_on_the_other():
    recs = _records(200)
    run = CalibrationRun(plan_path="-", task="-", alpha=0.2, delta=0.1, score="auto")
    cal, extra = choose(recs, run, n_samples=1)
    assert extra["n_fit"] == 80 and cal.n_calibration == 120
    assert cal.score in ("answer_logprob", "combined")
    assert "AUROC" in extra["score_choice"]
    fit_ids = {s for s in extra["fit_split"].split("ids ")[1].rstrip(".").split(",")}
    assert fit_ids and len(fit_ids) == 8  # the record lists the first ids of the fitting split


def test_a_leaked_split_is_refused():
    check_disjoint(["a", "b"], ["c"])
    with pytest.raises(UsageError, match="guarantee would not hold"):
        check_disjoint(["a", "b"], ["b", "c"])


def test_a_fitting_split_too_small_says_how_many():
    with pytest.raises(UsageError, match="needs at least 20 with 5 right and 5 wrong"):
        check_fit_size([True] * 30 + [False] * 2)
    with pytest.raises(UsageError, match="has 10 answered"):
        check_fit_size([True, False] * 5)
    check_fit_size([True, False] * 10)


def test_auto_on_a_set_too_small_for_two_splits_names_one_score_instead():
    recs = _records(30)
    run = CalibrationRun(plan_path="-", task="-", alpha=0.2, delta=0.1)  # no --score: auto only if it fits
    cal, extra = choose(recs, run, n_samples=1)
    assert cal.score == "group_conf" and extra["fit_split"] is None and cal.n_calibration == 30
    for r in recs:
        r["group_conf"] = None  # recorded with conf_top_k=0: the answer span's log-probability instead
    assert choose(recs, run, n_samples=1)[0].score == "answer_logprob"


# ----------------------------------------------------------------------------- real model
def test_token_scores_under_a_grammar_leave_the_forced_prefix_out(smol_rt):
    g = 'root ::= "Answer: " ("yes" | "no")'
    r = smol_rt.generate("Is water wet? Answer yes or no.", n=1, max_tokens=8, grammar=g, extractor="yesno")
    s = r.samples[0]
    assert s.text.startswith("Answer: ")
    # the raw logprobs include the forced prefix; the answer score is the chosen word's probability among
    # the words the grammar allowed: higher than its raw probability, at most 0
    assert r.confidence.answer_logprob is not None
    assert min(s.logprobs) < r.confidence.answer_logprob <= 0.0
    assert r.confidence.answer_entropy == 0.0 and r.confidence.no_answer_share == 0.0


def test_p_true_is_a_probability_and_its_prefill_is_timed(smol_rt):
    q = "How many legs does a cat have? Answer with a single number."
    r = smol_rt.generate(q, max_tokens=4, grammar="root ::= [1-9]", self_check=True)
    assert r.answer is not None
    assert 0.0 < r.confidence.p_true < 1.0
    assert r.timings.self_check_s > 0 and r.timings.total_s >= r.timings.self_check_s
    plain = smol_rt.generate(q, max_tokens=4, grammar="root ::= [1-9]")
    assert plain.confidence.p_true is None and plain.timings.self_check_s is None


def test_run_self_check_flag_reports_p_true_and_its_cost():
    import json
    import subprocess
    import sys

    q = "How many legs does a cat have? Answer with a single number."
    args = [sys.executable, "-m", "edgekit.cli.main", "run", q, "-m", "smollm2-135m-instruct", "--max-tokens", "4"]
    args += ["--grammar", "/dev/stdin", "--threads", "2"]
    r = subprocess.run([*args, "--self-check", "--json"], input="root ::= [1-9]", capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads(r.stdout)
    assert 0.0 < d["confidence"]["p_true"] < 1.0 and d["timings"]["self_check_s"] > 0
    text = subprocess.run([*args, "--self-check"], input="root ::= [1-9]", capture_output=True, text=True)
    assert text.returncode == 0 and "P(True) 0." in text.stdout and "self-check" in text.stdout
