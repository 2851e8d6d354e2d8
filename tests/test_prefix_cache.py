"""The prompt-prefix KV cache (#20): a request that starts like a cached prompt copies those KV cells
and prefills only the rest -- with the same greedy tokens as a cold prefill, under concurrency, within
its size, and never when turned off.

Exactness: with flash attention on, a row's logits do not depend on what else the KV cache holds, so
a cached prefix must give bit-identical tokens and log-probabilities (any logic error -- a wrong cell
range, a stale cell -- breaks that). With it off, llama.cpp's attention sums over every used cell (other
sequences masked), so the cache's extra cells move logits by float noise, as concurrent requests do."""

from __future__ import annotations

import threading

import pytest

from edgekit.engines.llamacpp import LlamaCppEngine
from edgekit.engines.llamacpp_prefix import PrefixCache, common_prefix
from edgekit.errors import UsageError
from edgekit.runtime.core import Runtime
from edgekit.schemas.options import SamplingOptions

SMOL = "smollm2-135m-instruct"
SYS = "You are the controller of a robot arm. " + " ".join(
    f"Rule {i}: never move joint {i % 6} faster than {i + 3} degrees per second." for i in range(14)
)
OBS = [f"Observation: the cup is at ({x}, {y}). Which action?" for x, y in ((3, 4), (5, 1), (0, 7), (2, 2))]


def ask(rt: Runtime, q: str, system: str = SYS):
    return rt.generate(q, system=system, max_tokens=12, seed=0)


def engine(**kw) -> LlamaCppEngine:
    return LlamaCppEngine(SMOL, n_ctx=2048, threads=2, flash_attn=kw.pop("flash_attn", True), **kw)


# the engine kinds whose cached and cold runs are bit-identical (see the module's docstring)
BATCHED = {"max_seqs": 4, "flash_attn": True}
SINGLE = {"flash_attn": False}
_REFS: dict = {}


def reference(kind: dict) -> dict:
    """Greedy tokens and log-probabilities of every observation, each prefilled from scratch by an
    engine of this kind with the cache off."""
    key = tuple(sorted(kind.items()))
    if key not in _REFS:
        with Runtime(engine(prefix_cache=0, **kind)) as cold:
            _REFS[key] = {q: (ask(cold, q).samples[0].token_ids, ask(cold, q).samples[0].logprobs) for q in OBS}
            assert cold.engine._core.reused_tokens == 0  # the cache off really is off
    return _REFS[key]


def test_common_prefix_and_match_rules():
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2 and common_prefix([], [1]) == 0
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    pc = PrefixCache(seqs=[8, 9], budget=100, min_match=3)
    from edgekit.engines.llamacpp_prefix import Prefix

    pc.entries.append(Prefix([1, 2, 3, 4, 5], 8))
    assert pc.match([1, 2, 3, 4, 5]) == (pc.entries[0], 4)  # the last token is always decoded again
    assert pc.match([1, 2, 9, 9, 9])[1] == 0  # 2 shared tokens: below min_match
    assert pc.match([1, 2, 3, 7, 7])[1] == 3
    assert PrefixCache(seqs=[8], budget=0).match([1, 2, 3, 4, 5]) == (None, 0)  # off


@pytest.mark.parametrize("batching", [False, True], ids=["one-at-a-time", "continuous-batching"])
def test_a_cached_prefix_gives_the_cold_prefill_greedy_tokens(batching):
    kw = BATCHED if batching else SINGLE
    ref = reference(kw)
    with Runtime(engine(**kw)) as rt:
        first = ask(rt, OBS[0])
        assert first.timings.cached_prompt_tokens == 0
        for q in OBS[1:]:
            r = ask(rt, q)
            assert (r.samples[0].token_ids, r.samples[0].logprobs) == ref[q], q  # token by token, bit for bit
            # the system prompt (and the chat template's head) came from the cache
            assert r.timings.cached_prompt_tokens > 0.8 * len(rt.engine.tokenize(SYS))
            assert r.timings.cached_prompt_tokens < r.timings.prompt_tokens
        if batching:
            st = rt.engine.batching_stats()
            assert st["prefix_hits"] == 3 and st["prefix_misses"] == 1 and st["prefix_reused_tokens"] > 0
            total = sum(
                len(rt.engine.prompt_ids([{"role": "user", "content": q}], SamplingOptions(system=SYS))) for q in OBS
            )
            assert st["prefill_tokens"] == total - st["prefix_reused_tokens"]  # only the rest was prefilled


def assert_a_cold_prefill_agrees(rt: Runtime, q: str, sample) -> None:
    """Replay the sample's tokens after its prompt prefilled from scratch (teacher-forced, one sequence):
    each token is the cold model's argmax or a near-tie (within 0.3 nats), its log-probability the
    cold one within 0.3 until the first near-tie. Two requests decoding side by side place their KV
    cells differently from a lone request, so flash attention sums in another order: float noise, not
    bit equality. Cells copied from the wrong prefix or a stale suffix would be far off."""
    ids = rt.engine.prompt_ids([{"role": "user", "content": q}], SamplingOptions(system=SYS))
    cold = rt.engine.score_detail(ids, sample.token_ids)
    for k, (tok, lp) in enumerate(zip(sample.token_ids, sample.logprobs, strict=True)):
        if tok != cold.argmax[k]:
            assert cold.gaps[k] < 0.3 and abs(lp - cold.logprobs[k]) < 0.3, (q, k, cold.gaps[k], lp, cold.logprobs[k])
            return
        assert abs(lp - cold.logprobs[k]) < 0.3, (q, k, lp, cold.logprobs[k])


