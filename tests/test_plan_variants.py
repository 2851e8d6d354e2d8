"""Quantized variants as planner candidates (issue #11 part 5) and cross-model predictions that hold."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit.figures import measured
from edgekit.plan import to_plan_file
from edgekit.plan.make import make_plan
from edgekit.plan.planner import plan
from edgekit.plan.variant_candidates import (
    NO_REPORT_WIDEN,
    PRIOR_C,
    accuracy_prior,
    list_variant_cards,
    variant_candidates,
)
from edgekit.schemas.profile import load_profile
from edgekit.schemas.quant import QualityReport, SourceInfo, VariantCard
from edgekit.schemas.table import load_table

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "ci-2core-amd-epyc.json"
TABLE = ROOT / "tables" / "object_counting-qwen0.5b-terse.json"
BASE = "qwen2.5-coder-0.5b-instruct"
BASE_SHA = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"  # the table's (catalogue) Q4_K_M file
# the ladder: (type, size_bytes, mean KL vs F16 in nats, sha256); Q4_K_M is the tabled catalogue file itself
LADDER = [
    ("Q8_0", 531_000_000, 0.003, "a" * 64),
    ("Q4_K_M", 491_400_000, 0.04, BASE_SHA),
    ("Q2_K", 339_000_000, 0.25, "c" * 64),
]


def _quality(kl, ppl=12.0):
    return QualityReport(
        text_name="edgekit/data/texts/t.txt",
        text_sha256="0" * 64,
        n_tokens=4096,
        n_ctx=512,
        reference=f"{BASE}-f16",
        ppl=measured([ppl], "ppl", source="t.txt, 4096 tokens"),
        kl_mean=None if kl is None else measured([kl], "nats", source="t.txt, 4096 tokens"),
    )


def card(typ, size, kl, sha, quality=True, folder=None):
    vid = f"{BASE}-{typ.lower()}"
    return VariantCard(
        variant_id=vid,
        base_model=BASE,
        format="gguf",
        type=typ,
        path=str((folder or Path("/nonexistent")) / f"{vid}.gguf"),
        size_bytes=size,
        sha256=sha,
        source=SourceInfo(path=f"/cache/{BASE}-f16.gguf", quant="F16", model_id=BASE),
        quality=_quality(kl) if quality else None,
    )


@pytest.fixture
def ladder(tmp_path):
    d = tmp_path / "variants"
    d.mkdir()
    for typ, size, kl, sha in LADDER:
        card(typ, size, kl, sha).save(d / f"{BASE}-{typ.lower()}.gguf.card.json")
    return d


def _plan(ladder_dir, target, **kw):
    prof = load_profile(PROFILE)
    t = load_table(TABLE)
    infos = {m.model.id: m.model for m in prof.complete_models()}
    vs = variant_candidates(list_variant_cards(ladder_dir), [t], [str(TABLE)], infos)
    return plan(prof, [t], target, profile_path=str(PROFILE), table_paths=[str(TABLE)], variants=vs, **kw), vs


def _quant(res, i):
    return res.config(int(i))["quant"]


def _fastest(res, quant):
    idx = [i for i in range(len(res)) if _quant(res, i) == quant]
    return min(float(res.latency[i]) for i in idx)


def test_ladder_picks_lower_bit_variant_for_a_target_q4_cannot_meet(ladder):
    res, vs = _plan(ladder, 100.0)
    assert {v.card.card.type for v in vs} == {"Q8_0", "Q4_K_M", "Q2_K"}
    assert sum(v.prior is None for v in vs) == 1  # Q4_K_M: the table's own file (measured accuracy)
    q4, q2 = _fastest(res, "Q4_K_M"), _fastest(res, "Q2_K")
    assert q2 < q4  # fewer bytes streamed per decode step
    target = (q2 + q4) / 2
    res, _ = _plan(ladder, target)
    c = res.config(res.chosen)
    assert c["quant"] == "Q2_K" and c["variant_id"] == f"{BASE}-q2_k" and res.latency[res.chosen] <= target
    assert set(res.rests_on(res.chosen)) == {"latency: cross-model estimate", "accuracy: prior"}
    pf = to_plan_file(res)
    assert pf.chosen.variant_id == f"{BASE}-q2_k" and len(pf.chosen.variant_card_sha256) == 64
    assert pf.chosen.model_path.endswith(f"{BASE}-q2_k.gguf")
    assert pf.predicted.accuracy_source.startswith("estimated (prior from")
    assert "KL=0.25" in pf.predicted.accuracy_source and pf.predicted.rests_on
    # a loose target keeps the measured Q4_K_M (the Q8_0 prior is never above the base, and it is slower)
    for prefer in ("most-accurate", "cheaper"):
        loose, _ = _plan(ladder, 100.0, prefer=prefer)
        assert _quant(loose, loose.chosen) == "Q4_K_M", prefer


def test_memory_cap_picks_smaller_variant(ladder):
    res, _ = _plan(ladder, 100.0)
    mem = res.pred["memory_bytes"]
    q4_min = min(mem[i] for i in range(len(res)) if _quant(res, i) == "Q4_K_M")
    q2_min = min(mem[i] for i in range(len(res)) if _quant(res, i) == "Q2_K")
    assert q2_min < q4_min
    cap = (q2_min + q4_min) / 2 / 1e9
    res, _ = _plan(ladder, 100.0, memory_cap_gb=cap)
    assert _quant(res, res.chosen) == "Q2_K" and res.pred["memory_bytes"][res.chosen] <= cap * 1e9


def test_prior_is_estimated_and_wider_than_base(ladder):
    res, _ = _plan(ladder, 100.0)
    cfg = [res.config(i) for i in range(len(res))]
    for i in range(len(res)):
        if cfg[i]["quant"] != "Q2_K":
            continue
        j = next(k for k in range(len(res)) if cfg[k]["quant"] == "Q4_K_M" and res.row[k] == res.row[i])
        assert res.accuracy[i] == pytest.approx(res.accuracy[j] * np.exp(-PRIOR_C * (0.25 - 0.04)))
        assert res.acc_hi[i] - res.acc_lo[i] > res.acc_hi[j] - res.acc_lo[j] or res.acc_lo[i] == 0.0
        assert "accuracy: prior" in res.rests_on(i) and "accuracy: prior" not in res.rests_on(j)
        assert res.accuracy_source(i).startswith("estimated (prior from") and str(TABLE) in res.accuracy_source(i)


def test_variant_without_quality_report_gets_wide_default(tmp_path):
    d = tmp_path / "v"
    d.mkdir()
    card("Q3_K_M", 400_000_000, None, "d" * 64, quality=False).save(d / "q3.card.json")
    lc = list_variant_cards(d)
    pr = accuracy_prior(lc[0].card, {}, None, "base.json")
    assert pr.widen(0.5) == NO_REPORT_WIDEN and "no quality report" in pr.how and pr.factor < 1
    res, vs = _plan(d, 100.0)
    i = next(k for k in range(len(res)) if _quant(res, k) == "Q3_K_M")
    j = next(k for k in range(len(res)) if _quant(res, k) == "Q4_K_M" and res.row[k] == res.row[i])
    f = pr.factor
    assert res.acc_hi[i] == pytest.approx(min(1.0, res.acc_hi[j] * f + NO_REPORT_WIDEN))
    assert res.acc_lo[i] == pytest.approx(max(0.0, res.acc_lo[j] * f - NO_REPORT_WIDEN))
    assert (res.acc_hi[i] - res.acc_lo[i]) > (res.acc_hi[j] - res.acc_lo[j])
    assert "no quality report" in res.accuracy_source(i)


def test_ppl_only_prior_uses_reference_card(tmp_path):
    ref = card("F16", 990_000_000, 0.0, "e" * 64)
    ref = ref.model_copy(update={"variant_id": f"{BASE}-f16", "quality": _quality(0.0, ppl=10.0)})
    v = card("Q2_K", 339_000_000, None, "c" * 64).model_copy(update={"quality": _quality(None, ppl=12.0)})
    pr = accuracy_prior(v, {ref.variant_id: ref}, None, "base.json")
    assert pr.kl == pytest.approx(np.log(1.2)) and "ppl" in pr.how


def test_confirm_quick_profiles_the_estimated_variant(ladder, tmp_path):
    prof_path = tmp_path / "profile.json"
    prof_path.write_text(PROFILE.read_text())
    res0, _ = make_plan(prof_path, [TABLE], 100.0, variants=ladder)
    q4, q2 = _fastest(res0, "Q4_K_M"), _fastest(res0, "Q2_K")
    calls = []

    def fake_profile(spec, output, existing):  # "measures" the variant: the qwen entry, decode steps 20 % faster
        calls.append(spec)
        base = existing.model(BASE)
        dec = [d.model_copy(update={"step_s": measured([x * 0.8 for x in d.step_s.samples], "s")}) for d in base.decode]
        entry = base.model_copy(
            update={
                "decode": dec,
                "model": base.model.model_copy(
                    update={"id": Path(spec).name, "sha256": "c" * 64, "quant": "Q2_K", "size_bytes": 339_000_000}
                ),
            }
        )
        existing.models.append(entry)
        existing.save(output)
        return existing

    res, _ = make_plan(prof_path, [TABLE], (q2 + q4) / 2, variants=ladder, confirm=True, profile_fn=fake_profile)
    assert calls and calls[0].endswith(f"{BASE}-q2_k.gguf")
    assert any("--confirm: quick-profiled" in n for n in res.notes)
    assert "latency: cross-model estimate" not in res.rests_on(res.chosen)
    assert any(m.model.sha256 == "c" * 64 for m in load_profile(prof_path).models)


def test_cli_plan_shows_quant_column_and_cross_model_note(ladder, tmp_path):
    res, _ = _plan(ladder, 100.0)
    target = (_fastest(res, "Q2_K") + _fastest(res, "Q4_K_M")) / 2
    env = {**os.environ, "COLUMNS": "250", "EDGEKIT_HOME": str(tmp_path / "home")}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgekit.cli.main",
            "plan",
            "-p",
            str(PROFILE),
            "-a",
            str(TABLE),
            "-t",
            f"{target:.4f}s",
            "--variants",
            str(ladder),
            "-o",
            str(tmp_path / "plan.json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "quant" in out and "Q2_K" in out and "acc. from" in out
    assert "chosen: qwen2.5-coder-0.5b-instruct-q2_k (quant Q2_K)" in out
    assert "rests on a cross-model estimate" in out and "--confirm" in out
    assert "rests on an accuracy prior" in out
    pf = json.loads((tmp_path / "plan.json").read_text())
    assert pf["chosen"]["variant_id"] == f"{BASE}-q2_k" and pf["chosen"]["variant_card_sha256"]


def test_leave_one_out_on_recorded_profile_meets_goal(capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import perfmodel_validation as pv
    finally:
        sys.path.pop(0)
    assert pv.main(["--profile", str(PROFILE), "--leave-one-out", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["models"] == ["smollm2-135m-instruct", "gemma-3-270m", BASE]
    for k in ("points", "configs"):
        assert out[k]["coverage"] >= 0.90, (k, out[k])
        assert out[k]["mape_pct"] <= 15.0, (k, out[k])
    assert out["points"]["n"] == 33 and out["configs"]["n"] == 54 and out["meets_goal"]


def test_a_variant_that_cannot_be_predicted_is_left_out_with_a_note_not_an_error(ladder, tmp_path):
    """A profile with one model cannot fit the device's per-byte step cost, so the ladder's Q8_0 and
    Q2_K cannot be predicted: the plan still comes out for the tables the user named and says which
    variants were left out; a table the user named for a model the profile lacks is still an error."""
    prof = load_profile(PROFILE)
    one = prof.model_copy(update={"models": [m for m in prof.complete_models() if m.model.id == BASE]})
    p1 = tmp_path / "one.json"
    p1.write_text(one.model_dump_json())
    res, _ = make_plan(p1, [TABLE], 100.0, variants=ladder)
    assert res.chosen is not None
    quants = {res.config(i)["quant"] for i in range(len(res))}
    assert "Q2_K" not in quants and "Q8_0" not in quants
    for q in ("q2_k", "q8_0"):
        assert any(f"variant {BASE}-{q} left out" in n for n in res.notes), res.notes
    gemma_table = load_table(TABLE).model_copy(update={"model_id": "gemma-3-270m", "model_sha256": None})
    gt = tmp_path / "gemma.json"
    gt.write_text(gemma_table.model_dump_json())
    with pytest.raises(Exception, match="gemma-3-270m"):
        make_plan(p1, [TABLE, gt], 100.0, variants=ladder)
