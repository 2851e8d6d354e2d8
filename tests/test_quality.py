"""Quality delta (issue #11 part 3): perplexity on the shipped text from llama.cpp logits, KL
divergence of a variant to a stored top-k reference, top-1 agreement, refusal of a reference
made with another tokenizer, and the windowed scorer checked against the engine's score() path.

Kept small for a 2-core CI machine: SmolLM2-135M, windows of 64-128 tokens, 512 text tokens."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import QWEN, SMOL

from edgekit.errors import SchemaError, UsageError
from edgekit.quantize import quality
from edgekit.schemas.quant import SourceInfo, VariantCard, card_path_for, load_card

N_CTX, LIMIT = 128, 512  # 4 windows, 63 tokens scored in each


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    path, rep = quality.reference_topk(
        SMOL, tmp_path_factory.mktemp("ref") / "smol.npz", n_ctx=N_CTX, top_k=32, limit_tokens=LIMIT, threads=2
    )
    return path, rep


@pytest.fixture(scope="module")
def q4_0_variant(tmp_path_factory):
    """SmolLM2 Q4_1 requantized to Q4_0 (llama.cpp's own quantizer; under a second): a real, lossy variant."""
    import llama_cpp as ll

    from edgekit.models import resolve

    out = tmp_path_factory.mktemp("variant") / "smol-q4_0.gguf"
    p = ll.llama_model_quantize_default_params()
    p.ftype, p.allow_requantize, p.nthread = ll.LLAMA_FTYPE_MOSTLY_Q4_0, True, 2
    assert ll.llama_model_quantize(str(resolve(SMOL).path).encode(), str(out).encode(), p) == 0
    return out


def test_shipped_text_matches_its_notice():
    notice = (quality.DATA / "NOTICE.md").read_text()
    sha = hashlib.sha256(quality.DEFAULT_TEXT.read_bytes()).hexdigest()
    assert sha in notice and re.search(r"public domain", notice, re.I)
    assert (
        quality.load_text().sha256 == sha and quality.load_text().name == "edgekit/data/texts/us-constitution-1787.txt"
    )


def test_reference_perplexity_is_finite_and_plausible(ref):
    path, rep = ref
    assert rep.n_tokens == (LIMIT // N_CTX) * (N_CTX - 1 - N_CTX // 2) and rep.n_ctx == N_CTX
    assert rep.ppl.method == "measured" and rep.ppl.unit == "ppl" and "scored tokens" in rep.ppl.source
    assert 1.5 < rep.ppl.value < 60, rep.ppl.value  # SmolLM2-135M on 18th-century legal English: ~5-10
    r = quality.load_reference(path)
    assert r.meta["text_sha256"] == quality.load_text().sha256 and r.meta["n_vocab"] == 49152
    assert r.top_ids.shape == (rep.n_tokens, 32) and np.all(np.diff(r.top_logprobs, axis=1) <= 0)
    assert np.all(r.top_logprobs[:, 0] >= r.logprob - 1e-6)  # the actual token is never above the argmax


def test_model_against_its_own_reference_has_zero_kl(ref):
    path, rep = ref
    q = quality.measure_quality(SMOL, path, threads=2)
    assert q.kl_mean.value < 1e-3 and q.kl_p99.value < 1e-3
    assert q.top1_agree.value == 1.0
    assert q.ppl.value == pytest.approx(rep.ppl.value, rel=1e-6)
    assert q.n_tokens == rep.n_tokens and q.reference == SMOL


def test_requantized_variant_diverges_and_its_card_records_it(ref, q4_0_variant):
    path, rep = ref
    card = VariantCard(
        variant_id="smollm2-135m-instruct-q4_0",
        base_model=SMOL,
        format="gguf",
        type="Q4_0",
        path=str(q4_0_variant),
        size_bytes=q4_0_variant.stat().st_size,
        sha256="0" * 64,
        source=SourceInfo(path="smollm2-135m-instruct", quant="Q4_1"),
    )
    card.save(card_path_for(q4_0_variant))
    out = quality.evaluate_variants(path, [q4_0_variant], threads=2)
    q = out[str(q4_0_variant)]
    assert q.kl_mean.value > 0.01 and q.kl_p99.value >= q.kl_mean.value
    assert q.top1_agree.value < 1.0 and q.ppl.value != pytest.approx(rep.ppl.value, rel=1e-3)
    assert q.kl_mean.method == "measured" and "lower bound" in q.kl_mean.note
    saved = load_card(card_path_for(q4_0_variant)).quality
    assert saved is not None and saved.kl_mean.value == q.kl_mean.value and saved.text_sha256 == rep.text_sha256


def test_reference_from_another_tokenizer_is_refused(ref):
    path, _ = ref
    with pytest.raises(UsageError, match="tokenizer mismatch") as e:
        quality.measure_quality(QWEN, path, threads=2)
    assert "\n" not in e.value.one_line()


def test_reference_with_another_text_or_a_broken_file_is_refused(ref, tmp_path):
    path, _ = ref
    other = tmp_path / "other.txt"
    other.write_text("Some other text. " * 200)
    with pytest.raises(UsageError, match="text mismatch"):
        quality.measure_quality(SMOL, path, text=other)
    bad = tmp_path / "bad.npz"
    np.savez(bad, tokens=np.arange(3))
    with pytest.raises(SchemaError, match="not an edgekit quality reference"):
        quality.load_reference(bad)


def test_windowed_logprobs_equal_the_score_path():
    """Property: the windowed batch scorer gives, token for token, what the engine's teacher-forced
    score() gives for the same window (both on one-token batches, so on the same CPU kernels);
    and on many-token batches (the default) the perplexity moves only by kernel rounding."""
    from edgekit.engines.llamacpp import LlamaCppEngine

    L, first = 32, 16
    with LlamaCppEngine(SMOL, n_ctx=L, max_n=1, n_batch=1, threads=2) as e:
        ids = e.tokenize(quality.load_text().text, add_special=True)[: 2 * L]
        r = e.token_logprobs(ids, n_ctx=L, top_k=8, at_ids=np.tile(np.arange(4), (2 * (L - 1 - first), 1)))
        ref = []
        for w in range(2):
            win = ids[w * L : (w + 1) * L]
            ref += e.score(win[: first + 1], win[first + 1 :])
    ref = np.array(ref)
    assert r.windows == 2 and len(r.logprob) == len(ref) == 2 * (L - 1 - first)
    assert np.abs(r.logprob - ref).max() < 1e-4
    assert np.exp(-r.logprob.mean()) == pytest.approx(np.exp(-ref.mean()), rel=1e-3)
    assert np.array_equal(r.top_ids[:, 0], r.argmax) and np.all(r.top_logprobs[:, 0] >= r.logprob - 1e-6)
    lse_top = np.log(np.exp(r.top_logprobs.astype(np.float64)).sum(axis=1))
    assert np.all(lse_top <= 1e-5)  # a top-k never holds more than all the probability
    assert np.all(r.at_logprobs <= 0) and r.at_logprobs.shape == (len(ref), 4)
    with LlamaCppEngine(SMOL, n_ctx=L, max_n=1, n_batch=L, threads=2) as e:
        b = e.token_logprobs(ids, n_ctx=L)
    assert np.exp(-b.logprob.mean()) == pytest.approx(np.exp(-ref.mean()), rel=0.05)


def test_kl_on_topk_plus_tail_is_a_lower_bound_of_the_full_kl():
    rng = np.random.default_rng(0)
    V, k, n = 200, 10, 300
    lp = rng.normal(0, 3, (n, V))
    lq = lp + rng.normal(0, 0.5, (n, V))
    lp -= np.logaddexp.reduce(lp, axis=1, keepdims=True)
    lq -= np.logaddexp.reduce(lq, axis=1, keepdims=True)
    full = (np.exp(lp) * (lp - lq)).sum(axis=1)
    top = np.argsort(-lp, axis=1)[:, :k]
    approx = quality.kl_topk_tail(np.take_along_axis(lp, top, 1), np.take_along_axis(lq, top, 1))
    assert np.all(approx >= 0) and np.all(approx <= full + 1e-9) and approx.mean() > 0.2 * full.mean()
    every = np.argsort(-lp, axis=1)  # k = V: exact
    assert np.allclose(
        quality.kl_topk_tail(np.take_along_axis(lp, every, 1), np.take_along_axis(lq, every, 1)), full, atol=1e-6
    )
    assert np.all(quality.kl_topk_tail(lp[:, :k], lp[:, :k]) == 0)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["bigbench:object_counting", "--perplexity", SMOL], "either a task"),
        (["--perplexity", SMOL, "--make-reference", "--reference", "x.npz"], "exclude each other"),
        ([], "missing the task"),
        (["--quantize", SMOL, "--to", "Q4_0", "--eval", "--eval-tokens", "100"], "at least one window"),
        (["--quantize", SMOL, "--to", "Q4_0", "--eval-tokens", "600"], "--eval-tokens needs --eval"),
    ],
)
def test_perplexity_cli_usage_errors(args, needle):
    cmd = args[1:] if args[:1] == ["--quantize"] else args
    verb = "quantize" if args[:1] == ["--quantize"] else "eval"
    r = subprocess.run(
        [sys.executable, "-m", "edgekit.cli.main", verb, *cmd], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_quantize_eval_stores_quality_in_the_cards(tmp_path):
    """`edgekit quantize SRC --to Q4_0 --eval`: a reference from the source beside the variants, the
    variant's report (KL > 0 against its source) in its card, where the planner reads it."""
    import json
    import os
    import shutil

    from edgekit.models import resolve

    src = resolve(SMOL).path
    home = tmp_path / "home"
    (home / "models" / SMOL).mkdir(parents=True)
    shutil.copy2(src, home / "models" / SMOL / src.name)
    env = {**os.environ, "EDGEKIT_HOME": str(home)}
    env.pop("EDGEKIT_DEBUG", None)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgekit.cli.main",
            "quantize",
            SMOL,
            "--to",
            "Q4_0",
            "--allow-requantize",
            "--eval",
            "--eval-tokens",
            "512",
            "--threads",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (v,) = json.loads(r.stdout)["variants"]
    q = v["card"]["quality"]
    assert q["reference"] == SMOL and q["n_tokens"] == 255 and q["kl_mean"]["value"] > 0.01
    assert q["kl_mean"]["method"] == "measured" and 0 < q["top1_agree"]["value"] < 1
    on_disk = load_card(v["card_path"]).quality
    assert on_disk is not None and on_disk.kl_mean.value == q["kl_mean"]["value"]
    refs = list((home / "models").rglob("*.quality-ref.npz"))
    assert len(refs) == 1 and quality.load_reference(refs[0]).meta["model"] == SMOL
