"""The ONNX path: SmolLM2-135M's GGUF -> transformers -> optimum ONNX (KV cache) -> dynamic int8,
then the ``onnx`` engine behind the engines contract (Runtime, n samples batched, logprobs,
timings), ``edgekit eval --engine onnx``, ``edgekit profile --engine onnx``, and the tokenizer check.

One export per session (about 1.5 min on a 2-core VM); needs the ``onnx`` extra (``.ci/run``
installs it and checks that it imports, so these tests run in CI rather than skip).
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from conftest import QWEN, SMOL

from edgekit.engines.onnx import find_folder, log_softmax_at, sample
from edgekit.errors import ModelNotFound, UsageError
from edgekit.models.folder_hash import folder_sha256
from edgekit.schemas.options import SamplingOptions

TEXT = (
    "The sun rises in the east and sets in the west. Water boils at one hundred degrees Celsius at sea level. "
    "A week has seven days, and a year has twelve months. Cats and dogs are common household pets. "
    "The capital of France is Paris, and the capital of Italy is Rome."
)
Q = "What is 3 + 4? Answer with a number."


# -- numpy sampling: no onnxruntime needed ------------------------------------------------------
def test_sampling_greedy_topk_and_seeds():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=1000).astype(np.float32)
    top = int(np.argmax(logits))
    assert sample(logits, SamplingOptions.build(temperature=0), rng) == top
    assert sample(logits, SamplingOptions.build(temperature=1.0, top_k=1), rng) == top
    o = SamplingOptions.build(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    a = [sample(logits, o, np.random.default_rng(7)) for _ in range(3)]
    assert len(set(a)) == 1  # same seed, same draw
    draws = {sample(logits, o, np.random.default_rng(s)) for s in range(50)}
    assert len(draws) > 10  # the full distribution is sampled
    o5 = SamplingOptions.build(temperature=1.0, top_k=5, top_p=1.0, min_p=0.0)
    top5 = set(np.argsort(-logits)[:5].tolist())
    assert {sample(logits, o5, np.random.default_rng(s)) for s in range(50)} <= top5
    lp = log_softmax_at(logits[None].astype(np.float64), np.array([top]))[0]
    assert lp < 0 and math.isclose(
        np.exp(lp), np.exp(logits[top]) / np.exp(logits.astype(np.float64)).sum(), rel_tol=1e-6
    )


def test_unknown_folder_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path / "home"))
    with pytest.raises(ModelNotFound) as e:
        find_folder("no-such-model")
    assert "edgekit quantize no-such-model --to onnx-int8" in e.value.one_line() and "\n" not in e.value.one_line()


def test_folder_hash_covers_external_data(tmp_path):
    from edgekit.models.folder_hash import onnx_files

    for name in ("model.onnx", "model.onnx.data", "model.onnx_data", "tokenizer.json", "config.json"):
        (tmp_path / name).write_bytes(name.encode())
    assert [p.name for p in onnx_files(tmp_path)] == ["model.onnx", "model.onnx.data", "model.onnx_data"]
    before = folder_sha256(tmp_path)
    (tmp_path / "model.onnx.data").write_bytes(b"changed")
    assert folder_sha256(tmp_path) != before


# -- the real path --------------------------------------------------------------------------------
def _need_extra():
    for mod in ("onnxruntime", "optimum.exporters.onnx", "transformers", "torch", "gguf"):
        pytest.importorskip(mod, reason="install the onnx extra: pip install -e '.[onnx]' (see .ci/run)")


@pytest.fixture(scope="session")
def onnx_card(tmp_path_factory):
    _need_extra()
    from edgekit.quantize.onnx_export import export_onnx_int8

    out = tmp_path_factory.mktemp("onnx") / f"{SMOL}-onnx-int8"
    t0 = time.perf_counter()
    card = export_onnx_int8(SMOL, out)
    print(
        f"\nonnx export of {SMOL}: {time.perf_counter() - t0:.1f} s (load {card.params['load_s']} s, "
        f"export {card.params['export_s']} s, int8 {card.params['quantize_s']} s)"
    )
    return card


@pytest.fixture(scope="session")
def onnx_rt(onnx_card):
    from edgekit.runtime import Runtime

    rt = Runtime(onnx_card.path, engine="onnx", threads=2, max_n=8)
    yield rt
    rt.close()


@pytest.mark.slow
def test_export_writes_folder_and_card(onnx_card, smol_path):
    from pathlib import Path

    from edgekit.models.store import sha256_file
    from edgekit.schemas.quant import card_path_for, load_card

    folder = Path(onnx_card.path)
    assert (folder / "model.onnx").is_file() and (folder / "tokenizer.json").is_file()
    assert not (folder / "fp32").exists() and not list(folder.parent.glob(".*partial*"))
    card = load_card(card_path_for(folder))
    assert card == onnx_card
    assert (card.format, card.type, card.variant_id) == ("onnx", "onnx-int8", f"{SMOL}-onnx-int8")
    assert card.sha256 == folder_sha256(folder)
    assert card.source.sha256 == sha256_file(smol_path) and card.source.quant == "Q4_1" and card.source.model_id == SMOL
    assert {"onnxruntime", "optimum", "transformers", "torch"} <= set(card.tools)
    assert card.params["float32_matmuls"]["count"] == 30  # SmolLM2's 30 MLP down projections
    tok_cfg = json.loads((folder / "tokenizer_config.json").read_text())
    assert tok_cfg["add_bos_token"] is False and tok_cfg["eos_token"] == "<|im_end|>"  # set from the GGUF


@pytest.mark.slow
def test_generate_round_trip(onnx_rt):
    eng = onnx_rt.engine
    assert eng.name == "onnx" and eng.capabilities.batched_n and eng.capabilities.logprobs
    assert eng.model_info.quant == "onnx-int8" and eng.model_info.n_layer == 30
    r = onnx_rt.generate(Q, max_tokens=24)
    s = r.samples[0]
    assert r.engine == "onnx" and s.text.strip() and s.finish_reason in ("stop", "budget")
    assert len(s.token_ids) == s.tokens == len(s.logprobs) and all(lp <= 0 for lp in s.logprobs)
    t = r.timings
    assert t.prompt_tokens > 10 and t.prefill_s > 0 and t.decode_s > 0 and t.generated_tokens == s.tokens
    again = onnx_rt.generate(Q, max_tokens=24)
    assert again.samples[0].token_ids == s.token_ids  # greedy is deterministic
    assert eng.detokenize(s.token_ids).startswith(s.text.rstrip()[:10])


@pytest.mark.slow
def test_int8_close_to_the_gguf(onnx_rt, smol_rt):
    """Same tokenizer as llama.cpp; int8 perplexity on a short text within 1.5x of the Q4_1 GGUF's
    (the model it was dequantized from; measured about 1.1x)."""
    ids = smol_rt.engine.tokenize(TEXT, add_special=False)
    assert onnx_rt.engine.tokenize(TEXT, add_special=False) == ids
    ppl = lambda lps: math.exp(-sum(lps) / len(lps))
    ref = ppl(smol_rt.engine.score(ids[:1], ids[1:]))
    got = ppl(onnx_rt.engine.score(ids[:1], ids[1:]))
    print(f"\nppl on {len(ids) - 1} tokens: Q4_1 GGUF {ref:.2f}, onnx int8 {got:.2f}")
    assert 1 / 1.5 < got / ref < 1.5
    # the chat prompt is the same token sequence in both engines
    o = SamplingOptions.build()
    msgs = [{"role": "user", "content": Q}]
    assert onnx_rt.engine.prompt_ids(msgs, o) == smol_rt.engine.prompt_ids(msgs, o)


@pytest.mark.slow
def test_n4_batched_samples(onnx_rt):
    r = onnx_rt.generate(Q, n=4, max_tokens=32, seed=0)
    assert len(r.samples) == 4 and r.n == 4 and r.temperature == 0.8
    assert all(s.tokens >= 1 and len(s.logprobs) == s.tokens for s in r.samples)
    assert r.timings.steps == max(s.tokens for s in r.samples)
    again = onnx_rt.generate(Q, n=4, max_tokens=32, seed=0)
    assert [s.token_ids for s in again.samples] == [s.token_ids for s in r.samples]  # seeded
    assert len({tuple(s.token_ids) for s in r.samples}) > 1  # four streams, not one copied
    # a stop string and the budget rule
    c = onnx_rt.generate("Count: 1, 2, 3,", chat=False, max_tokens=30, stop=["6"], aggregate="none", extractor=None)
    assert c.samples[0].finish_reason == "stop" and "6" not in c.samples[0].text and c.samples[0].text.strip()
    b = onnx_rt.generate("Count: 1, 2, 3,", chat=False, max_tokens=3, aggregate="none", extractor=None)
    assert b.samples[0].finish_reason == "budget" and b.samples[0].tokens == 3


@pytest.mark.slow
def test_fixed_batch_graph_decodes_samples_one_after_another(onnx_rt, monkeypatch):
    """A graph whose batch axis is fixed at 1 (not what optimum exports): the n samples share the
    prompt's KV and decode sequentially; the capability says so."""
    eng = onnx_rt.engine
    monkeypatch.setattr(eng, "batched", False)
    r = onnx_rt.generate(Q, n=3, max_tokens=16, seed=1)
    assert len(r.samples) == 3 and all(s.tokens >= 1 and len(s.logprobs) == s.tokens for s in r.samples)
    again = onnx_rt.generate(Q, n=3, max_tokens=16, seed=1)
    assert [s.token_ids for s in again.samples] == [s.token_ids for s in r.samples]


