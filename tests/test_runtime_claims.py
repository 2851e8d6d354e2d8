"""The runtime's claims, each proven against the real llama.cpp engine (SmolLM2-135M) or, for the
budget rule, against the scripted engine -- and each check shown able to fail.

1. batch rows are right: every row of an n>1 batch, replayed alone on one sequence
   (``LlamaCppEngine.score``: the n=1 path, teacher-forced), has the same per-token logprobs;
   greedy rows equal greedy n=1.
2. ``deadline_s`` cancels unfinished samples within a few steps.
3. ``first_verified`` cancels the rest of the batch once a sample is verified.
4. one budget rule (``within_budget``) for the accuracy tables and the runtime.
5. per-sample seeds are independent across adjacent seeds, and batches reproducible.

Tolerances (measured on this 2-core x86 CPU, llama-cpp-python 0.3.36, SmolLM2-135M Q4_1):

* flash attention ON: batch rows are *bit-identical* to the n=1 replay -- max |delta logprob| = 0.0
  over 24 rows x <=48 tokens at T=1 and 12 greedy rows; the CPU flash-attention kernel and the
  quantised matmuls compute each row alone, whatever the batch. TOL_FA = 1e-4 nats only leaves
  room for summation order in numpy's log-sum-exp.
* flash attention OFF (the CPU default): the attention kernels round differently when the ubatch
  holds several tokens (K.Q and softmax.V through F16), and SmolLM2's Q4_1 x Q8_1 matmuls amplify
  any last-bit difference (activation rounding flips) to a noise floor of KL ~0.005 nats/token --
  the same spread as flash attention on vs off at n=1, or an F32 vs F16 KV cache. It is not
  cross-talk: a row's logits are bit-for-bit the same whatever the other rows hold. Measured on
  sampled tokens (T=1, 24 rows): max |delta logprob| 0.655 nats, per-row mean <= 0.078 nats;
  perturbation of the top-1 minus top-2 logit gap: max 0.52, p99 0.36 over 751 positions.
  Hence TOL_MAX = 1.5, TOL_MEAN = 0.2 nats, and greedy rows must equal greedy n=1 up to the first
  position where the n=1 top-2 gap is below GAP_TOL = 1.0 logit (measured divergences: at gaps
  0.0075 and 0.025). A row mix-up or a missing shared prompt costs several nats per token.
"""

from __future__ import annotations

import numpy as np
import pytest
from fake_engine import FakeEngine

from edgekit.evaluate.estimators import accuracy_rows
from edgekit.runtime import Runtime
from edgekit.schemas.table import ProblemRecord, SampleRecord, budget_steps, within_budget

Q = "A robot arm has 3 red and 4 blue blocks. How many blocks?"
TOL_FA = 1e-4
TOL_MAX, TOL_MEAN = 1.5, 0.2
GAP_TOL = 1.0


@pytest.fixture(scope="module")
def smol_fa(smol_path):
    rt = Runtime(str(smol_path), n_ctx=2048, max_n=8, threads=2, flash_attn=True)
    yield rt
    rt.close()


def replay_diffs(rt: Runtime, prompt: str, res) -> list[np.ndarray]:
    """Per row: |batch logprob - logprob of the same token replayed alone at n=1|."""
    ids = rt.prompt_tokens(prompt)
    out = []
    for s in res.samples:
        assert len(s.logprobs) == len(s.token_ids) == s.tokens > 0
        alone = rt.engine.score(ids, s.token_ids)
        out.append(np.abs(np.array(alone) - np.array(s.logprobs)))
    return out


# ----------------------------------------------------------------------------- 1. batch rows
def sampled_batches(rt):
    for seed in (0, 1):
        yield rt.generate(Q, n=4, max_tokens=32, temperature=1.0, seed=seed, aggregate="none")


def test_batch_rows_replayed_alone_are_bit_identical_with_flash_attention(smol_fa):
    for res in sampled_batches(smol_fa):
        assert len({tuple(s.token_ids) for s in res.samples}) > 1  # distinct rows, not n copies
        diffs = replay_diffs(smol_fa, Q, res)
        worst = max(d.max() for d in diffs)
        assert worst <= TOL_FA, f"batch row vs n=1 replay: max |delta logprob| {worst:.3g} nats"


