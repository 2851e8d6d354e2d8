"""Stopping rules for the vote (issue 19): the rules' arithmetic, their replay over tables, and the runtime
stopping (and growing) a real llama.cpp batch."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from conftest import SMOL
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from edgekit.errors import UsageError
from edgekit.evaluate.estimators import accuracy_rows
from edgekit.evaluate.replay import replay, simulate
from edgekit.schemas.options import SamplingOptions
from edgekit.schemas.stopping import Tally, beta_leader_prob, parse_stop_rule
from edgekit.schemas.table import SampleRecord, load_table

ROOT = Path(__file__).resolve().parents[1]
COT_TABLE = ROOT / "tables" / "object_counting-qwen0.5b-cot.json"


# -- the rules' arithmetic -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, shown",
    [
        ("none", "none"),
        ("decided", "decided"),
        ("beta:0.95", "beta:0.95"),
        ("BETA:0.9", "beta:0.9"),
        ("adaptive:4,8", "adaptive:4,8"),
        ("adaptive:2,6,0.9", "adaptive:2,6,0.9"),
    ],
)
def test_rules_parse_to_their_canonical_form(text, shown):
    assert str(parse_stop_rule(text)) == shown


@pytest.mark.parametrize("bad", ["decide", "beta:1", "beta:0.5", "beta:x", "adaptive:8,4", "adaptive:0,4", "beta"])
def test_a_bad_rule_is_one_line_naming_the_forms(bad):
    with pytest.raises(UsageError) as e:
        SamplingOptions.build(n=8, stop_rule=bad)
    msg = str(e.value) + " " + (e.value.fix or "")
    assert "--stop-rule" in msg and "beta:<c>" in msg and "adaptive:<n0>,<n_max>" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("agg", ["none", "first_verified"])
def test_a_stopping_rule_needs_a_vote(agg):
    with pytest.raises(UsageError, match="stops a vote") as e:
        SamplingOptions.build(n=8, stop_rule="decided", aggregate=agg)
    assert "--aggregate majority" in e.value.fix


def test_adaptive_sets_n_to_its_n_max_and_refuses_another_n():
    assert SamplingOptions.build(stop_rule="adaptive:4,8").n == 8
    assert SamplingOptions.build(stop_rule="adaptive:4,8", n=8).n == 8
    with pytest.raises(UsageError, match="n must equal its n_max"):
        SamplingOptions.build(stop_rule="adaptive:4,8", n=6)


@pytest.mark.parametrize("v1, v2", [(a, b) for a in range(0, 9) for b in range(0, a + 1)])
def test_beta_matches_a_brute_force_posterior(v1, v2):
    """P(x > 1/2), x ~ Beta(v1 + 1, v2 + 1), by numerical integration of the density and by scipy's cdf."""
    pdf = stats.beta(v1 + 1, v2 + 1).pdf
    brute, _ = integrate.quad(pdf, 0.5, 1.0)
    assert beta_leader_prob(v1, v2) == pytest.approx(brute, abs=1e-9)
    assert beta_leader_prob(v1, v2) == pytest.approx(stats.beta(v1 + 1, v2 + 1).sf(0.5), abs=1e-12)


def test_beta_stops_where_adaptive_consistency_does():
    t = Tally(parse_stop_rule("beta:0.95"), 8)
    for _ in range(3):
        t.add("7")
    assert not t.should_stop()  # 3-0: P = 1 - 2^-4 = 0.9375 < 0.95
    t.add("7")
    assert t.should_stop()  # 4-0: 0.969


def _full_winner(answers):
    c = Counter(a for a in answers if a is not None)
    if not c:
        return None
    top = max(c.values())
    leaders = [a for a, v in c.items() if v == top]
    return leaders[0] if len(leaders) == 1 else None


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", None]), min_size=2, max_size=12))
def test_decided_never_changes_the_votes_answer(answers):
    """Fed in any finish order, `decided` stops only when the leader at the stop is the unique winner of all."""
    t = Tally(parse_stop_rule("decided"), len(answers))
    for i, a in enumerate(answers):
        t.add(a)
        if t.should_stop():
            leader = t.votes.most_common(1)[0][0]
            assert _full_winner(answers) == leader
            assert i < len(answers) - 1  # a stop before the last sample: something was saved
            break


def test_adaptive_grows_as_soon_as_the_started_samples_cannot_settle_it():
    t = Tally(parse_stop_rule("adaptive:4,8"), 8)
    assert t.started == 4
    t.add("a")
    assert not t.should_grow()  # a + 3 running for a: 4-0 would meet beta:0.95
    t.add("b")
    assert t.should_grow()  # at best 3-1: P = 0.8125, and 3 > 1 + 4 unstarted fails
    assert t.grow() == 4 and t.started == 8
    u = Tally(parse_stop_rule("adaptive:4,8"), 8)
    for _ in range(4):
        u.add("a")
    assert u.should_stop() and not u.should_grow()
    w = Tally(parse_stop_rule("adaptive:4,8"), 8)
    w.add(None)  # a sample with no answer is no evidence: 3 running cannot reach 4-0
    assert w.should_grow()


