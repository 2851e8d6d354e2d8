"""The batch loop's sampler (edgekit.engines.llamacpp_sample) against the full-vocabulary chain.

The reference is what edgekit did before: every row's whole logits row through its native chain
with the grammar first in it (here: the full candidate array, the grammar applied to it, then the
chain, on the same array -- what ``llama_sampler_sample`` does inside). Checked on the real
SmolLM2 model: seeded runs give the same tokens and the same log-probabilities (greedy and T>0,
unconstrained, two-option grammar, JSON schema; one request and continuous batching); on a fixed
logit vector, a few thousand T>0 draws follow the expected truncated distribution (chi-square),
with and without a grammar; every constrained sample is valid.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SMOL
from scipy import stats

from edgekit.engines import llamacpp_lse as L
from edgekit.engines import llamacpp_sample as S
from edgekit.engines.llamacpp import LlamaCppEngine
from edgekit.runtime import Runtime
from edgekit.schemas.options import SamplingOptions

YESNO = 'root ::= "yes" | "no"'
SCHEMA = {
    "type": "object",
    "properties": {"action": {"enum": ["move", "grip", "stop"]}, "speed": {"type": "number"}},
    "required": ["action", "speed"],
    "additionalProperties": False,
}
PROMPT = "Should a robot arm stop when a person walks into its workspace? Answer in one word."


@pytest.fixture(scope="module")
def rt():
    r = Runtime(SMOL, n_ctx=2048, max_n=8, threads=2)
    yield r
    r.close()


@pytest.fixture(scope="module")
def rt_sched():
    r = Runtime(LlamaCppEngine(SMOL, n_ctx=2048, max_n=8, threads=2, max_seqs=8))
    yield r
    r.close()


def reference_pick(self, rs, row, top, scores=None):  # BlockSampler.pick's signature
    """The old path: the whole row, grammar first, then the chain, on one array; accept once."""
    self._load(self._ids, row)
    if rs.grammar is not None:
        S.ll.llama_sampler_apply(rs.grammar, self._arr_ref)
    S.ll.llama_sampler_apply(rs.chain, self._arr_ref)
    tok = int(self._cand["id"][self._arr.selected])
    if scores is not None:  # the confidence scores are not what this test compares
        scores[2].append(self.token_scores(rs, row, top, tok, scores[0], scores[1]))
    if rs.grammar is not None:
        S.ll.llama_sampler_accept(rs.grammar, tok)
        rs.key = (rs.key[0], hash((rs.key[1], tok)))
    S.ll.llama_sampler_accept(rs.chain, tok)
    return tok


CASES = [
    dict(n=1, max_tokens=24),  # greedy
    dict(n=6, temperature=0.8, max_tokens=24),
    dict(n=4, temperature=1.2, top_k=0, top_p=0.9, min_p=0.0, max_tokens=16),
    dict(n=4, temperature=1.0, top_k=40, top_p=0.9, min_p=0.0, max_tokens=16),  # top-k without min-p
    dict(n=6, temperature=0.8, grammar=YESNO),
    dict(n=1, grammar=YESNO),
    dict(n=6, temperature=0.8, json_schema=SCHEMA, max_tokens=40),
    dict(n=2, temperature=0.0, json_schema=SCHEMA, max_tokens=40),
]


def run(r: Runtime, case: dict, seed: int):
    res = r.generate(PROMPT, seed=seed, aggregate="none", extractor=None, **case)
    return [(s.token_ids, s.logprobs, s.text) for s in sorted(res.samples, key=lambda s: s.index)]


@pytest.mark.parametrize("which", ["rt", "rt_sched"])
def test_seeded_runs_equal_the_full_vocabulary_chain(which, request, monkeypatch):
    r = request.getfixturevalue(which)
    counts = r.engine._core.sampling.counts
    before = dict(counts)
    fast = {i: run(r, c, 11 + i) for i, c in enumerate(CASES)}
    used = {k: counts[k] - before[k] for k in counts}
    monkeypatch.setattr(S.BlockSampler, "pick", reference_pick)
    for i, c in enumerate(CASES):
        assert fast[i] == run(r, c, 11 + i), c  # same tokens, same logprobs, same text
    assert used["band"] > 0 and used["argmax"] > 0  # the fast paths ran (the comparison means something)
    assert used["grammar_full"] < used["grammar_checks"] / 2  # the grammar mostly saw a band, not the vocabulary


def test_constrained_samples_are_valid(rt):
    for seed in range(3):
        res = rt.generate(
            PROMPT, n=8, temperature=1.0, seed=seed, aggregate="none", extractor=None, json_schema=SCHEMA, max_tokens=48
        )
        for s in res.samples:
            if s.finish_reason == "stop":
                obj = json.loads(s.text)
                assert obj["action"] in ("move", "grip", "stop") and isinstance(obj["speed"], (int, float))
        res = rt.generate(
            PROMPT, n=8, temperature=1.5, seed=seed, aggregate="none", extractor=None, grammar=YESNO, max_tokens=8
        )
        assert {s.text for s in res.samples} <= {"yes", "no"}


def expected_probs(logits: np.ndarray, o: SamplingOptions, valid: np.ndarray) -> np.ndarray:
    """top-k -> top-p -> min-p -> temperature over the valid tokens, in float64 (the chain's definition)."""
    ids = np.flatnonzero(valid)
    ids = ids[np.argsort(-logits[ids], kind="stable")][: o.top_k or None]
    lg = logits[ids].astype(np.float64)
    p = np.exp(lg - lg.max())
    p /= p.sum()
    keep = int(np.searchsorted(np.cumsum(p), o.top_p)) + 1 if o.top_p < 1 else len(ids)
    ids, lg = ids[:keep], lg[:keep]
    m = lg >= lg.max() + np.log(o.min_p) if o.min_p > 0 else np.ones(len(ids), bool)
    ids, lg = ids[m], lg[m]
    q = np.exp((lg - lg.max()) / o.effective_temperature)
    out = np.zeros(len(logits))
    out[ids] = q / q.sum()
    return out


@pytest.mark.parametrize("grammar", [None, 'root ::= [a-e]+ " " [a-z]*'])
def test_t_above_zero_follows_the_truncated_distribution(rt, grammar):
    dec = rt.engine._core
    nv = dec._n_vocab
    rng = np.random.default_rng(5)
    logits = (rng.standard_normal(nv) * 2.0).astype(np.float32)
    hot = rng.choice(nv, 60, replace=False)
    logits[hot] += np.linspace(9.0, 6.0, 60, dtype=np.float32)  # a top that the band holds
    o = SamplingOptions(n=2, temperature=0.8, top_k=40, top_p=0.95, min_p=0.01)
    smp = S.BlockSampler(nv)
    probe = S.RowSampler(dec._vocab, o, 1, grammar)
    valid = np.ones(nv, bool)
    if grammar is not None:
        v = smp._valid(probe.grammar, smp._ids, logits)
        valid[:] = False
        valid[v] = True
        logits[v[:30]] += 8.5  # some valid tokens near the top
    probe.free()
    want = expected_probs(logits, o, valid)
    draws = 3000
    rs = S.RowSampler(dec._vocab, o, 1234, grammar)
    top = float(logits.max())
    got = np.bincount([smp._pick(rs, logits, top) for _ in range(draws)], minlength=nv)  # the grammar does not advance
    rs.free()
    assert smp.counts["band"] == draws and smp.counts["full"] == 0
    assert got[want == 0].sum() == 0  # nothing outside the support (nor an invalid token)
    sup = np.flatnonzero(want)
    assert len(sup) >= 5
    chi = stats.chisquare(got[sup], want[sup] * draws)
    assert chi.pvalue > 1e-3, (chi, len(sup))


def test_a_truncated_schema_sample_is_no_value(rt):
    """aggregate none answers with the first sample's text; cut off by max_tokens it is not JSON:
    no value and a flag, not a JSONDecodeError (found when a seed change truncated one)."""
    res = rt.generate(
        PROMPT, n=2, temperature=0.8, seed=3, aggregate="none", extractor=None, json_schema=SCHEMA, max_tokens=6
    )
    assert res.answer is not None and res.value is None
    assert any(f.startswith("budget:") for f in res.flags)
    ok = rt.generate(PROMPT, n=1, seed=3, aggregate="none", extractor=None, json_schema=SCHEMA, max_tokens=60)
    assert ok.value is not None and ok.value["action"] in ("move", "grip", "stop")  # a valid one still is


def test_min_p_decides_a_band_shorter_than_top_k(rt):
    """A peaked row (three tokens within 8 nats of the top, top-k 40): min-p's floor, not k
    tokens, makes the band decide -- seeded draws equal the full-vocabulary chain's, and the
    whole vocabulary is never loaded."""
    dec = rt.engine._core
    nv = dec._n_vocab
    rng = np.random.default_rng(5)
    logits = (rng.standard_normal(nv) * 2 - 20).astype(np.float32)  # nothing else within 16 nats
    logits[[17, 4242, 40000]] = [12.0, 11.2, 8.5]
    o = SamplingOptions(temperature=0.9, top_k=40, top_p=0.95, min_p=0.05)
    smp = S.BlockSampler(nv)
    fast, ref = S.RowSampler(dec._vocab, o, 99, None), S.RowSampler(dec._vocab, o, 99, None)
    top = float(logits.max())
    got = [smp._pick(fast, logits, top) for _ in range(200)]
    assert smp.counts["band"] == 200 and smp.counts["full"] == 0
    want = []
    for _ in range(200):
        smp._load(smp._ids, logits)
        S.ll.llama_sampler_apply(ref.chain, smp._arr_ref)
        want.append(int(smp._cand["id"][smp._arr.selected]))
    fast.free()
    ref.free()
    assert got == want and set(got) == {17, 4242}  # 8.5 is below min-p's floor (12 - 3.0)


def brute_allowed_scores(smp, rs, row, tok, k):
    """The grammar's verdict over the whole vocabulary, then the renormalised scores exactly."""
    v = smp._valid(rs.grammar, smp._ids, row)
    if len(v) <= 1:
        return None, None
    lv = row[v].astype(np.float64)
    lse_v = lv.max() + np.log(np.exp(lv - lv.max()).sum())
    top_v = np.sort(lv)[::-1][:k]
    return float(row[tok] - lse_v), -(float(top_v.mean()) - lse_v)


@pytest.mark.parametrize("far", [False, True])
def test_grammar_scores_match_the_whole_vocabulary(rt, far, monkeypatch):
    """Renormalised log-probability and token confidence under a grammar, from the band near the top
    (the row's mass shows the rest cannot matter) or, when the chosen token is far under the top, from
    the band below it: within 1e-3 nats of the exact values over every allowed token."""
    dec = rt.engine._core
    nv = dec._n_vocab
    smp = S.BlockSampler(nv)
    rs = S.RowSampler(dec._vocab, SamplingOptions(temperature=0.8), 1, YESNO)
    below = []
    orig = S.BlockSampler._allowed_below
    monkeypatch.setattr(S.BlockSampler, "_allowed_below", lambda self, *a: below.append(1) or orig(self, *a))
    rng = np.random.default_rng(11)
    yes, no = dec.tokenize("yes", add_special=False)[0], dec.tokenize("no", add_special=False)[0]
    checked = 0
    for trial in range(6):
        row = (rng.standard_normal(nv) * 2 - 20).astype(np.float32)
        if far:  # tokens the grammar refuses hold the top; the allowed words sit 13-14 nats under it
            row[rng.choice(nv, 5, replace=False)] = 12.0
            row[[yes, no]] = [-1.0 - trial * 0.1, -2.0]
        else:
            row[[yes, no]] = [12.0, 11.0 - trial]
        top = float(row.max())
        m = np.array([top], np.float32)
        lse = float(smp.lse(row[None, :], m)[0])
        near = np.flatnonzero(row >= top - S.NEAR).astype(np.int32)
        for tok in (yes, no):
            got = smp.token_scores(rs, row, top, tok, lse, 2, near)  # k=2: "yes" and "no" can fill it
            want = brute_allowed_scores(smp, rs, row, tok, 2)
            assert (got[0] is None) == (want[0] is None)
            if want[0] is not None:
                assert abs(got[0] - want[0]) < 1e-3 and abs(got[1] - want[1]) < 1e-3, (got, want)
                checked += 1
    rs.free()
    assert checked >= 6
    assert bool(below) == far  # the near band decided every peaked row, and none of the far ones


def test_logprobs_are_the_old_values(rt, monkeypatch):
    """The log-sum-exp behind every recorded log-probability: ggml's vectorised softmax kernel (the
    loaded llama.cpp's own) where it is usable, within float32 precision of a float64 reference and
    of the old numpy formula; the numpy fallback is that formula bit for bit."""
    rng = np.random.default_rng(3)
    block = (rng.standard_normal((5, rt.engine._core._n_vocab)) * 4).astype(np.float32)
    smp = S.BlockSampler(block.shape[1])
    assert smp._lse.impl.startswith("ggml"), smp._lse.impl  # Linux/macOS with llama-cpp-python's own libraries
    new = smp.lse(block, block.max(axis=1))
    m = block.max(axis=1, keepdims=True)  # the batch loop's old formula
    old_block = (m + np.log(np.exp(block - m).sum(axis=1, keepdims=True)))[:, 0]
    b64 = block.astype(np.float64)
    exact = b64.max(axis=1) + np.log(np.exp(b64 - b64.max(axis=1, keepdims=True)).sum(axis=1))
    assert new.dtype == np.float32 and np.allclose(new, exact, rtol=0, atol=1e-5), new - exact
    assert np.allclose(new, old_block, rtol=0, atol=2e-5)
    monkeypatch.setenv("EDGEKIT_LSE", "numpy")  # the fallback
    fallback = L.RowLse(block.shape[1])
    assert fallback.impl == "numpy"
    old = fallback(block, block.max(axis=1))
    assert np.array_equal(old, old_block)
    for i, row in enumerate(block):  # the scheduler's old per-row formula
        mi = row.max()
        assert old[i] == mi + np.log(np.exp(row - mi).sum())


def test_a_wrong_softmax_kernel_is_not_used(monkeypatch):
    """The ggml kernel is checked before use: one that returns a wrong sum (a changed signature, a
    broken build) is refused, and EDGEKIT_LSE=numpy forces numpy."""
    real = L._loaded_kernel()
    assert real is not None and L._checked(real)
    assert not L._checked(lambda n, y, x, m: real(n, y, x, m) * 1.001)
    assert not L._checked(lambda n, y, x, m: real(n, y, x, m + 1.0))  # another maximum: e^-1 of the sum
    monkeypatch.setattr(L, "_loaded_kernel", lambda: lambda n, y, x, m: 1.0)
    assert L.RowLse(100).impl == "numpy"
    monkeypatch.setenv("EDGEKIT_LSE", "numpy")
    monkeypatch.setattr(L, "_loaded_kernel", lambda: real)
    assert L.RowLse(100).impl == "numpy"


def test_band_decides_only_when_the_cut_cannot_move():
    lv = np.array([5.0, 4.0, 3.0], np.float32)
    assert S.band_decides(lv, 1.0, 10, top_k=3, top_p=0.95, min_p=0.05)  # k tokens above the floor
    assert not S.band_decides(lv, 1.0, 10, top_k=40, top_p=1.0, min_p=0.0)  # everything below may be kept
    assert S.band_decides(lv, -10.0, 10, top_k=40, top_p=0.9, min_p=0.0)  # mass below the floor is negligible
    assert not S.band_decides(lv, 2.9, 37, top_k=40, top_p=0.99, min_p=0.0)  # it is not: the cut may move
    assert S.band_decides(lv, 1.9, 37, top_k=40, top_p=0.99, min_p=0.05)  # min-p cuts at 5 - 3.0 first
    assert not S.band_decides(np.array([], np.float32), 0.0, 10, top_k=40, top_p=0.9, min_p=0.05)