def test_batch_rows_replayed_alone_agree_within_kernel_noise(smol_rt):
    for res in sampled_batches(smol_rt):
        diffs = replay_diffs(smol_rt, Q, res)
        worst, mean = max(d.max() for d in diffs), max(d.mean() for d in diffs)
        assert worst <= TOL_MAX and mean <= TOL_MEAN, f"max {worst:.3g}, worst row mean {mean:.3g} nats"


def test_replay_sees_a_wrong_row(smol_fa):
    """The replay check can fail: a row scored as if it were another row's continuation."""
    res = smol_fa.generate(Q, n=4, max_tokens=32, temperature=1.0, seed=0, aggregate="none")
    ids = smol_fa.prompt_tokens(Q)
    a, b = next((a, b) for a in res.samples for b in res.samples if a.token_ids[:3] != b.token_ids[:3])
    m = min(len(a.token_ids), len(b.token_ids))
    wrong = np.abs(np.array(smol_fa.engine.score(ids, a.token_ids[:m])) - np.array(b.logprobs[:m]))
    assert wrong.max() > TOL_MAX and wrong.mean() > TOL_MEAN


def greedy_rows(rt, max_tokens=48):
    one = rt.generate(Q, n=1, max_tokens=max_tokens, temperature=0.0, aggregate="none").samples[0]
    four = rt.generate(Q, n=4, max_tokens=max_tokens, temperature=0.0, aggregate="none").samples
    return one, four


def test_greedy_rows_equal_greedy_n1_with_flash_attention(smol_fa):
    one, four = greedy_rows(smol_fa)
    assert one.tokens >= 10
    for s in four:
        assert s.token_ids == one.token_ids
        assert np.abs(np.array(s.logprobs) - np.array(one.logprobs)).max() <= TOL_FA


def test_greedy_rows_equal_greedy_n1_up_to_a_near_tie(smol_rt):
    one, four = greedy_rows(smol_rt)
    ids = smol_rt.prompt_tokens(Q)
    detail = smol_rt.engine.score_detail(ids, one.token_ids)
    assert detail.argmax == one.token_ids  # the replay is the n=1 path: greedy picks its argmax
    assert np.abs(np.array(detail.logprobs) - np.array(one.logprobs)).max() <= TOL_FA
    tie = next((i for i, g in enumerate(detail.gaps) if g < GAP_TOL), len(detail.gaps))
    for s in four:
        assert s.token_ids[:tie] == one.token_ids[:tie], f"row {s.index} diverges before the first near-tie at {tie}"
        # every row, replayed alone, is a greedy decode of the n=1 logits except at near-ties
        alone = smol_rt.engine.score_detail(ids, s.token_ids)
        off = [(i, g) for i, (t, a, g) in enumerate(zip(s.token_ids, alone.argmax, alone.gaps)) if t != a]
        assert all(g < GAP_TOL for _, g in off), f"row {s.index} leaves the n=1 argmax at a clear gap: {off}"
        d = np.abs(np.array(alone.logprobs) - np.array(s.logprobs))
        assert d.max() <= TOL_MAX and d.mean() <= TOL_MEAN


# ----------------------------------------------------------------------------- 2. deadline
def test_deadline_cancels_unfinished_samples_within_a_few_steps(smol_rt):
    deadline = 1.0
    r = smol_rt.generate(Q, n=4, max_tokens=400, temperature=0.8, seed=0, ignore_eos=True, deadline_s=deadline)
    t = r.timings
    assert "deadline" in r.flags
    assert all(s.finish_reason == "cancelled" for s in r.samples)
    assert t.steps < 400 and all(s.tokens == len(s.token_ids) == t.steps for s in r.samples)
    # This run's own times: a one-chunk prompt plus the first sampling round is not interruptible
    # (prefill_s); after it the deadline is polled once per step.
    step = t.decode_s / (t.steps - 1) if t.steps > 1 else 0.0
    assert t.total_s <= max(deadline, t.prefill_s) + 3 * step + 0.2, (
        f"total {t.total_s:.2f} s, prefill {t.prefill_s:.2f} s, step {step * 1000:.0f} ms"
    )