# -- replay over a real table ---------------------------------------------------------------------------


def test_replay_on_real_samples_decided_gives_majority_and_fewer_steps():
    t = load_table(COT_TABLE)
    n = len(t.problems[0].samples)
    B = t.max_tokens
    maj = {(r.budget, r.k): r for r in accuracy_rows(t.problems, [B], aggregations=["majority"])}
    rep_none = replay(t.problems, B, n, "none")
    rep_dec = replay(t.problems, B, n, "decided")
    assert rep_none.method == "exact" and rep_dec.method == "exact"
    # none replayed = the estimators' expected steps (max over all samples) and accuracy
    assert rep_none.steps.mean() == pytest.approx(maj[(B, n)].expected_steps)
    assert rep_none.accuracy == pytest.approx(maj[(B, n)].accuracy)
    assert rep_dec.accuracy == pytest.approx(maj[(B, n)].accuracy)
    assert (rep_dec.steps <= rep_none.steps).all() and rep_dec.steps.mean() < rep_none.steps.mean()
    for p in t.problems:  # problem by problem: decided's vote at its stop is the full vote's unique winner
        ordered = sorted(range(n), key=lambda i: (min(p.samples[i].tokens + p.samples[i].finished, B), i))
        answers = [p.samples[i].answer if p.samples[i].finished and p.samples[i].tokens < B else None for i in ordered]
        tally = Tally(parse_stop_rule("decided"), n)
        for a in answers:
            tally.add(a)
            if tally.should_stop():
                assert tally.votes.most_common(1)[0][0] == _full_winner(answers)
                break


def test_simulate_counts_live_rows_and_late_joiners():
    rec = lambda a, tok: SampleRecord(answer=a, correct=a == "1", tokens=tok, finished=True)  # noqa: E731 - a table row
    # adaptive:2,4 (beta 0.95): two samples can never reach 0.95, so after the first finish (step 3, "1") the other
    # two join; they finish at 3 + 2 and 3 + 4; sample 1 ("2") at step 5; the last at step 7 settles 3-1
    samples = [rec("1", 2), rec("2", 4), rec("1", 1), rec("1", 3)]
    credit, steps, hist = simulate(samples, 16, parse_stop_rule("adaptive:2,4"))
    assert steps == 7 and credit == 1.0
    # steps 1-3: 2 rows; 4-5: 3 rows; 6-7: 1 row
    assert hist.tolist() == [2.0, 3.0, 2.0, 0.0]
    # decided over 4 samples all started: "1" at steps 2, 3, 4 -> 3 > 0 + 1 after step 4; sample 1 (step 5) is cut
    credit, steps, hist = simulate(samples, 16, parse_stop_rule("decided"))
    assert steps == 4 and credit == 1.0 and hist.tolist() == [0.0, 1.0, 1.0, 2.0]  # steps 1-2: 4 rows, 3: 3, 4: 2


def test_replay_refuses_a_table_without_samples():
    t = load_table(COT_TABLE)
    bare = [p.model_copy(update={"samples": []}) for p in t.problems]
    with pytest.raises(UsageError, match="no per-sample records") as e:
        replay(bare, t.max_tokens, 2, "decided")
    assert "edgekit eval" in e.value.fix


# -- the runtime stops (and grows) a real batch ------------------------------------------------------------

PROMPT = "Write one short sentence about a robot arm."


def test_a_stopped_vote_cancels_the_other_rows(smol_rt):
    r = smol_rt.generate(PROMPT, n=8, max_tokens=48, seed=5, stop_rule="beta:0.9", extractor=lambda text: "same")
    reasons = Counter(s.finish_reason for s in r.samples)
    assert r.stopping is not None and r.stopping.stopped
    assert reasons["cancelled"] >= 1
    assert r.confidence.n == r.stopping.counted == reasons["stop"] + reasons["budget"]
    assert r.answer == "same" and r.confidence.vote_share == r.confidence.votes / r.confidence.n
    full = smol_rt.generate(PROMPT, n=8, max_tokens=48, seed=5, extractor=lambda text: "same")
    assert r.timings.generated_tokens < full.timings.generated_tokens


