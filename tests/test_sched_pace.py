"""The deadline-aware batch cap (#20): admission waits while one more request would make an admitted
request miss its deadline under the step costs the scheduler measured (or was seeded with)."""

from __future__ import annotations

import math
import threading
import time

import pytest

from edgekit.engines.llamacpp import LlamaCppEngine
from edgekit.engines.llamacpp_pace import InFlight, StepCost, keeps_deadlines
from edgekit.errors import DeadlineUnmeetable
from edgekit.runtime.core import Runtime
from edgekit.serve.wire import runtime_error

SMOL = "smollm2-135m-instruct"


# -- the cost model and the rule, without a model ---------------------------------------------------
def test_step_cost_learns_by_row_count_and_bounds_what_it_has_not_seen():
    c = StepCost(rows=8, alpha=0.5)
    assert c.step_s(3) is None  # nothing measured: no cap
    c.observe(1, 0, 0.02)
    c.observe(1, 0, 0.04)  # EWMA with alpha 0.5
    assert c.step_s(1) == pytest.approx(0.03)
    assert c.step_s(4) == pytest.approx(0.12)  # never seen above 1 row: linear upper bound
    c.observe(8, 0, 0.10)
    assert c.step_s(4) == pytest.approx(0.03 + 0.07 * 3 / 7)  # between two measured counts: interpolated
    c.observe(1, 100, 0.03 + 0.5)  # a step of 1 row + 100 prompt tokens: 5 ms a prompt token
    assert c.prefill_s(10) == pytest.approx(0.05)
    c.seed({1: 9.0, 2: 0.05})  # a seed never overrides a measurement ...
    assert c.step_s(1) == pytest.approx(0.03) and c.step_s(2) == pytest.approx(0.05)
    c.observe(2, 0, 0.5)  # ... and the first measurement replaces a seed outright
    assert c.step_s(2) == pytest.approx(0.5)
    c.observe(0, 10, float("nan"))  # junk is ignored
    assert c.steps_left(32, True, 0) == 32  # no row of this kind finished yet: its budget
    c.finished(32, True, 20)
    assert c.steps_left(32, True, 0) == 20 and c.steps_left(32, True, 5) == 15  # what such rows took
    assert c.steps_left(32, True, 24) == 2  # past the average: a quarter of what is left
    assert c.steps_left(32, False, 0) == 32  # another kind
    assert c.prefill_s(10) == pytest.approx(0.05)


def test_rule_protects_earlier_deadlines_that_would_still_be_met():
    c = StepCost(rows=8)
    c.seed({1: 0.01, 2: 0.02, 3: 0.03})
    urgent = InFlight(deadline=10.0, steps_left=100, prompt_left=0)  # alone: 1 s of a 10 s budget
    ask = dict(rows=2, prompt_tokens=0, margin=1.0)
    assert keeps_deadlines(c, 0.0, [urgent], 1, deadline=math.inf, **ask)  # 3 rows: 3 s <= 10 s
    tight = InFlight(deadline=2.5, steps_left=100, prompt_left=0)  # 1 s alone, 3 s with two more rows
    assert not keeps_deadlines(c, 0.0, [tight], 1, deadline=math.inf, **ask)
    assert keeps_deadlines(c, 0.0, [tight], 1, deadline=2.0, **ask)  # a more urgent newcomer goes first
    late = InFlight(deadline=0.5, steps_left=100, prompt_left=0)  # misses anyway: not protected
    assert keeps_deadlines(c, 0.0, [late], 1, deadline=math.inf, **ask)
    lax = InFlight(deadline=math.inf, steps_left=100, prompt_left=0)
    assert keeps_deadlines(c, 0.0, [lax], 1, deadline=math.inf, **ask)
    assert not keeps_deadlines(c, 0.0, [tight], 1, deadline=math.inf, rows=2, prompt_tokens=0, margin=0.5)
    # 1 s alone of 1.2 s left: inside a 0.5 margin's reserve, not late -- still protected
    squeezed = InFlight(deadline=1.2, steps_left=100, prompt_left=0)
    assert not keeps_deadlines(c, 0.0, [squeezed], 1, deadline=math.inf, rows=2, prompt_tokens=0, margin=0.5)
    assert keeps_deadlines(StepCost(rows=8), 0.0, [tight], 1, deadline=math.inf, **ask)  # nothing known


# -- on the scheduler, with a real model ---------------------------------------------------------------
def _race(rt: Runtime, first: dict, second: dict) -> tuple:
    """Start ``first``, wait until it decodes, then submit ``second``; both results."""
    got: dict = {}

    def go(name: str, prompt: str, kw: dict) -> None:
        got[name] = rt.generate(prompt, max_tokens=48, temperature=0.7, seed=1, ignore_eos=True, **kw)

    a = threading.Thread(target=go, args=("a", "Count from one to fifty in words.", first))
    a.start()
    t0 = time.perf_counter()
    while rt.engine.batching_stats()["running"] == 0 and time.perf_counter() - t0 < 30:
        time.sleep(0.002)
    b = threading.Thread(target=go, args=("b", "Name three colours.", second))
    b.start()
    a.join()
    b.join()
    return got["a"], got["b"]