def test_two_concurrent_requests_share_a_prefix_with_their_own_suffixes():
    with Runtime(engine(**BATCHED)) as rt:
        ask(rt, OBS[0])  # caches the system prompt's cells
        got: dict = {}

        def go(q):
            got[q] = ask(rt, q)

        ts = [threading.Thread(target=go, args=(q,)) for q in OBS[1:3]]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        for q in OBS[1:3]:
            assert got[q].timings.cached_prompt_tokens > 0
            assert_a_cold_prefill_agrees(rt, q, got[q].samples[0])
        st = rt.engine.batching_stats()
        assert st["prefix_hits"] == 2 and st["max_requests_in_step"] >= 1


def test_eviction_keeps_the_cache_within_its_size():
    ref = reference(BATCHED)
    with Runtime(engine(**BATCHED, prefix_cache=400)) as rt:
        systems = [SYS, SYS.replace("robot arm", "mobile base"), SYS.replace("cup", "box")]
        for s in systems:  # three ~300-token prompts that share only the template's head: at most one fits
            ask(rt, OBS[0], system=s)
            st = rt.engine.batching_stats()
            assert st["prefix_cache_tokens"] <= 400
        assert st["prefix_evicted"] >= 1 and st["prefix_cache_entries"] == 1
        assert st["free_kv"] == 2048 - st["prefix_cache_tokens"]  # every other cell given back
        r = ask(rt, OBS[1])  # after evictions, answers are still the cold ones
        assert r.samples[0].token_ids == ref[OBS[1]][0]


def test_size_zero_turns_it_off_and_a_negative_size_is_refused():
    ref = reference(BATCHED)
    with Runtime(engine(**BATCHED, prefix_cache=0)) as rt:
        for q in OBS[:2]:
            r = ask(rt, q)
            assert r.timings.cached_prompt_tokens == 0 and r.samples[0].token_ids == ref[q][0]
        st = rt.engine.batching_stats()
        assert st["prefix_hits"] == 0 and st["prefix_cache_budget"] == 0
        with pytest.raises(UsageError, match="prefix cache is off"):
            rt.engine.pin_prefix(SYS, SamplingOptions())
    with pytest.raises(UsageError, match="prefix cache size must be a whole number of tokens >= 0"):
        engine(prefix_cache=-1)


def test_a_pinned_system_prompt_serves_the_first_request_and_is_never_evicted():
    ref = reference(BATCHED)
    with Runtime(engine(**BATCHED, prefix_cache=700)) as rt:
        n = rt.engine.pin_prefix(SYS, SamplingOptions())
        assert n > len(rt.engine.tokenize(SYS)) * 0.9
        r = ask(rt, OBS[2])  # the first request already reuses it
        assert r.timings.cached_prompt_tokens == n and r.samples[0].token_ids == ref[OBS[2]][0]
        for s in ("Be brief. " * 40, "Be careful. " * 40):  # other long prompts come and go around it
            ask(rt, OBS[0], system=s)
        st = rt.engine.batching_stats()
        assert st["prefix_cache_pinned"] == 1
        assert ask(rt, OBS[3]).timings.cached_prompt_tokens == n
        with pytest.raises(UsageError, match="holds 700"):
            rt.engine.pin_prefix(SYS * 3, SamplingOptions())


def test_the_self_check_reuses_the_answered_prompt_and_scores_alike():
    q = "How many legs does a cat have? Answer with a single number."
    with Runtime(engine(**SINGLE)) as rt, Runtime(engine(prefix_cache=0, **SINGLE)) as cold:
        a = rt.generate(q, system=SYS, max_tokens=4, grammar="root ::= [1-9]", self_check=True)
        b = cold.generate(q, system=SYS, max_tokens=4, grammar="root ::= [1-9]", self_check=True)
        assert a.answer == b.answer
        assert a.confidence.p_true == b.confidence.p_true
        assert rt.engine._core.reused_tokens > 0  # the P(True) question starts like the answered prompt


def test_one_at_a_time_without_flash_attention_is_exact_too():
    """The single-request path keeps only the last prompt's cells: the same layout as a cold prefill."""
    with Runtime(engine(flash_attn=False, prefix_cache=0)) as c, Runtime(engine(flash_attn=False)) as w:
        for q in OBS[:3]:
            a, b = ask(c, q), ask(w, q)
            assert (a.samples[0].token_ids, a.samples[0].logprobs) == (b.samples[0].token_ids, b.samples[0].logprobs)
        assert w.engine._core.reused_tokens > 0