def test_deadline_is_polled_between_prompt_chunks(smol_rt, monkeypatch):
    """A long prompt is decoded in 512-token chunks: a deadline ends it after the current chunk."""
    text = "Summarise: " + " ".join(f"robot{i % 50} moved block {i}." for i in range(200))
    ids = smol_rt.prompt_tokens(text)[:1536]  # three chunks
    assert len(ids) == 1536 and smol_rt.engine._core.n_batch == 512
    dec = smol_rt.engine._core
    sizes: list[int] = []
    real = dec._decode
    monkeypatch.setattr(dec, "_decode", lambda k: (sizes.append(k), real(k))[1])
    r = smol_rt.generate(prompt_tokens=ids, n=2, max_tokens=64, temperature=0.8, seed=0, deadline_s=0.05)
    assert "deadline" in r.flags and all(s.finish_reason == "cancelled" and s.tokens == 0 for s in r.samples)
    assert sizes == [512], f"decodes after the deadline: {sizes}"  # one chunk (> 50 ms), then stopped
    monkeypatch.undo()
    assert smol_rt.generate(Q, max_tokens=2, temperature=0.0).samples[0].tokens >= 1  # nothing left behind


# ----------------------------------------------------------------------------- 3. first_verified
def test_first_verified_cancels_the_rest_as_soon_as_one_is_verified(smol_rt):
    q, kw = "Say hello, or tell a long story.", dict(n=4, max_tokens=64, temperature=1.0, seed=0)
    ref = smol_rt.generate(q, aggregate="none", **kw).samples  # the same seeded batch, run to the end
    finished = [s for s in ref if s.finish_reason == "stop"]
    assert finished, "setup: no sample finishes within the budget"
    first = min(finished, key=lambda s: (s.tokens, s.index))
    assert max(s.tokens for s in ref) >= first.tokens + 10, "setup: the others must run much longer"
    seen = []
    r = smol_rt.generate(q, aggregate="first_verified", verifier=lambda s: seen.append(s.index) or True, **kw)
    assert seen == [first.index] and r.confidence.verified and r.text == first.text
    others = [s for s in r.samples if s.index != first.index]
    assert sum(s.finish_reason == "cancelled" for s in others) >= 1
    assert r.timings.steps <= first.tokens + 1  # the others sampled at most the winner's EOS step
    assert r.timings.generated_tokens < sum(s.tokens for s in ref)


# ----------------------------------------------------------------------------- 4. one budget rule
def test_within_budget_boundary():
    assert within_budget(9, True, 10) and not within_budget(10, True, 10) and not within_budget(5, False, 10)
    assert budget_steps(9, True, 10) == 10 and budget_steps(3, True, 10) == 4  # tokens + the EOS step
    assert budget_steps(10, True, 10) == 10 and budget_steps(64, False, 10) == 10


def test_table_validity_at_every_budget_equals_the_runtime_at_that_max_tokens():
    """Tables are built from a pool drawn at M; the runtime is then run at max_tokens=B."""
    M, n = 40, 8
    prompts = [f"problem {i}: how many?" for i in range(6)]
    with Runtime(FakeEngine()) as rt:
        pool = {q: rt.generate(q, n=n, max_tokens=M, seed=3) for q in prompts}
        problems = [
            ProblemRecord(
                id=q,
                target="4",
                prompt_tokens=3,
                samples=[
                    SampleRecord(
                        answer=s.answer, correct=s.answer == "4", tokens=s.tokens, finished=s.finish_reason == "stop"
                    )
                    for s in pool[q].samples
                ],
            )
            for q in prompts
        ]
        boundary = 0
        for B in range(1, M + 1):
            rows = {(r.aggregation, r.k): r for r in accuracy_rows(problems, [B], [n], ["pass@k"])}
            covered = 0
            for q, p in zip(prompts, problems):
                res = rt.generate(q, n=n, max_tokens=B, seed=3)
                for rec, s in zip(p.samples, res.samples):
                    boundary += rec.finished and rec.tokens == B
                    assert within_budget(rec.tokens, rec.finished, B) == (s.finish_reason == "stop"), (q, B, rec, s)
                    assert (s.answer if s.finish_reason == "stop" else None) == (
                        rec.answer if within_budget(rec.tokens, rec.finished, B) else None
                    )
                    assert budget_steps(rec.tokens, rec.finished, B) == (
                        s.tokens + 1 if s.finish_reason == "stop" else B
                    )
                covered += any(s.finish_reason == "stop" and s.answer == "4" for s in res.samples)
            assert rows[("pass@k", n)].accuracy == pytest.approx(covered / len(prompts)), B
    assert boundary > 0  # the case the rule is about: exactly B tokens, then end-of-sequence