@pytest.mark.slow
def test_unsupported_requests_refused_before_work(onnx_rt):
    calls = onnx_rt.calls
    with pytest.raises(UsageError, match="cannot enforce a JSON schema"):
        onnx_rt.generate(Q, json_schema={"type": "integer"})
    with pytest.raises(UsageError, match="max_n"):
        onnx_rt.generate(Q, n=9)
    assert onnx_rt.calls == calls


@pytest.mark.slow
def test_tokenizer_mismatch_is_one_line(tmp_path):
    """Qwen's tokenizer with SmolLM2's GGUF: refused before any export work, nothing written."""
    _need_extra()
    from edgekit.models import resolve
    from edgekit.quantize.onnx_export import TokenizerMismatch, export_onnx_int8

    out = tmp_path / "bad"
    with pytest.raises(TokenizerMismatch) as e:
        export_onnx_int8(SMOL, out, tokenizer=resolve(QWEN).path)
    line = e.value.one_line()
    assert line.startswith("tokenizer mismatch:") and "\n" not in line and "fix:" in line
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.slow
def test_eval_engine_onnx(onnx_card, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from edgekit.schemas.table import load_table

    out = tmp_path / "t.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgekit.cli.main",
            "eval",
            "bigbench:object_counting",
            "--engine",
            "onnx",
            "-m",
            onnx_card.path,
            "--limit",
            "2",
            "--n",
            "2",
            "--max-tokens",
            "48",
            "--template",
            "terse",
            "--threads",
            "2",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert r.returncode == 0, r.stderr[-2000:]
    t = load_table(out)
    assert t.n_problems == 2 and t.n_samples == 2 and t.model_id == onnx_card.variant_id and t.quant == "onnx-int8"
    assert all(len(p.samples) == 2 for p in t.problems)


@pytest.mark.slow
def test_profile_engine_onnx(onnx_card, tmp_path):
    from edgekit.profile.sweep import SweepConfig, profile_model

    cfg = SweepConfig(
        prompt_lengths=[16, 64],
        contexts=[0],
        ns=[1, 2],
        decode_steps=4,
        reps=1,
        load_reps=1,
        idle_s=0.1,
        threads=2,
        engine="onnx",
    )
    prof = profile_model(onnx_card.path, cfg, output=tmp_path / "p.json")
    mp = prof.complete_models()[-1]
    assert mp.model.id == onnx_card.variant_id and mp.model.quant == "onnx-int8" and mp.kv_layout == "per-sequence"
    assert {p.prompt_tokens for p in mp.prefill} == {16, 64}
    assert {d.n for d in mp.decode} >= {1, 2}


def _variant_in_cache(onnx_card, tmp_path, monkeypatch, params: dict):
    """A private EDGEKIT_HOME holding SmolLM2's GGUF and a copy of the exported folder in the variants cache,
    its card with ``params``; the export replaced by a recorder (it is tested above). Returns (card, folder, calls)."""
    import shutil

    import edgekit.quantize.onnx_export as ox
    from edgekit.models import resolve
    from edgekit.schemas.quant import card_path_for, load_card

    src = resolve(SMOL).path
    home = tmp_path / "home"
    (home / "models" / SMOL).mkdir(parents=True)
    shutil.copy2(src, home / "models" / SMOL / src.name)
    monkeypatch.setenv("EDGEKIT_HOME", str(home))
    dest = ox.variant_folder(SMOL)
    shutil.copytree(onnx_card.path, dest)
    card = onnx_card.model_copy(update={"path": str(dest), "params": params})
    card.save(card_path_for(dest))
    calls = []
    monkeypatch.setattr(ox, "export_onnx_int8", lambda *a, **k: calls.append((a, k)) or load_card(card_path_for(dest)))
    return card, dest, calls


@pytest.mark.slow
def test_quantize_to_onnx_int8_reuses_a_verified_folder_and_models_list_checks_it(onnx_card, tmp_path, monkeypatch):
    """`edgekit quantize SMOL --to onnx-int8` dispatches through the ladder's format registry: a folder in
    the variants cache whose card matches this source and whose files hash to the card is reused, not
    re-exported; `models list` shows it; a flipped byte in its graph makes `models verify` say corrupt and
    the next quantize re-export it (the export is replaced by a recorder here: it is tested above)."""
    from pathlib import Path

    from edgekit.models.variants import check_variant, variant_rows
    from edgekit.quantize import quantize

    card, dest, calls = _variant_in_cache(onnx_card, tmp_path, monkeypatch, onnx_card.params)
    (r,) = quantize(SMOL, "onnx-int8")
    assert r.action == "exists" and calls == [] and Path(r.path) == dest
    row = next(x for x in variant_rows() if x["format"] == "onnx")
    assert row["id"] == card.variant_id and row["status"] in ("verified", "unverified")
    assert check_variant(card, "full", raise_corrupt=False).status == "verified"

    graph = next(p for p in sorted(dest.iterdir()) if p.suffix == ".onnx")
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    assert check_variant(card, "full", raise_corrupt=False).status == "corrupt"
    (r2,) = quantize(SMOL, "onnx-int8")
    assert r2.action == "remade" and len(calls) == 1


@pytest.mark.slow
def test_a_same_size_edit_after_export_is_refused_on_load(onnx_card, tmp_path):
    """Wrong-as-good: a graph file damaged in place keeps its size; the load sees it is newer than its
    card, re-hashes, and refuses it instead of running the damaged model."""
    import shutil

    from edgekit.errors import ChecksumMismatch
    from edgekit.runtime import Runtime
    from edgekit.schemas.quant import card_path_for

    dest = tmp_path / "copy-onnx-int8"
    shutil.copytree(onnx_card.path, dest)  # copy2: file times kept, older than the card saved next
    onnx_card.model_copy(update={"path": str(dest)}).save(card_path_for(dest))
    graph = next(p for p in sorted(dest.iterdir()) if p.suffix == ".onnx")
    data = bytearray(graph.read_bytes())
    data[len(data) // 3] ^= 0x01
    time.sleep(0.01)
    graph.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch, match="sha256 differs"):
        Runtime(str(dest), engine="onnx", threads=2)


# -- int8 weights vs the CPU's int8 kernels ---------------------------------------------------------
FIX = __import__("pathlib").Path(__file__).parent / "fixtures"


def _vnni_copy(tmp_path):
    """The recorded EPYC cpuinfo with ``avx512_vnni`` added to its flags: a CPU whose int8 kernels
    accumulate in int32 (Ice Lake and later Xeons, Zen 4)."""
    text = (FIX / "cpuinfo" / "amd-epyc-avx2" / "cpuinfo").read_text()
    (tmp_path / "cpuinfo").write_text(text.replace(" avx2 ", " avx2 avx512f avx512_vnni ", 1))
    return tmp_path


def test_which_cpus_overflow_full_range_int8(tmp_path):
    from edgekit.host.cpu import int8_u8s8_saturates, isa_flags

    assert int8_u8s8_saturates(isa_flags(FIX / "cpuinfo" / "amd-epyc-avx2"))  # AVX2, no VNNI (recorded)
    assert not int8_u8s8_saturates(isa_flags(_vnni_copy(tmp_path)))
    assert not int8_u8s8_saturates(isa_flags(FIX / "sysfs" / "orin_jp6" / "proc"))  # ARM: sdot kernels
    assert not int8_u8s8_saturates({})  # unknown: no claim


@pytest.mark.slow
def test_a_full_range_int8_variant_is_refused_where_it_would_be_garbage(onnx_card, tmp_path):
    """Found in CI on an AVX2-only AMD EPYC: an int8 export with full-range weights loads and answers
    there with perplexity 3146 (12.9 for the GGUF it came from). Exports now use 7-bit weights and say
    so in the card; a card without that (an older export) is refused on such a CPU, with the remake
    command, and accepted where the kernels cannot overflow."""
    from edgekit.engines.onnx import _check_int8_range
    from edgekit.errors import BackendError

    assert onnx_card.params["reduce_range"] is True
    old = onnx_card.model_copy(update={"params": {k: v for k, v in onnx_card.params.items() if k != "reduce_range"}})
    epyc = FIX / "cpuinfo" / "amd-epyc-avx2"
    with pytest.raises(BackendError) as e:
        _check_int8_range(old, onnx_card.path, procfs_root=epyc)
    line = e.value.one_line()
    assert "garbage" in line and f"edgekit quantize {SMOL} --to onnx-int8 --force" in line and "\n" not in line
    _check_int8_range(onnx_card, onnx_card.path, procfs_root=epyc)  # 7-bit weights: fine everywhere
    _check_int8_range(old, onnx_card.path, procfs_root=_vnni_copy(tmp_path))  # VNNI: no overflow


@pytest.mark.slow
def test_quantize_remakes_a_full_range_int8_variant(onnx_card, tmp_path, monkeypatch):
    from edgekit.quantize import quantize

    params = {k: v for k, v in onnx_card.params.items() if k != "reduce_range"}
    _, _, calls = _variant_in_cache(onnx_card, tmp_path, monkeypatch, params)
    (r,) = quantize(SMOL, "onnx-int8")
    assert r.action == "remade" and len(calls) == 1
