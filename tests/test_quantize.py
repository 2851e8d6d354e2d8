"""edgekit quantize: the GGUF ladder, the F16 reference, the variant registry, and bad input.

One module-scoped cache (a tmp EDGEKIT_HOME holding a copy of smollm2, the smallest catalogue
model) is shared by every test: the F16 reference (~270 MB, ~4 s) and its Q8_0 / Q4_K_M variants
(~1-2 s each) are made once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgekit.errors import EdgekitError, GGUFError, ModelNotFound, UsageError

SMOL = "smollm2-135m-instruct"
F16 = f"{SMOL}-f16"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    from edgekit.models import resolve

    src = resolve(SMOL).path  # the real cache (pulled once if missing)
    h = tmp_path_factory.mktemp("qhome")
    d = h / "models" / SMOL
    d.mkdir(parents=True)
    shutil.copy2(src, d / src.name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEKIT_HOME", str(h))
        mp.delenv("EDGEKIT_FREE_BYTES", raising=False)
        yield h


@pytest.fixture(scope="module")
def ref(home):
    from edgekit.quantize import dequantize

    return dequantize(SMOL)


@pytest.fixture(scope="module")
def ladder(ref):
    from edgekit.quantize import quantize

    return {r.type: r for r in quantize(ref.variant_id, "Q8_0,q4_k_m", threads=2)}


def cli(*args, env=None, **kw):
    e = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "edgekit.cli.main", *args],
        capture_output=True,
        text=True,
        env=e,
        cwd=ROOT,
        timeout=300,
        **kw,
    )


def one_error_line(p, needle):
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, p.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "(fix: " in lines[0], p.stderr
    assert needle in lines[0], lines[0]
    assert "Traceback" not in p.stderr


# -- the F16 reference ---------------------------------------------------------------------------
def test_dequantized_reference_card_and_metadata(ref):
    from edgekit.models import read_gguf
    from edgekit.models.integrity import sha256_file

    card = ref.card
    assert ref.variant_id == F16 and card.type == "F16" and card.base_model == SMOL
    assert card.source.dequantized_from == "Q4_1" and card.source.model_id == SMOL
    assert "reference is a dequantized Q4_1 model; absolute quality is relative to it" in card.notes
    assert card.sha256 == sha256_file(ref.path) and card.size_bytes == ref.path.stat().st_size
    assert card.tools["gguf"] and card.tools["llama-cpp-python"]
    info, src = read_gguf(ref.path), read_gguf(card.source.path)
    assert info.quant == "F16" and set(info.extra["tensor_types"]) <= {0, 1}  # F32 norms kept, the rest F16
    assert info.extra["tensor_types"][0] == src.extra["tensor_types"][0]  # every F32 tensor stayed F32
    assert info.extra["n_elements"] == src.extra["n_elements"]
    for k in ("tokenizer.ggml.model", "tokenizer.chat_template", "llama.block_count", "general.name"):
        assert info.get(k) == src.get(k), k


def test_reference_predicts_like_its_source(ref):
    """Same weights up to F16 rounding: teacher-forced next-token predictions agree with the Q4_1 source
    (llama.cpp's Q4_1 kernels also round the activations to 8 bits, so not bit-identical)."""
    import llama_cpp
    import numpy as np
    from safe_llama import patch_defaults

    text = (
        "The quick brown fox jumps over the lazy dog. Paris is the capital of France, and Berlin is the "
        "capital of Germany. Water boils at 100 degrees Celsius at sea level."
    )
    logits = []
    for path in (ref.card.source.path, str(ref.path)):
        patch_defaults(path)  # the kernel configuration edgekit's probe found safe on this CPU
        m = llama_cpp.Llama(path, n_ctx=256, logits_all=True, verbose=False, n_threads=2)
        toks = m.tokenize(text.encode())
        m.eval(toks)
        logits.append(np.array(m.scores[: len(toks)]))
        m.close()
    a, b = logits
    la = a - np.log(np.exp(a - a.max(-1, keepdims=True)).sum(-1, keepdims=True)) - a.max(-1, keepdims=True)
    lb = b - np.log(np.exp(b - b.max(-1, keepdims=True)).sum(-1, keepdims=True)) - b.max(-1, keepdims=True)
    kl = (np.exp(la) * (la - lb)).sum(-1)
    assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.9
    assert kl.mean() < 0.05


# -- the ladder ------------------------------------------------------------------------------------
def test_variants_load_and_generate(ladder):
    from edgekit.runtime import Runtime

    for t in ("Q8_0", "Q4_K_M"):
        r = ladder[t]
        assert r.action == "made" and r.path.name == f"{SMOL}-{t}.gguf"
        with Runtime(r.variant_id, n_ctx=256, max_n=1, threads=2) as rt:
            out = rt.generate("What is the capital of France?", n=1, max_tokens=12, seed=0)
        assert out.samples[0].text.strip(), t


def test_variant_cards_checksums_and_lineage(ladder, ref):
    from edgekit.models import read_gguf
    from edgekit.models.integrity import sha256_file
    from edgekit.schemas.quant import card_path_for, load_card

    for t, r in ladder.items():
        card = load_card(card_path_for(r.path))
        assert card == r.card and card.type == t and card.variant_id == f"{SMOL}-{t.lower()}"
        assert card.sha256 == sha256_file(r.path) and card.size_bytes == r.path.stat().st_size
        assert card.source.sha256 == ref.card.sha256 and card.source.quant == "F16"
        assert card.source.model_id == F16 and card.source.dequantized_from == "Q4_1"
        assert card.params["threads"] == 2 and card.params["allow_requantize"] is False
        assert card.tools["llama-cpp-python"]
        assert any("dequantized Q4_1" in n for n in card.notes)
        assert read_gguf(r.path).quant == t


def test_models_list_path_and_run_show_variants(ladder, home):
    p = cli("models", "list", "--json")
    assert p.returncode == 0, p.stderr
    rows = {v["id"]: v for v in json.loads(p.stdout)["variants"]}
    assert {F16, f"{SMOL}-q8_0", f"{SMOL}-q4_k_m"} <= set(rows)
    q8 = rows[f"{SMOL}-q8_0"]
    assert q8["base_model"] == SMOL and q8["type"] == "Q8_0" and q8["status"] == "verified"
    assert q8["size_bytes"] == ladder["Q8_0"].size_bytes
    p = cli("models", "path", f"{SMOL}-q8_0")
    assert p.returncode == 0 and p.stdout.strip() == str(ladder["Q8_0"].path)
    p = cli("models", "list", env={"COLUMNS": "200"})
    assert f"{SMOL}-q4_k_m" in p.stdout and "Q4_K_M" in p.stdout


def test_existing_output_is_skipped_and_force_redoes_it(ladder, ref):
    from edgekit.quantize import quantize

    (again,) = quantize(ref.variant_id, "Q8_0")
    assert again.action == "exists" and again.card.sha256 == ladder["Q8_0"].card.sha256
    (forced,) = quantize(ref.variant_id, "Q8_0", force=True, threads=2)
    assert forced.action == "forced" and forced.card.sha256 == ladder["Q8_0"].card.sha256  # deterministic


def test_corrupt_variant_is_refused_on_load(ladder, ref, home):
    from edgekit.models import resolve
    from edgekit.models.integrity import ModelCorrupt
    from edgekit.quantize import quantize

    path = ladder["Q4_K_M"].path
    with open(path, "r+b") as f:  # a changed byte: size stays, mtime/ctime move -> re-hash -> mismatch
        f.seek(path.stat().st_size // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(ModelCorrupt, match="does not match its card"):
        resolve(f"{SMOL}-q4_k_m")
    (fixed,) = quantize(ref.variant_id, "Q4_K_M", threads=2)  # a broken output is remade without --force
    assert fixed.action == "remade" and resolve(f"{SMOL}-q4_k_m").sha256 == fixed.card.sha256


# -- requantizing --------------------------------------------------------------------------------
def test_requantize_refused_without_flag(home):
    from edgekit.quantize import quantize

    with pytest.raises(UsageError, match=r"already quantized \(Q4_1\)") as e:
        quantize(SMOL, "Q8_0")
    assert "--dequantize" in e.value.fix and "--allow-requantize" in e.value.fix
    p = cli("quantize", SMOL, "--to", "Q8_0")
    one_error_line(p, "already quantized (Q4_1)")


def test_requantize_with_flag_warns_and_says_so_on_the_card(home):
    from edgekit.quantize import quantize

    heard = []
    (r,) = quantize(SMOL, "Q5_0", allow_requantize=True, threads=2, warn=heard.append)
    assert heard and "capped by the Q4_1 source" in heard[0]
    assert r.card.source.quant == "Q4_1" and r.card.params["allow_requantize"] is True
    assert any("requantized from Q4_1" in n for n in r.card.notes)


# -- bad input -------------------------------------------------------------------------------------
def test_unknown_type_lists_valid_ones(home):
    from edgekit.quantize import parse_targets

    with pytest.raises(UsageError, match="unknown quant type 'Q9_9'") as e:
        parse_targets("Q8_0,Q9_9")
    assert "Q4_K_M" in e.value.fix and "Q2_K" in e.value.fix
    assert parse_targets("q8_0, Q4_K_M,q8_0") == ["Q8_0", "Q4_K_M"]
    one_error_line(cli("quantize", SMOL, "--to", "Q9_9"), "unknown quant type 'Q9_9'")
    one_error_line(cli("quantize", SMOL), "nothing to make")


def test_source_that_is_not_a_model(home, tmp_path, ref):
    from edgekit.quantize import quantize

    txt = tmp_path / "notes.gguf"
    txt.write_text("hello, I am not a model\n" * 10)
    with pytest.raises(GGUFError, match="not a GGUF model"):
        quantize(str(txt), "Q8_0")
    cut = tmp_path / "cut.gguf"
    with open(ref.path, "rb") as f:
        cut.write_bytes(f.read(2_000_000))
    with pytest.raises(GGUFError, match="truncated"):
        quantize(str(cut), "Q8_0")
    with pytest.raises(ModelNotFound):
        quantize(str(tmp_path / "missing.gguf"), "Q8_0")
    one_error_line(cli("quantize", str(cut), "--to", "Q8_0"), "truncated")
    one_error_line(cli("quantize", "no-such-model", "--to", "Q8_0"), "unknown model")
    assert not list((home / "models" / "variants").glob("cut-*"))


def test_not_enough_disk(home, ref):
    from edgekit.quantize import estimate_bytes, quantize, resolve_source

    src = resolve_source(ref.variant_id)
    need = estimate_bytes(src.info, "Q6_K")
    assert 0.9 * 110e6 < need < 1.6 * 138e6  # smollm2 in Q6_K is ~138 MB on disk
    with pytest.raises(EdgekitError, match="not enough disk space") as e:
        quantize(ref.variant_id, "Q6_K", free_bytes=lambda p: need // 2)
    assert "EDGEKIT_HOME" in e.value.fix
    assert not (home / "models" / "variants" / f"{SMOL}-Q6_K.gguf").exists()
    one_error_line(
        cli("quantize", ref.variant_id, "--to", "Q6_K", env={"EDGEKIT_FREE_BYTES": "1000"}), "not enough disk space"
    )


def _no_leftovers(folder: Path, name: str):
    assert not (folder / name).exists()
    assert not (folder / (name + ".card.json")).exists()
    assert not list(folder.glob(".*.partial"))


def test_failure_mid_quantize_leaves_nothing(home, ref, monkeypatch):
    import edgekit.engines.llamacpp_quantize as lq
    from edgekit.quantize import dequantize, quantize

    def broken(src, dst, type_name, **kw):
        Path(dst).write_bytes(b"GGUF" + b"\0" * 4096)  # half-written output
        raise RuntimeError("injected failure")

    monkeypatch.setattr(lq, "quantize_gguf", broken)
    with pytest.raises(RuntimeError, match="injected"):
        quantize(ref.variant_id, "Q5_K_S")
    _no_leftovers(home / "models" / "variants", f"{SMOL}-Q5_K_S.gguf")

    import edgekit.quantize.dequant as dq

    def interrupted(gguf, src, out):
        Path(out).write_bytes(b"GGUF" + b"\0" * 4096)
        raise KeyboardInterrupt

    monkeypatch.setattr(dq, "_write_f16", interrupted)
    with pytest.raises(KeyboardInterrupt):
        dequantize(SMOL, force=True)
    assert not list((home / "models" / "variants").glob(".*.partial"))


def test_ctrl_c_mid_quantize_cli(home, ref):
    """A real SIGINT while llama.cpp writes: exit 130, one `interrupted` line, no file under the final
    name, no temporary."""
    folder = home / "models" / "variants"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgekit.cli.main", "quantize", ref.variant_id, "--to", "Q3_K_S", "--threads", "1"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline and not list(folder.glob(f".{SMOL}-Q3_K_S.gguf.*.partial")):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the quantization finished before the signal arrived")
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("interrupted"), err
    _no_leftovers(folder, f"{SMOL}-Q3_K_S.gguf")


def test_imatrix_is_passed_to_llama_cpp(home, ref, tmp_path):
    """A legacy imatrix.dat (uniform importance for every block matrix) is read and reaches llama.cpp."""
    import struct

    import gguf

    from edgekit.models import read_gguf
    from edgekit.quantize import quantize

    r = gguf.GGUFReader(str(ref.path), "r")
    ents = [(t.name, int(t.shape[0])) for t in r.tensors if t.name.startswith("blk.") and len(t.shape) == 2]
    dat = tmp_path / "imatrix.dat"
    with open(dat, "wb") as f:
        f.write(struct.pack("<i", len(ents)))
        for name, ncol in ents:
            f.write(struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", 1, ncol))
            f.write(struct.pack(f"<{ncol}f", *([1.0] * ncol)))
    (res,) = quantize(ref.variant_id, "Q4_0", imatrix=dat, threads=2)
    assert res.card.params["imatrix"]["entries"] == len(ents) and read_gguf(res.path).quant == "Q4_0"
    from edgekit.engines.llamacpp_quantize import quantize_gguf
    from edgekit.models.integrity import sha256_file

    plain = tmp_path / "plain.gguf"
    quantize_gguf(ref.path, plain, "Q4_0", threads=2)  # the same type without the matrix: other bytes
    assert sha256_file(plain) != res.card.sha256
    with pytest.raises(UsageError, match="this run asks for no importance matrix"):
        quantize(ref.variant_id, "Q4_0")  # a different recipe is not "already made"
    bad = tmp_path / "bad.dat"
    bad.write_bytes(b"\x05\0\0\0xx")
    with pytest.raises(UsageError, match="not an importance matrix"):
        quantize(ref.variant_id, "IQ4_NL", imatrix=bad)


def test_other_formats_dispatch_through_the_registry(home, monkeypatch):
    """The dispatch point for e.g. onnx-int8: a registered name is a valid --to target and gets the call."""
    import edgekit.quantize.ladder as lad
    from edgekit.quantize import parse_targets, quantize, register_format

    monkeypatch.setattr(lad, "OUTPUT_FORMATS", {})
    with pytest.raises(UsageError, match="unknown quant type 'fake-int8'"):
        parse_targets("fake-int8")
    calls = []
    register_format("fake-int8", lambda src, target, opts: calls.append((src, target, opts.threads)) or "result")
    assert quantize(SMOL, "FAKE-INT8", threads=3) == ["result"] and calls == [(SMOL, "fake-int8", 3)]


def test_reference_perplexity_is_at_most_q2_k(ref):
    """The issue's sanity property: the F16 reference's perplexity on the shipped text is no higher than
    Q2_K's made from it (fails if the measurement reads the wrong logits, positions or files)."""
    from edgekit.quantize import quantize
    from edgekit.quantize.quality import perplexity

    (q2,) = quantize(ref.variant_id, "Q2_K")
    p_ref = perplexity(ref.variant_id, limit_tokens=1024)
    p_q2 = perplexity(q2.variant_id, limit_tokens=1024)
    assert p_ref.ppl.method == "measured" and p_ref.n_tokens == p_q2.n_tokens > 400
    assert 1.0 < p_ref.ppl.value <= p_q2.ppl.value, (p_ref.ppl.value, p_q2.ppl.value)
    assert p_q2.ppl.value > 1.2 * p_ref.ppl.value  # two bits per weight on 135M parameters costs more than noise