def test_first_verified_at_runtime_equals_the_tables_at_every_budget():
    """The tables score first_verified as pass@k over samples valid at B (a perfect verifier):
    at runtime a truncated sample is never verified either, even when its text would pass."""
    M, n = 40, 8
    prompts = [f"problem {i}: how many?" for i in range(6)]
    verifier = lambda s: "Answer: 4" in s.text  # a truncated text can hold it too
    with Runtime(FakeEngine()) as rt:
        pool = {q: rt.generate(q, n=n, max_tokens=M, seed=5, aggregate="none") for q in prompts}
        problems = [
            ProblemRecord(
                id=q,
                target="4",
                prompt_tokens=3,
                samples=[
                    SampleRecord(answer=None, correct=verifier(s), tokens=s.tokens, finished=s.finish_reason == "stop")
                    for s in pool[q].samples
                ],
            )
            for q in prompts
        ]
        truncated_but_passing = 0
        for B in range(1, M + 1):
            row = accuracy_rows(problems, [B], [n], ["first_verified"])[0]
            got = 0
            for q in prompts:
                r = rt.generate(q, n=n, max_tokens=B, seed=5, aggregate="first_verified", verifier=verifier)
                got += bool(r.confidence.verified)
                truncated_but_passing += any(s.finish_reason == "budget" and verifier(s) for s in r.samples)
                assert all(s.verified is None for s in r.samples if s.finish_reason != "stop")
            assert row.accuracy == pytest.approx(got / len(prompts)), B
    assert truncated_but_passing > 0  # the case the rule is about


def test_budget_rule_on_the_real_engine(smol_rt):
    """A sample of L tokens + EOS: at max_tokens=L the engine stops it as "budget" (no EOS sampled)."""
    kw = dict(n=1, temperature=0.0, aggregate="none", extractor="number")
    full = smol_rt.generate("What is 2 + 2? Reply with just the number.", max_tokens=48, **kw).samples[0]
    L = full.tokens
    assert full.finish_reason == "stop" and L < 48
    at_l = smol_rt.generate("What is 2 + 2? Reply with just the number.", max_tokens=L, **kw).samples[0]
    above = smol_rt.generate("What is 2 + 2? Reply with just the number.", max_tokens=L + 1, **kw).samples[0]
    assert at_l.finish_reason == "budget" and at_l.answer is None and at_l.token_ids == full.token_ids
    assert not within_budget(L, True, L)
    assert above.finish_reason == "stop" and above.token_ids == full.token_ids and within_budget(L, True, L + 1)


# ----------------------------------------------------------------------------- 5. seeds
SEED_Q = "Write a haiku about a rusty gripper."


def seeded_rows(rt, seed):
    res = rt.generate(SEED_Q, n=4, max_tokens=12, temperature=1.0, seed=seed, aggregate="none")
    return [tuple(s.token_ids) for s in res.samples]


def test_adjacent_seeds_share_no_sample_and_a_seed_reproduces(smol_rt):
    a, b = seeded_rows(smol_rt, 7), seeded_rows(smol_rt, 8)
    assert not set(a) & set(b), "seeds 7 and 8 share a sample stream"
    assert len(set(a)) == 4 and len(set(b)) == 4
    assert seeded_rows(smol_rt, 7) == a


def test_seed_check_sees_shifted_streams(smol_rt, monkeypatch):
    """The check above can fail: with seed + i per sample, seeds 7 and 8 share three streams."""
    from edgekit.engines import llamacpp_core

    monkeypatch.setattr(llamacpp_core, "sample_seeds", lambda seed, n: [seed + i for i in range(n)])
    a, b = seeded_rows(smol_rt, 7), seeded_rows(smol_rt, 8)
    assert set(a) & set(b)
