"""Reference profile from published data (EdgeReasoning, Jetson AGX Orin 64 GB)."""

import math
from pathlib import Path

import pytest

from edgekit.perfmodel import fit
from edgekit.perfmodel import published as pub
from edgekit.profile.reference import DEFAULT_PATH, build_orin_reference, main
from edgekit.schemas.profile import load_profile

COMMITTED = Path(__file__).resolve().parents[1] / "profiles" / "jetson-agx-orin-64gb-published.json"
IDS = ["deepseek-r1-distill-qwen-1.5b", "deepseek-r1-distill-llama-8b", "deepseek-r1-distill-qwen-14b"]


@pytest.fixture(scope="module")
def ref():
    return load_profile(COMMITTED)


def test_committed_json_loads_and_matches_builder(ref):
    assert DEFAULT_PATH == COMMITTED
    assert ref.kind == "published" and "2511.01866" in ref.source and "analytic.yaml" in ref.source
    assert [m.model.id for m in ref.models] == IDS
    assert ref.model_dump() == build_orin_reference().model_dump()


def test_regenerates_identical_file(tmp_path):
    out = tmp_path / "orin.json"
    assert main([str(out)]) == 0
    assert out.read_bytes() == COMMITTED.read_bytes()


def test_model_info(ref):
    sizes = {m.model.id: m.model.size_bytes for m in ref.models}
    assert sizes[IDS[0]] == pytest.approx(2 * 1.78e9) and sizes[IDS[2]] == pytest.approx(2 * 14.8e9)
    assert all(m.model.quant == "FP16" for m in ref.models)


def test_prefill_formula_rounds_to_128(ref):
    pm = ref.model(IDS[0]).published_model
    # I = 100 -> 128: 1.5635548753756998e-07*128^2 + 2.309554283403154e-06*128 + 0.04598102600399947
    assert float(pub.prefill_s(pm, 100)) == pytest.approx(0.04883837726009062, rel=1e-12)
    assert float(pub.prefill_s(pm, 128)) == float(pub.prefill_s(pm, 100))
    assert float(pub.prefill_s(pm, 129)) > float(pub.prefill_s(pm, 128))
    # rounded brief coefficients agree to 1 %
    assert float(pub.prefill_s(pm, 100)) == pytest.approx(1.56e-7 * 128**2 + 2.31e-6 * 128 + 0.046, rel=1e-2)


def test_decode_formula(ref):
    pm = ref.model(IDS[1]).published_model
    n, m = 0.10038429572372025, 6.920219504432032e-07
    assert float(pub.decode_s(pm, 512, 100)) == pytest.approx(100 * (n + m * 512 + m * 99 / 2), rel=1e-12)
    # the sum of per-token costs n + m*(I + j), j = 0..O-1
    assert float(pub.decode_s(pm, 300, 40)) == pytest.approx(sum(n + m * (300 + j) for j in range(40)), rel=1e-12)
    pts = ref.model(IDS[1]).decode
    assert all(p.n == 1 and p.step_s.method == "published" for p in pts)
    assert pts[-1].step_s.value == pytest.approx(n + m * pts[-1].context_tokens)


def test_decode_power_switch_at_65(ref):
    pm = ref.model(IDS[0]).published_model
    a, b = 3.2137108442982796, 0.7565375896390953
    assert float(pub.decode_power_w(pm, 10)) == pytest.approx(a * math.log(10) + b)
    assert float(pub.decode_power_w(pm, 64)) == pytest.approx(a * math.log(64) + b)
    assert float(pub.decode_power_w(pm, 65)) == pytest.approx(a * math.log(64) + b)  # constant from 65 on
    assert float(pub.decode_power_w(pm, 65)) != pytest.approx(a * math.log(65) + b)
    assert float(pub.decode_power_w(pm, 5000)) == float(pub.decode_power_w(pm, 64))
    assert "not published" in ref.model(IDS[0]).energy.decode_power_mw.note
    assert any("P_inf" in n for n in ref.notes)


def test_prefill_power(ref):
    p15 = ref.model(IDS[0]).published_model
    assert float(pub.prefill_power_w(p15, 1000)) == pytest.approx(5.499357133701591 + 6.68749014794967e-05 * 1000)
    p8 = ref.model(IDS[1]).published_model
    assert float(pub.prefill_power_w(p8, 800)) == pytest.approx(5.6577142857142855)
    assert float(pub.prefill_power_w(p8, 801)) == pytest.approx(9.337806581499883 * math.log(801) - 52.218272155944696)


def test_energy_figures(ref):
    m = ref.model(IDS[2])
    e = m.energy
    assert e.idle_power_mw.method == "unavailable" and e.idle_power_mw.value is None
    d = m.published_model
    expect = float(pub.decode_power_w(d, 64)) * float(pub.decode_token_s(d, 512)) * 1e3
    assert e.decode_energy_per_token_mj.value == pytest.approx(expect)
    assert e.decode_energy_per_token_mj.method == "published"


def test_perfmodel_equals_closed_form(ref):
    for mid in IDS:
        d = ref.model(mid).published_model
        pm = fit(ref.model(mid), str(COMMITTED))
        for I, O in ((100, 1), (700, 333), (1152, 2048)):
            p = pm.predict(I, O, 1)
            assert p.latency_s == pytest.approx(float(pub.prefill_s(d, I) + pub.decode_s(d, I, O)), rel=1e-12)
            e = pub.prefill_energy_j(d, I) + pub.decode_energy_j(d, I, O)
            assert p.energy_j == pytest.approx(float(e), rel=1e-12)
            assert p.method.startswith("published (EdgeReasoning") and p.figure_method == "published"
