"""Block-slice estimates (`edgekit profile --slices`): the slicer, the extrapolation, the profile entry
it writes, and how the planner labels it. Real SmolLM2 slices through real llama.cpp."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit.errors import UsageError
from edgekit.figures import measured
from edgekit.models.slices import slice_blocks, write_slice
from edgekit.perfmodel import fit
from edgekit.profile.slice_estimate import SLICE_UNC, combine, estimate_by_slices
from edgekit.profile.sweep import ProfileInterrupted, SweepConfig, profile_model
from edgekit.schemas.profile import DecodePoint, ModelInfo, ModelProfile, PrefillPoint, SliceEstimate, load_profile

ROOT = Path(__file__).resolve().parents[1]
SMOL = "smollm2-135m-instruct"


def tiny_cfg() -> SweepConfig:
    return SweepConfig(
        prompt_lengths=[32, 128], contexts=[0], ns=[1, 2], decode_steps=6, reps=2, load_reps=1, idle_s=0.1
    )


# -- the slicer -------------------------------------------------------------------------------------


def test_slice_blocks_spread_over_depth_and_share_the_middle_block():
    one, many = slice_blocks(30, 8)
    assert one == [15] and 15 in many and many[0] == 0 and many[-1] == 29
    assert len(many) == len(set(many)) == 8 and many == sorted(many)
    one, many = slice_blocks(24, 4)
    assert one == [12] and len(many) == 4 and {0, 12, 23} <= set(many)
    with pytest.raises(UsageError):
        slice_blocks(4, 8)


def test_a_slice_keeps_metadata_and_copies_the_chosen_blocks_bytes(smol_path, tmp_path):
    import gguf

    dst = tmp_path / "s.gguf"
    write_slice(smol_path, dst, [29, 0, 15])
    src, out = gguf.GGUFReader(str(smol_path)), gguf.GGUFReader(str(dst))
    assert int(out.fields["llama.block_count"].contents()) == 3
    assert out.fields["general.edgekit.slice_blocks"].contents() == [0, 15, 29]
    for key in ("tokenizer.ggml.tokens", "tokenizer.chat_template", "llama.embedding_length"):
        assert out.fields[key].contents() == src.fields[key].contents()
    names = {t.name for t in out.tensors}
    assert {n.split(".")[1] for n in names if n.startswith("blk.")} == {"0", "1", "2"}
    s = {t.name: t for t in src.tensors}
    o = {t.name: t for t in out.tensors}
    for new, old in ((0, 0), (1, 15), (2, 29)):  # renumbered in order, bytes and types unchanged
        a, b = o[f"blk.{new}.ffn_down.weight"], s[f"blk.{old}.ffn_down.weight"]
        assert a.tensor_type == b.tensor_type and np.array_equal(np.asarray(a.data), np.asarray(b.data))
    assert np.array_equal(np.asarray(o["token_embd.weight"].data), np.asarray(s["token_embd.weight"].data))
    # llama.cpp loads it and tokenizes exactly as the whole model does
    from edgekit.engines.llamacpp import LlamaCppEngine

    whole = LlamaCppEngine(str(smol_path), n_ctx=256, threads=2)
    part = LlamaCppEngine(str(dst), n_ctx=256, threads=2)
    try:
        assert part.gguf.n_layer == 3 and whole.gguf.n_layer == 30
        text = "The robot moved the red block."
        assert part.tokenize(text) == whole.tokenize(text)
    finally:
        part.close()
        whole.close()


def test_a_slice_is_byte_identical_to_one_written_by_gguf_py(smol_path, tmp_path):
    """edgekit copies metadata as raw bytes (fast on large vocabularies); gguf-py's reader/writer is the reference."""
    import gguf

    write_slice(smol_path, tmp_path / "ours.gguf", [3, 17])
    r = gguf.GGUFReader(str(smol_path))
    w = gguf.GGUFWriter(str(tmp_path / "ref.gguf"), "llama")
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(f.name, 2 if f.name == "llama.block_count" else f.contents(), f.types[0], sub_type=sub)
    w.add_string("general.edgekit.slice_of", smol_path.name)
    w.add_array("general.edgekit.slice_blocks", [3, 17])  # the source blocks kept
    keep = [
        (t.name.replace("blk.3.", "blk.0.").replace("blk.17.", "blk.1."), t)
        for t in r.tensors
        if not t.name.startswith("blk.") or t.name.startswith(("blk.3.", "blk.17."))
    ]
    for name, t in keep:
        w.add_tensor_info(name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for _, t in keep:
        w.write_tensor_data(t.data)
    w.close()
    assert (tmp_path / "ours.gguf").read_bytes() == (tmp_path / "ref.gguf").read_bytes()


def test_per_block_metadata_arrays_are_cut_to_the_kept_blocks(tmp_path):
    import gguf

    src = tmp_path / "tiny.gguf"
    w = gguf.GGUFWriter(str(src), "llama")
    w.add_block_count(4)
    w.add_array("llama.attention.head_count_kv", [1, 2, 3, 4])  # one entry per block
    w.add_array("llama.some_other_list", [7, 8])  # not per block: kept as it is
    for i in range(4):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.full(8, i, np.float32))
    w.add_tensor("output_norm.weight", np.ones(8, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    write_slice(src, tmp_path / "s.gguf", [1, 3])
    r = gguf.GGUFReader(str(tmp_path / "s.gguf"))
    assert r.fields["llama.attention.head_count_kv"].contents() == [2, 4]
    assert r.fields["llama.some_other_list"].contents() == [7, 8]
    t = {x.name: np.asarray(x.data) for x in r.tensors}
    assert set(t) == {"blk.0.attn_norm.weight", "blk.1.attn_norm.weight", "output_norm.weight"}
    assert t["blk.0.attn_norm.weight"][0] == 1 and t["blk.1.attn_norm.weight"][0] == 3
    with pytest.raises(UsageError):
        write_slice(src, tmp_path / "bad.gguf", [1, 9])


# -- the extrapolation ------------------------------------------------------------------------------


def _entry(pre: dict, dec: dict) -> ModelProfile:
    return ModelProfile(
        model=ModelInfo(id="slice"),
        prefill=[
            PrefillPoint(prompt_tokens=I, prefill_s=measured(v, "s"), prefill_tok_s=measured([1.0], "tok/s"))
            for I, v in pre.items()
        ],
        decode=[
            DecodePoint(context_tokens=c, n=n, steps=8, step_s=measured(v, "s"), decode_tok_s=measured([1.0], "tok/s"))
            for (c, n), v in dec.items()
        ],
    )


def test_points_extrapolate_linearly_in_depth_per_paired_repetition():
    one = _entry({32: [1.0, 1.2]}, {(32, 1): [0.010, 0.010], (32, 4): [0.020, 0.020]})
    many = _entry({32: [1.3, 1.5]}, {(32, 1): [0.013, 0.013], (32, 4): [0.019, 0.019]})  # n=4: noise, 4 blocks faster
    pre, dec, clamped = combine(one, many, n_layer=10, k=4, how="test")
    assert pre[0].prefill_s.samples == pytest.approx([1.0 + 3 * 0.3, 1.2 + 3 * 0.3])  # t1 + (L-1)/(k-1) * (tk - t1)
    assert pre[0].prefill_s.method == "estimated" and pre[0].prefill_tok_s.value == pytest.approx(32 / 2.0)
    d1 = {(d.context_tokens, d.n): d for d in dec}
    assert d1[(32, 1)].step_s.value == pytest.approx(0.010 + 3 * 0.003)
    assert d1[(32, 4)].step_s.value == pytest.approx(0.020)  # block cost clamped at 0, never below the 1-block slice
    assert clamped == ["decode ctx=32 n=4"]


# -- the whole estimate on a real model ----------------------------------------------------------------


@pytest.fixture(scope="module")
def estimate(tmp_path_factory):
    d = tmp_path_factory.mktemp("slices")
    out = d / "profile.json"
    prof = estimate_by_slices(SMOL, tiny_cfg(), blocks=6, output=out, workdir=d)
    return out, prof


def test_estimate_entry_is_labelled_and_fit_says_so(estimate):
    out, prof = estimate
    saved = load_profile(out)
    mp = saved.models[-1]
    assert mp.estimate is not None and mp.estimate.n_layer == 30 and mp.estimate.blocks_one == [15]
    assert len(mp.estimate.blocks_k) == 6 and mp.model.id == SMOL and mp.model.size_bytes > 9e7
    assert all(p.prefill_s.method == "estimated" for p in mp.prefill)
    assert mp.load_s.method == "unavailable" and mp.peak_rss_mb.method == "unavailable"
    assert saved.measured_models() == [] and saved.complete_models()[-1].estimate is not None
    pm = fit(mp, str(out))
    assert "block slices" in pm.method and pm.figure_method == "estimated"
    assert pm.rel_unc_prefill >= SLICE_UNC["prefill"] and pm.rel_unc_decode >= SLICE_UNC["decode"]
    assert "extrapolation from slices" in pm.interval_how


def test_estimate_is_near_the_whole_models_measurement_which_replaces_it(estimate, tmp_path):
    """Not a speed goal (benchmarks/perfmodel_validation.py --slices has that): a wrong extrapolation (no
    depth factor: a 6-block slice is ~1/3 of the model) or a wrong pairing lands far outside 2x."""
    out, prof = estimate
    est = prof.models[-1]
    existing = load_profile(out)
    existing.models[-1].model.id = "smollm2-filed-under-another-id"  # same file (sha256)
    after = profile_model(SMOL, tiny_cfg(), existing=existing)
    assert [m.estimate for m in after.models] == [None]  # the measured sweep superseded the estimate of its file
    whole = after.models[-1]
    for a, b in zip(est.prefill, whole.prefill):
        assert 0.5 < a.prefill_s.value / b.prefill_s.value < 2.0, (
            a.prompt_tokens,
            a.prefill_s.value,
            b.prefill_s.value,
        )
    for a, b in zip(est.decode, whole.decode):
        assert 0.5 < a.step_s.value / b.step_s.value < 2.0, (a.n, a.step_s.value, b.step_s.value)


def test_an_estimate_never_replaces_a_measured_entry(estimate, tmp_path):
    out, prof = estimate
    measured_prof = prof.model_copy(deep=True)
    measured_prof.models[-1].estimate = None  # stands in for a measured entry of the model
    p = tmp_path / "measured.json"
    measured_prof.save(p)
    before = p.read_bytes()
    with pytest.raises(UsageError, match="already has a measured entry"):
        estimate_by_slices(SMOL, tiny_cfg(), blocks=6, output=p, existing=load_profile(p))
    assert p.read_bytes() == before


def test_a_stop_saves_nothing_and_removes_the_slices(tmp_path):
    out = tmp_path / "profile.json"
    out.write_text("{}")  # whatever was there stays
    work = tmp_path / "work"
    work.mkdir()

    def progress(stage, done, total):
        if stage.startswith("slice 2/2") and "prefill" in stage:
            raise KeyboardInterrupt

    with pytest.raises(ProfileInterrupted, match="nothing saved"):
        estimate_by_slices(SMOL, tiny_cfg(), blocks=6, output=out, progress=progress, workdir=work)
    assert out.read_text() == "{}"
    assert list(work.iterdir()) == []


def test_cli_profile_slices_prints_an_estimate_and_refuses_onnx(tmp_path):
    env = {**os.environ, "COLUMNS": "200"}
    out = tmp_path / "p.json"
    cmd = [
        sys.executable,
        "-m",
        "edgekit.cli.main",
        "profile",
        "-m",
        SMOL,
        "--slices",
        "--slice-blocks",
        "4",
        "--prompt-lengths",
        "32",
        "--contexts",
        "0",
        "--ns",
        "1,2",
        "--steps",
        "4",
        "--reps",
        "1",
        "-o",
        str(out),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "ESTIMATED from block slices" in r.stdout and "estimated from block slices (this run)" in r.stdout
    assert json.loads(out.read_text())["models"][-1]["estimate"]["blocks_k"] == [0, 10, 15, 29]
    r = subprocess.run(
        cmd[:-2] + ["--engine", "onnx", "-o", str(tmp_path / "q.json")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    assert r.returncode != 0 and "Traceback" not in r.stderr and "--slices works on GGUF models" in r.stderr
    assert not (tmp_path / "q.json").exists()


# -- the planner ---------------------------------------------------------------------------------------


def test_planner_labels_a_slice_estimate_and_confirm_measures_it(tmp_path):
    from edgekit.plan.make import make_plan

    profile = ROOT / "profiles" / "ci-2core-amd-epyc.json"
    table = ROOT / "tables" / "object_counting-qwen0.5b-terse.json"
    prof = load_profile(profile)
    qwen = prof.model("qwen2.5-coder-0.5b-instruct")
    prof.models = [
        m.model_copy(
            update={
                "estimate": SliceEstimate(
                    n_layer=24,
                    blocks_one=[12],
                    blocks_k=[0, 12, 23, 7],
                    slice_bytes=[1, 2],
                    rel_unc_prefill=0.1,
                    rel_unc_decode=0.1,
                    how="test",
                )
            }
        )
        if m is qwen
        else m
        for m in prof.models
    ]
    p = tmp_path / "profile.json"
    prof.save(p)
    res, _ = make_plan(p, [table], 100.0, variants=None)
    assert "latency: block-slice estimate" in res.rests_on(res.chosen)
    assert "block slices" in res.method(res.chosen)
    calls = []

    def fake_profile(spec, output, existing):  # the whole file measured under another id (its path): same sha256
        calls.append(spec)
        est = existing.model(spec)
        existing.models.append(
            est.model_copy(
                update={
                    "estimate": None,
                    "model": est.model.model_copy(update={"id": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"}),
                }
            )
        )
        existing.save(output)
        return existing

    res, _ = make_plan(p, [table], 100.0, variants=None, confirm=True, profile_fn=fake_profile)
    assert calls == ["qwen2.5-coder-0.5b-instruct"]
    # the measured entry wins over the estimate still filed under the table's id (matched by file hash)
    assert res.rests_on(res.chosen) == [] and any("block-slice estimate" in n for n in res.notes)
    assert "block slices" not in res.method(res.chosen)


# -- the step cost in n: a sawtooth on CPUs -------------------------------------------------------------


def test_step_cost_continues_the_measured_sawtooth_beyond_the_last_n():
    from edgekit.perfmodel.model import PerfModel

    # SmolLM2 Q4_0 on the CI VM (ms): n=4 and n=8 cheaper than the n just below them (4-row GEMM chunks)
    ms = [5.1, 7.9, 10.0, 10.1, 13.4, 15.4, 17.6, 13.2]
    pm = PerfModel(
        model_id="m",
        a=0.0,
        b=1e-3,
        c=0.0,
        alpha=0.004,
        beta=0.001,
        gamma=0.0,
        method="fitted",
        n_knots=list(range(1, 9)),
        base_knots=[x / 1e3 for x in ms],
    )
    got = pm.base_s(np.arange(1, 13)) * 1e3
    assert got[:8] == pytest.approx(ms)  # measured n: exact
    # n = 9..12: base(8) + base(4 + r) - base(4); n = 12: base(8) + (base(8) - base(4))
    assert got[8:] == pytest.approx([13.2 + 3.3, 13.2 + 5.3, 13.2 + 7.5, 13.2 + 3.1])
    assert got[8:] == pytest.approx([16.6, 18.6, 20.7, 16.8], rel=0.05)  # measured on the VM, not fitted
    # without a whole period below the last knot: the fitted slope continues, as before
    pm.n_knots, pm.base_knots = [1, 2, 4, 8], [x / 1e3 for x in (5.1, 7.9, 10.1, 13.2)]
    assert pm.base_s(12) == pytest.approx(0.0132 + 4 * 0.001)
    # a linear kernel stays linear under the sawtooth rule
    pm.n_knots, pm.base_knots = list(range(1, 9)), [0.004 + 0.002 * n for n in range(1, 9)]
    assert pm.base_s(np.array([11.0, 16.0])) == pytest.approx([0.004 + 0.022, 0.004 + 0.032])


def test_a_profile_entry_of_another_file_under_the_same_name_is_not_used(tmp_path):
    """A variant remade with --force (or a re-downloaded model) keeps its name; the old file's timings must
    not be presented as the new file's."""
    from edgekit.plan.make import make_plan

    profile = ROOT / "profiles" / "ci-2core-amd-epyc.json"
    table = ROOT / "tables" / "object_counting-qwen0.5b-terse.json"
    prof = load_profile(profile)
    prof.model("qwen2.5-coder-0.5b-instruct").model.sha256 = "f" * 64
    p = tmp_path / "profile.json"
    prof.save(p)
    res, _ = make_plan(p, [table], 100.0, variants=None)
    assert "cross-model" in res.method(res.chosen)
    assert any("is of another file" in n for n in res.notes)
