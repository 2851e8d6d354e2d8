"""Real llama.cpp inference on SmolLM2-135M (tiny budgets)."""

import psutil
import pytest

from edgekit.errors import ContextOverflow, UsageError
from edgekit.schemas.options import SamplingOptions

Q = "A robot arm has 3 red and 4 blue blocks. How many blocks?"


@pytest.mark.parametrize("flash_attn", [False, True])
def test_greedy_n1_matches_llama_cpp_high_level(smol_path, flash_attn):
    """Same model, same attention kernel: edgekit's batched path == llama-cpp-python's Llama."""
    from llama_cpp import Llama, llama_vocab_is_eog
    from safe_llama import patch_defaults

    from edgekit.runtime import Runtime

    with Runtime(str(smol_path), n_ctx=2048, max_n=8, threads=2, flash_attn=flash_attn) as rt:
        toks = rt.prompt_tokens(Q)
        res = rt.generate(Q, max_tokens=24, n=1, temperature=0.0, aggregate="none")
    patch_defaults(str(smol_path))  # the kernel configuration edgekit's probe found safe on this CPU
    llm = Llama(model_path=str(smol_path), n_ctx=512, n_threads=2, verbose=False, flash_attn=flash_attn)
    try:
        ref = []
        for t in llm.generate(toks, temp=0.0, top_k=1):
            if llama_vocab_is_eog(llm._model.vocab, t):
                break
            ref.append(t)
            if len(ref) == 24:
                break
        text = llm.detokenize(ref).decode("utf-8", errors="replace")
    finally:
        llm.close()
    s = res.samples[0]
    assert s.token_ids == ref
    assert s.text == text
    assert len(s.logprobs) == len(ref) and all(lp <= 0 for lp in s.logprobs)


def test_seeded_batch_is_reproducible_and_samples_differ(smol_rt):
    kw = dict(max_tokens=12, n=6, temperature=1.0, seed=7)
    a = smol_rt.generate(Q, **kw)
    b = smol_rt.generate(Q, **kw)
    assert [s.token_ids for s in a.samples] == [s.token_ids for s in b.samples]
    assert len({tuple(s.token_ids) for s in a.samples}) > 1  # n distinct samples, not n copies
    c = smol_rt.generate(Q, **{**kw, "seed": 8})
    assert [s.token_ids for s in c.samples] != [s.token_ids for s in a.samples]


def test_budget_and_stop_respected(smol_rt):
    r = smol_rt.generate("Count from 1 to 50, one number per line.", max_tokens=5, n=3, temperature=0.7, seed=1)
    for s in r.samples:
        assert s.tokens <= 5 and len(s.token_ids) == s.tokens
        if s.tokens == 5:
            assert s.finish_reason == "budget"
    r = smol_rt.generate("Count from 1 to 50, one number per line.", max_tokens=40, n=2, temperature=0.0, stop=["\n"])
    for s in r.samples:
        assert "\n" not in s.text
        assert s.finish_reason == "stop"
        assert s.tokens < 40


def test_no_state_leaks_between_calls(smol_rt):
    first = smol_rt.generate(Q, max_tokens=16, temperature=0.0, aggregate="none").samples[0].token_ids
    smol_rt.generate("Write a haiku about a rusty gripper.", max_tokens=20, n=4, temperature=0.9, seed=3)
    again = smol_rt.generate(Q, max_tokens=16, temperature=0.0, aggregate="none").samples[0].token_ids
    assert first == again


def test_result_fields_and_confidence(smol_rt):
    r = smol_rt.generate(Q, max_tokens=16, n=4, temperature=0.8, seed=0, extractor="number")
    t = r.timings
    assert t.prompt_tokens > 0 and t.generated_tokens == sum(s.tokens for s in r.samples)
    assert 0 < t.prefill_s <= t.total_s and t.decode_s >= 0
    assert t.steps == max(s.tokens for s in r.samples)
    c = r.confidence
    assert c.n == 4 and 0 <= c.votes <= 4
    assert c.votes == sum(1 for s in r.samples if r.answer is not None and s.answer == r.answer)
    if r.answer is not None:
        assert c.vote_share == c.votes / 4 and c.mean_logprob <= 0 and c.low_logprob <= c.mean_logprob + 1e-9


def test_first_verified_cancels_the_rest(smol_rt):
    seen = []

    def verifier(sample):
        seen.append(sample.index)
        return True  # the first finisher passes

    r = smol_rt.generate(
        "Say hello.",
        max_tokens=30,
        n=4,
        temperature=0.9,
        seed=2,
        aggregate="first_verified",
        verifier=verifier,
        stop=[" "],
    )
    assert r.confidence.verified is True
    assert len(seen) == 1
    assert r.text == r.samples[seen[0]].text
    others = [s for s in r.samples if s.index != seen[0]]
    assert all(s.finish_reason in ("cancelled", "stop", "budget") for s in others)


def test_context_overflow_is_refused_before_decoding(smol_rt):
    with pytest.raises(ContextOverflow, match="exceeds the context"):
        smol_rt.generate(Q, max_tokens=600, n=4)
    # the runtime still works afterwards
    assert smol_rt.generate(Q, max_tokens=2, temperature=0.0).samples[0].tokens >= 1


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(max_tokens=0), r"invalid max_tokens \(--max-tokens\): must be >= 1"),
        (dict(n=0), r"invalid n \(--n\): must be >= 1"),
        (dict(n=99), r"invalid n \(--n\): must be <= 64"),
        (dict(n=9), "exceeds this engine's max_n=8"),
        (dict(temperature=-0.1), "invalid temperature"),
        (dict(temperature=float("nan")), "invalid temperature.*finite"),
        (dict(top_p=float("inf")), "invalid top_p.*finite"),
        (dict(aggregate="best"), "invalid aggregate"),
        (dict(extractor="roman"), "unknown extractor"),
    ],
)
def test_bad_arguments(smol_rt, kw, match):
    with pytest.raises(UsageError, match=match):
        smol_rt.generate(Q, **kw)


def test_memory_flat_over_1000_calls(smol_rt):
    proc = psutil.Process()
    for _ in range(100):
        smol_rt.generate("Hi", max_tokens=1, n=2, temperature=0.5, seed=1, chat=False, logprobs=True)
    before = proc.memory_info().rss
    for _ in range(900):
        smol_rt.generate("Hi", max_tokens=1, n=2, temperature=0.5, seed=1, chat=False, logprobs=True)
    grown_mb = (proc.memory_info().rss - before) / 1e6
    assert grown_mb < 8, f"RSS grew {grown_mb:.1f} MB over 900 calls"


def test_a_piece_holding_the_stop_string_twice_is_cut_at_the_first(smol_rt):
    """A token that completes the stop string twice (" banana" holds "an" twice; "\n\n" holds "\n" twice in
    tokenizers that merge it) must cut the text before the first (it used to be cut at the last, leaving a stop
    sequence in the answer: seen under load in the daemon's 8-client test)."""
    from edgekit.engines.llamacpp_core import Row

    core = smol_rt.engine._core
    ids = core.tokenize("I ate a banana", add_special=False)
    assert core.piece(ids[-1]) == b" banana", "SmolLM2 has a ' banana' token"
    row = Row(0, 0, SamplingOptions.build(stop=["an"], max_tokens=64))
    out: list = []
    for t in ids:
        if not row.accept(t, None, core, out):
            break
    fin = [e for e in out if e.kind == "finish"]
    assert fin and fin[0].reason == "stop" and fin[0].text == "I ate a b"