@pytest.fixture
def paced():
    with Runtime(LlamaCppEngine(SMOL, n_ctx=1024, threads=2, max_seqs=2, prefix_cache=0)) as rt:
        # a step of 2 rows priced at 1000 s (never measured here, since it is never run): sharing the
        # batch would make any deadline of the first request impossible
        assert rt.engine.seed_step_costs({2: 1000.0})
        rt.generate("Hi.", max_tokens=4)  # measures a 1-row step
        yield rt


def test_a_request_waits_while_it_would_make_the_first_miss_its_deadline(paced):
    a, b = _race(paced, {"deadline_s": 120.0}, {})
    st = paced.engine.batching_stats()
    assert st["held_for_deadlines"] > 0
    assert st["max_rows_in_step"] == 1  # never shared a step
    assert b.timings.queue_s >= 0.8 * a.timings.decode_s, (a.timings, b.timings)
    assert a.samples[0].tokens == 48 and b.samples[0].tokens == 48  # nothing lost, only later


def test_without_a_deadline_or_for_a_more_urgent_request_the_batch_is_shared(paced):
    _race(paced, {}, {})  # nothing to protect
    assert paced.engine.batching_stats()["max_rows_in_step"] == 2
    held = paced.engine.batching_stats()["held_for_deadlines"]
    a, b = _race(paced, {"deadline_s": 600.0}, {"deadline_s": 300.0})  # the newcomer is more urgent
    assert paced.engine.batching_stats()["held_for_deadlines"] == held
    assert b.timings.queue_s < 0.5 * a.timings.decode_s, (a.timings, b.timings)


def test_a_request_the_wait_made_late_is_refused_at_once_not_run_and_cut():
    with Runtime(LlamaCppEngine(SMOL, n_ctx=1024, threads=2, max_n=2, max_seqs=2, prefix_cache=0)) as rt:
        rt.generate("Hi.", max_tokens=4)  # measures a 1-row step
        done = threading.Event()
        hog = threading.Thread(
            target=lambda: (
                rt.generate("Tell a story.", n=2, max_tokens=400, temperature=0.7, ignore_eos=True),
                done.set(),
            )
        )
        hog.start()  # holds both rows for several seconds
        while rt.engine.batching_stats()["running"] == 0:
            time.sleep(0.002)
        t0 = time.perf_counter()
        with pytest.raises(DeadlineUnmeetable) as err:  # 8 tokens fit 1 s alone, not behind the hog
            rt.generate("Say yes.", max_tokens=8, deadline_s=1.0)
        waited = time.perf_counter() - t0
        assert not done.is_set() and waited < 1.0, waited  # refused before its deadline, the hog still running
        assert rt.engine.batching_stats()["refused_late"] == 1
        anytime = threading.Thread(  # a deadline shorter than the request from the start: run and cut, flagged
            target=lambda: got.update(r=rt.generate("Count.", max_tokens=200, ignore_eos=True, deadline_s=0.5))
        )
        got: dict = {}
        hog.join()
        anytime.start()
        anytime.join()
        assert "deadline" in got["r"].flags and got["r"].samples[0].finish_reason == "cancelled"
    api = runtime_error(err.value, True, None)  # the daemon's answer: 503 with Retry-After
    assert api.status == 503 and api.body()["error"]["code"] == "deadline_unmeetable"
    assert int(api.headers["Retry-After"]) >= 1


def test_a_newcomer_is_judged_against_the_long_runs_of_a_kind():
    """Protection assumes an admitted request runs as long as the 0.9-quantile of its kind's recent rows
    (not their mean): a newcomer that fits the mean but not the long runs is held."""
    c = StepCost(rows=8)
    c.seed({1: 0.01, 2: 0.02, 3: 0.03})
    for t in (10, 30, 10, 30, 10, 10, 10, 30, 10, 10):  # three in ten run to 30 tokens
        c.finished(32, False, t)
    mean, hi = c.steps_left(32, False, 0), c.steps_left(32, False, 0, q=0.9)
    assert 12 < mean < 17 and hi == 30
    c2 = StepCost(rows=8)
    c2.finished(32, False, 12)
    assert c2.steps_left(32, False, 0, q=0.9) == 12  # fewer than 4 finished: the largest of them
    assert StepCost(rows=8).steps_left(32, False, 0, q=0.9) == 32  # none: the budget
    ask = dict(rows=2, prompt_tokens=0, margin=1.0)
    by_mean = InFlight(deadline=0.5, steps_left=mean, prompt_left=0)  # 3 rows: ~0.43 s by the mean
    assert keeps_deadlines(c, 0.0, [by_mean], 1, deadline=math.inf, **ask)
    long_run = InFlight(deadline=0.5, steps_left=mean, prompt_left=0, steps_hi=hi)  # 0.9 s if it runs long
    assert not keeps_deadlines(c, 0.0, [long_run], 1, deadline=math.inf, **ask)