def test_adaptive_growth_reuses_the_prompts_kv(smol_rt):
    core = smol_rt.engine._core
    p0, g0 = core.prefill_tokens, core.regrow_tokens
    P = len(smol_rt.prompt_tokens(PROMPT))
    # every sample a different answer: 4 can never settle it, so the other 4 join
    r = smol_rt.generate(PROMPT, max_tokens=24, seed=1, stop_rule="adaptive:4,8", extractor=lambda text: text)
    assert r.stopping.grown and r.stopping.started == 8
    assert core.prefill_tokens - p0 == P  # the prompt was prefilled once
    assert core.regrow_tokens - g0 == 4  # one re-decoded prompt-last token per late sample, not 4 prompts
    assert len(r.samples) == 8 and all(s.finish_reason in ("stop", "budget") for s in r.samples)
    # agreeing answers: 4 samples settle it, nothing grows
    r2 = smol_rt.generate(PROMPT, max_tokens=96, seed=1, stop_rule="adaptive:4,8", extractor=lambda text: "x")
    assert not r2.stopping.grown and r2.stopping.started == 4
    assert Counter(s.finish_reason for s in r2.samples)["cancelled"] >= 4


def test_the_scheduler_frees_stopped_rows_and_grows_without_a_second_prefill():
    from edgekit.runtime import Runtime

    with Runtime(SMOL, n_ctx=2048, max_n=8, max_seqs=8, threads=2) as rt:
        eng = rt.engine
        P = len(rt.prompt_tokens(PROMPT))
        r = rt.generate(PROMPT, n=8, max_tokens=48, seed=5, stop_rule="beta:0.9", extractor=lambda text: "same")
        s = eng.batching_stats()
        assert r.stopping.stopped and s["cancelled"] == 1
        assert s["free_rows"] == s["rows"] and s["running"] == 0 and s["free_kv"] == 2048
        assert s["row_tokens"] < 8 * 48
        before = dict(s)
        g = rt.generate(PROMPT, max_tokens=24, seed=1, stop_rule="adaptive:4,8", extractor=lambda text: text)
        s = eng.batching_stats()
        assert g.stopping.grown and len([x for x in g.samples if x.finish_reason != "cancelled"]) == 8
        assert s["prefill_tokens"] - before["prefill_tokens"] == P
        assert s["regrow_tokens"] - before["regrow_tokens"] == 4
        assert s["free_rows"] == s["rows"] and s["free_kv"] == 2048


def test_an_engine_that_cannot_grow_refuses_adaptive():
    from fake_engine import FakeEngine

    from edgekit.runtime import Runtime

    with Runtime(FakeEngine()) as rt, pytest.raises(UsageError, match="cannot add samples"):
        rt.generate("q", stop_rule="adaptive:2,4")


# -- the planner's knob ------------------------------------------------------------------------------------

PROFILE = ROOT / "profiles" / "ci-2core-amd-epyc.json"


def _plan(*args, rc=0):
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "edgekit.cli.main", "plan", "-p", str(PROFILE), "-a", str(COT_TABLE), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == rc, r.stderr
    return r


def test_decided_replaces_the_plain_vote_and_is_never_slower(tmp_path):
    from edgekit.plan.planner import plan
    from edgekit.schemas.profile import load_profile

    prof, t = load_profile(PROFILE), load_table(COT_TABLE)
    plain = plan(prof, [t], 8.0, prefer="most-accurate", stop_rules=("none",))
    dec = plan(prof, [t], 8.0, prefer="most-accurate", stop_rules=("decided",))
    key = lambda res, i: (int(res.budget[i]), int(res.n[i]))  # noqa: E731 - a lookup key
    plain_lat = {
        key(plain, i): plain.latency[i] for i in range(len(plain)) if plain.config(i)["aggregation"] == "majority"
    }
    seen = 0
    for i in range(len(dec)):
        c = dec.config(i)
        if c["aggregation"] == "majority" and c["n"] >= 2:
            assert c["stop_rule"] == "decided"  # the plain row it repeats is gone
            j = [
                x
                for x in range(len(plain))
                if key(plain, x) == key(dec, i) and plain.config(x)["aggregation"] == "majority"
            ][0]
            assert dec.accuracy[i] == pytest.approx(plain.accuracy[j])  # exactly majority@k's accuracy
            assert dec.latency[i] <= plain_lat[key(dec, i)] * 1.0001  # priced per live row: never slower
            seen += 1
    assert seen > 10
    # the chosen plan runs what was planned
    pf_path = tmp_path / "p.json"
    r = _plan("-t", "8s", "--prefer", "most-accurate", "--json", "-o", str(pf_path))
    import json

    d = json.loads(r.stdout)
    assert d["chosen"]["stop_rule"] == "decided" and d["chosen"]["options"]["stop_rule"] == "decided"
    rl = d["predicted"]["replayed_latency"]
    assert rl["p95_s"] >= rl["p50_s"] > 0 and "replayed" in rl["how"]


def test_plan_stop_rules_bad_entry_is_one_line():
    r = _plan("-t", "2s", "--stop-rules", "decided;bta:0.9", rc=2)
    assert "bta:0.9" in r.stderr and "adaptive:<n0>,<n_max>" in r.stderr and r.stderr.count("\n") == 1
