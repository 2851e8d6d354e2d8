"""Continuous batching under a robot's traffic (#20): waiting requests are admitted earliest deadline
first, and a long prompt is prefilled in chunks between the steps of the rows already running."""

from __future__ import annotations

import threading
import time

import pytest

from edgekit.engines.llamacpp import LlamaCppEngine
from edgekit.runtime.core import Runtime

SMOL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def two_rows():
    """A scheduler with two rows: a request of n=2 holds all of them."""
    with Runtime(LlamaCppEngine(SMOL, n_ctx=2048, threads=2, max_n=2, max_seqs=2, prefix_cache=0)) as rt:
        yield rt


def test_waiting_requests_are_admitted_earliest_deadline_first(two_rows):
    rt = two_rows
    blocker = threading.Thread(
        target=lambda: rt.generate("Count from one to fifty in words.", n=2, max_tokens=200, temperature=0.7, seed=1)
    )
    blocker.start()
    while rt.engine.batching_stats()["running"] == 0:  # the blocker holds both rows
        time.sleep(0.01)
    got: dict = {}

    def ask(name: str, deadline: float) -> None:
        got[name] = rt.generate(f"Say {name}.", n=2, max_tokens=4, seed=0, deadline_s=deadline)

    ts = []
    for name, dl in (("late", 300.0), ("urgent", 100.0), ("middle", 200.0)):  # submitted in this order
        ts.append(threading.Thread(target=ask, args=(name, dl)))
        ts[-1].start()
        time.sleep(0.05)  # a distinct submission order
    assert wait_for(lambda: rt.engine.batching_stats()["waiting"] == 3), "the blocker finished too soon"
    for t in [blocker, *ts]:
        t.join()
    # each holds both rows, so they run one after the other: in deadline order, not arrival order
    waits = {k: r.timings.queue_s for k, r in got.items()}
    assert waits["urgent"] < waits["middle"] < waits["late"], waits


def test_no_deadline_waits_behind_a_deadline_and_fifo_among_equals(two_rows):
    rt = two_rows
    blocker = threading.Thread(target=lambda: rt.generate("Tell a story.", n=2, max_tokens=200, temperature=0.7))
    blocker.start()
    while rt.engine.batching_stats()["running"] == 0:
        time.sleep(0.01)
    got: dict = {}

    def ask(name: str, **kw) -> None:
        got[name] = rt.generate(f"Say {name}.", n=2, max_tokens=4, seed=0, **kw)

    plan = (("first-none", {}), ("second-none", {}), ("with-deadline", {"deadline_s": 500.0}))
    ts = []
    for name, kw in plan:
        ts.append(threading.Thread(target=ask, args=(name,), kwargs=kw))
        ts[-1].start()
        time.sleep(0.05)
    assert wait_for(lambda: rt.engine.batching_stats()["waiting"] == 3), "the blocker finished too soon"
    for t in [blocker, *ts]:
        t.join()
    w = {k: r.timings.queue_s for k, r in got.items()}
    assert w["with-deadline"] < w["first-none"] < w["second-none"], w


def test_a_long_prompt_is_prefilled_between_the_running_rows_steps():
    with Runtime(LlamaCppEngine(SMOL, n_ctx=2048, threads=2, max_seqs=4, prefill_chunk=64, prefix_cache=0)) as rt:
        stamps: list[float] = []
        started = threading.Event()

        def running() -> None:
            for ev in rt.engine.generate(
                [{"role": "user", "content": "Count from one to one hundred in words."}],
                rt_options(max_tokens=60),
            ):
                if ev.kind == "token":
                    stamps.append(time.perf_counter())
                    started.set()

        a = threading.Thread(target=running)
        a.start()
        started.wait(60)
        long_prompt = "Summarise this log. " + " ".join(f"line {i}: joint {i % 6} ok." for i in range(120))
        t0 = time.perf_counter()
        res = rt.generate(long_prompt, max_tokens=2)
        t_prefilled = t0 + res.timings.queue_s + res.timings.prefill_s
        a.join()
        assert res.timings.prompt_tokens > 5 * 64  # at least six chunks
        during = [t for t in stamps if t0 < t < t_prefilled]
        assert len(during) >= 4, (len(during), res.timings.prompt_tokens)  # the running row kept advancing
        assert rt.engine.batching_stats()["shared_steps"] >= 4


def wait_for(cond, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return False


def rt_options(**kw):
    from edgekit.schemas.options import SamplingOptions

    return SamplingOptions.build(temperature=0.0, **kw)
