"""Planner: optimum, infeasible targets, caps, ties, frontier, plan file, published profile, speed."""

import functools
import json
import time
from pathlib import Path

import numpy as np
import pytest

from edgekit.cli.render_plan import render_frontier
from edgekit.errors import SchemaError, UsageError
from edgekit.perfmodel import synthetic as sy
from edgekit.plan import InfeasibleTarget, load_plan, plot_pareto, to_plan_file
from edgekit.plan import plan as plan_any
from edgekit.schemas.profile import ModelInfo, load_profile
from edgekit.schemas.table import AccuracyRow, AccuracyTable

# these tests check the optimiser itself: the most accurate feasible configuration
plan = functools.partial(plan_any, prefer="most-accurate")

ORIN = Path(__file__).resolve().parents[1] / "profiles" / "jetson-agx-orin-64gb-published.json"
# prefill = 0.05 + 1e-3 * I ; step = 0.02 + 0.001 * n (gamma = 0): hand-computable
T = dict(a=0.0, b=1e-3, c=0.05, alpha=0.02, beta=0.001, gamma=0.0)


def row(B, k, agg, acc, S, mean=None):
    return AccuracyRow(budget=B, k=k, aggregation=agg, accuracy=acc, expected_steps=S, mean_tokens=mean or S * 0.8)


def table(model_id="m", rows=(), I=100.0, verifier=False, quant="Q4_K_M", task="object_counting"):
    return AccuracyTable(
        task=task,
        model_id=model_id,
        quant=quant,
        prompt_template="cot",
        temperature=0.7,
        n_samples=16,
        seed=0,
        max_tokens=512,
        n_problems=20,
        prompt_tokens_mean=I,
        has_verifier=verifier,
        rows=list(rows),
    )


HAND_ROWS = [
    row(64, 1, "majority", 0.50, 50),  # 0.15 + 50 * 0.021 = 1.20 s
    row(128, 1, "majority", 0.60, 100),  # 0.15 + 100 * 0.021 = 2.25 s
    row(64, 4, "majority", 0.65, 60),  # 0.15 + 60 * 0.024 = 1.59 s
    row(128, 8, "majority", 0.80, 120),  # 0.15 + 120 * 0.028 = 3.51 s
    row(64, 1, "greedy", 0.55, 40),  # 0.15 + 40 * 0.021 = 0.99 s
]


@pytest.fixture
def prof():
    return sy.device_profile(
        [
            sy.model_profile(
                "m", T, noise=0.0, size_bytes=1_000_000_000, kv_bytes_per_token=100_000, energy_mj=(1.0, 10.0)
            )
        ]
    )


def test_picks_hand_computed_optimum(prof):
    r = plan(prof, [table(rows=HAND_ROWS)], 2.0, profile_path="p.json", table_paths=["t.json"])
    c = r.config(r.chosen)
    assert (c["budget"], c["n"], c["aggregation"]) == (64, 4, "majority")
    assert r.pred["total_s"][r.chosen] == pytest.approx(1.59, rel=1e-6)
    assert sorted(np.round(r.pred["total_s"], 6)) == [0.99, 1.2, 1.59, 2.25, 3.51]
    assert c["extractor"] == "number" and c["temperature"] == 0.7
    big = plan(prof, [table(rows=HAND_ROWS)], 4.0)
    assert big.config(big.chosen)["n"] == 8
    greedy = plan(prof, [table(rows=HAND_ROWS)], 1.0)
    assert (
        greedy.config(greedy.chosen)["aggregation"] == "greedy" and greedy.config(greedy.chosen)["temperature"] == 0.0
    )


def test_p95_uses_interval_upper_end(prof):
    r = plan(prof, [table(rows=HAND_ROWS)], 1.6, percentile=95)
    # 1.59 s * (1 + 1 %) > 1.6 s: the k=4 row no longer fits at p95
    assert r.config(r.chosen)["aggregation"] == "greedy"
    assert np.all(r.latency >= r.pred["total_s"])


def test_infeasible_names_fastest(prof):
    with pytest.raises(InfeasibleTarget) as ei:
        plan(prof, [table(rows=HAND_ROWS)], 0.5)
    msg = ei.value.one_line()
    assert "no configuration meets 0.5 s at p50; the fastest is m B=64 n=1 (greedy) at 0.99 s" in msg
    assert "raise the target to at least 0.99 s" in msg and ei.value.result is not None


def test_bad_arguments(prof):
    for bad in (0, -1.0):
        with pytest.raises(UsageError):
            plan(prof, [table(rows=HAND_ROWS)], bad)
    with pytest.raises(UsageError):
        plan(prof, [table(rows=HAND_ROWS)], 1.0, percentile=90)


def test_energy_cap_excludes(prof):
    # k=4 row: 0.1 J prefill + 0.01 J x 60 steps x (0.024 / 0.021) = 0.7857 J; greedy: 0.1 + 0.4 = 0.5 J
    r = plan(prof, [table(rows=HAND_ROWS)], 2.0, energy_cap_j=0.7)
    assert r.pred["energy_j"][r.chosen] == pytest.approx(0.5)
    assert r.config(r.chosen)["aggregation"] == "greedy"
    with pytest.raises(InfeasibleTarget, match="meets the caps"):
        plan(prof, [table(rows=HAND_ROWS)], 2.0, energy_cap_j=0.1)


def test_memory_cap_excludes(prof):
    # memory = 1.1e9 + 1e5 * (100 + n * B): k=4 B=64 -> 1.1356 GB; n=1 B=64 -> 1.1164 GB
    r = plan(prof, [table(rows=HAND_ROWS)], 2.0, memory_cap_gb=1.12)
    assert r.config(r.chosen)["aggregation"] == "greedy"
    assert r.pred["memory_bytes"][r.chosen] == pytest.approx(1.1164e9)


def test_tie_goes_to_lower_latency_then_energy():
    prof = sy.device_profile(
        [
            sy.model_profile("a", T, noise=0.0, energy_mj=(1.0, 10.0)),
            sy.model_profile("b", T, noise=0.0, energy_mj=(1.0, 5.0)),
        ]
    )
    rows = [row(128, 1, "majority", 0.7, 100), row(64, 1, "majority", 0.7, 50), row(32, 1, "majority", 0.4, 20)]
    r = plan(prof, [table("a", rows)], 5.0)
    assert r.config(r.chosen)["budget"] == 64
    same = [row(64, 2, "majority", 0.7, 50)]
    r = plan(prof, [table("a", same), table("b", same)], 5.0)
    assert r.config(r.chosen)["model_id"] == "b"


def test_pass_at_k_needs_verifier(prof):
    rows = HAND_ROWS + [row(64, 4, "pass@k", 0.95, 60)]
    r = plan(prof, [table(rows=rows)], 2.0)
    assert r.accuracy[r.chosen] == 0.65 and any("verifier" in n for n in r.notes)
    r = plan(prof, [table(rows=rows, verifier=True)], 2.0)
    assert r.config(r.chosen)["aggregation"] == "pass@k"


def test_frontier_matches_brute_force(prof):
    rng = np.random.default_rng(1)
    rows = [
        row(int(B), int(k), "majority", float(np.round(rng.random(), 2)), float(rng.integers(1, B + 1)))
        for B, k in zip(rng.choice([32, 64, 128, 256], 300), rng.choice([1, 2, 4, 8], 300))
    ]
    r = plan(prof, [table(rows=rows)], 100.0)
    lat, acc = r.latency, r.accuracy
    brute = set()
    for i in range(len(acc)):
        dominated = np.any((lat <= lat[i]) & (acc >= acc[i]) & ((lat < lat[i]) | (acc > acc[i])))
        if not dominated:
            brute.add((lat[i], acc[i]))
    assert {(lat[i], acc[i]) for i in r.frontier} == brute
    assert len(r.frontier) == len(brute) and np.all(np.diff(lat[r.frontier]) > 0)


def test_unknown_model(prof, tmp_path):
    with pytest.raises(SchemaError) as ei:
        plan(prof, [table("other", HAND_ROWS)], 2.0, profile_path="dev.json", table_paths=["acc/other.json"])
    msg = ei.value.message
    assert "acc/other.json" in msg and "dev.json" in msg and "'other'" in msg and "m" in msg
    r = plan(prof, [table("other", HAND_ROWS)], 2.0, model_map={"other": "m"})
    assert r.chosen is not None
    with pytest.raises(SchemaError, match="measured 'm' Q8_0"):
        plan(
            prof.model_copy(
                update={"models": [prof.models[0].model_copy(update={"model": ModelInfo(id="m", quant="Q8_0")})]}
            ),
            [table(rows=HAND_ROWS)],
            2.0,
        )


def test_cross_model_estimate_marked():
    ms = []
    for i, (P, L, E) in enumerate([(1e9, 24, 2048), (7e9, 32, 4096)]):
        kv, size = 2 * L * 8 * 128 * 2, int(P * 0.6)
        ms.append(
            sy.model_profile(
                f"m{i}",
                sy.device_truth(size, P, kv, L, E),
                noise=0.0,
                size_bytes=size,
                n_params=P,
                kv_bytes_per_token=kv,
                n_layer=L,
                n_embd=E,
            )
        )
    prof = sy.device_profile(ms)
    info = ModelInfo(
        id="new", size_bytes=int(1.8e9), n_params=3e9, kv_bytes_per_token=2 * 28 * 8 * 256, n_layer=28, n_embd=3072
    )
    with pytest.raises(SchemaError, match="cross-model estimate needs its size"):
        plan(prof, [table("new", HAND_ROWS)], 100.0)
    r = plan(prof, [table("new", HAND_ROWS)], 100.0, model_infos={"new": info})
    assert r.method(r.chosen).startswith("estimated (cross-model from m0, m1")
    assert any("cross-model" in b for b in to_plan_file(r).based_on)


def test_plan_file_round_trip(prof, tmp_path):
    r = plan(prof, [table(rows=HAND_ROWS)], 2.0, profile_path="p.json", table_paths=["t.json"])
    pf = to_plan_file(r)
    assert pf.chosen.budget == 64 and pf.chosen.n == 4 and pf.chosen.extractor == "number"
    assert pf.predicted.latency_s.method == "estimated" and pf.predicted.latency_lo_s < 1.59 < pf.predicted.latency_hi_s
    assert pf.predicted.energy_j.value == pytest.approx(0.1 + 0.01 * 60 * 0.024 / 0.021)
    assert pf.predicted.method == "fitted from measured profile p.json"
    assert sum(f.chosen for f in pf.frontier) == 1
    path = pf.save(tmp_path / "plans" / "plan.json")
    assert load_plan(path) == pf
    raw = json.loads(path.read_text())
    raw["chosen"]["n"] = "many"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(raw))
    with pytest.raises(SchemaError, match="field chosen.n"):
        load_plan(bad)
    raw["schema_version"] = 99
    bad.write_text(json.dumps(raw))
    with pytest.raises(SchemaError, match="schema_version 99"):
        load_plan(bad)
    with pytest.raises(SchemaError, match="does not exist"):
        load_plan(tmp_path / "none.json")


def test_published_orin_profile():
    prof = load_profile(ORIN)
    rows = {
        "deepseek-r1-distill-qwen-1.5b": [
            row(256, 1, "majority", 0.40, 200),
            row(1024, 1, "majority", 0.55, 800),
            row(1024, 4, "majority", 0.62, 900),
        ],
        "deepseek-r1-distill-llama-8b": [row(256, 1, "majority", 0.65, 200), row(1024, 1, "majority", 0.70, 700)],
        "deepseek-r1-distill-qwen-14b": [row(256, 1, "majority", 0.60, 220), row(1024, 1, "majority", 0.80, 750)],
    }
    tabs = [table(m, rs, I=150.0, quant="FP16") for m, rs in rows.items()]
    r = plan(prof, tabs, 30.0, profile_path=str(ORIN))
    c = r.config(r.chosen)
    # hand: 8B B=256 -> prefill(I=150 -> 256) + 200 * (n + m*150 + m*199/2)
    a, b, cc, n, m = (
        6.645207285297158e-07,
        0.0002903545130874798,
        0.10380849913420899,
        0.10038429572372025,
        6.920219504432032e-07,
    )
    expect = a * 256**2 + b * 256 + cc + 200 * (n + m * 150 + m * 199 / 2)
    assert (c["model_id"], c["budget"]) == ("deepseek-r1-distill-llama-8b", 256)
    assert r.pred["total_s"][r.chosen] == pytest.approx(expect, rel=1e-12)
    pf = to_plan_file(r)
    assert pf.predicted.method.startswith("published (EdgeReasoning") and pf.predicted.latency_s.method == "published"
    assert pf.predicted.energy_j.method == "published" and pf.profile.kind == "published"
    assert pf.based_on[0].startswith("published data")
    assert all("published" in f.method for f in pf.frontier)
    n4 = [i for i in range(len(r)) if r.n[i] == 4][0]
    assert "extended to n=4" in r.method(n4)


def _big(n_tables=6, rows_per=1800, seed=0):
    rng = np.random.default_rng(seed)
    prof = sy.device_profile(
        [
            sy.model_profile(
                f"m{i}", {**T, "alpha": 0.01 * (i + 1)}, noise=0.0, size_bytes=10**9 * (i + 1), kv_bytes_per_token=1e5
            )
            for i in range(3)
        ]
    )
    tabs = []
    for t in range(n_tables):
        Bs = rng.choice([64, 128, 256, 512, 1024], rows_per)
        rs = [
            row(int(B), int(k), "majority", float(rng.random()), float(rng.integers(1, B + 1)))
            for B, k in zip(Bs, rng.choice([1, 2, 4, 8, 16], rows_per))
        ]
        tabs.append(table(f"m{t % 3}", rs, I=float(rng.integers(50, 500))))
    return prof, tabs


def test_ten_thousand_candidates_fast_and_correct():
    prof, tabs = _big()
    t0 = time.perf_counter()
    r = plan(prof, tabs, 8.0, memory_cap_gb=3.0)
    dt = time.perf_counter() - t0
    assert len(r) >= 10_000
    assert dt < 1.0, f"{len(r)} candidates took {dt:.2f} s"
    # brute force the choice with scalar predictions on a sample of candidates + the chosen one
    sample = list(range(0, len(r), 97)) + [r.chosen]
    for i in sample:
        assert r.prediction(i).latency_s == pytest.approx(r.pred["total_s"][i], rel=1e-12)
    ok = r.feasible
    assert r.accuracy[r.chosen] == r.accuracy[ok].max()
    assert ok[r.chosen] and r.pred["memory_bytes"][r.chosen] <= 3e9


def test_render_and_plot(prof, tmp_path):
    r = plan(prof, [table(rows=HAND_ROWS)], 2.0)
    tab = render_frontier(r)
    assert tab.row_count == len(r.frontier)
    pytest.importorskip("matplotlib")
    out = plot_pareto(r, tmp_path / "pareto.png")
    assert out.exists() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_differences_inside_the_noise_go_to_the_cheaper_configuration(prof):
    """Rows without per-problem records: an unpaired tie (Newcombe) with a material saving goes to the cheaper one."""
    from edgekit.figures import wilson

    rows = [row(64, 1, "greedy", 0.433, 40), row(64, 3, "majority", 0.504, 55)]
    t30 = table(rows=rows).model_copy(update={"n_problems": 30})
    r = plan_any(prof, [t30], 100.0)
    assert r.accuracy[r.most_accurate] == pytest.approx(0.504) and r.accuracy[r.chosen] == pytest.approx(0.433)
    assert any("a tie" in n and "unpaired" in n and "material saving" in n for n in r.notes)
    lo, hi = wilson(np.array([0.433, 0.504]), np.array([30, 30]))
    assert hi[0] >= lo[1] and r.acc_lo[r.chosen] == pytest.approx(lo[0])
    pf = to_plan_file(r)
    assert pf.predicted.accuracy_lo == pytest.approx(lo[0]) and pf.predicted.accuracy_hi == pytest.approx(hi[0])
    # with 3,000 problems the same gap is real: the more accurate one is chosen
    t3000 = table(rows=rows).model_copy(update={"n_problems": 3000})
    r = plan_any(prof, [t3000], 100.0)
    assert r.chosen == r.most_accurate and r.accuracy[r.chosen] == pytest.approx(0.504)


def test_a_partial_profile_entry_is_never_planned_on(prof):
    part = prof.models[0].model_copy(update={"partial": True, "gaps": ["sweep stopped early at decode ctx=32 n=1"]})
    only_partial = prof.model_copy(update={"models": [part]})
    with pytest.raises(SchemaError, match="only a partial entry") as e:
        plan(only_partial, [table(rows=HAND_ROWS)], 2.0, profile_path="p.json")
    assert "--append" in e.value.fix
    both = prof.model_copy(update={"models": [part, prof.models[0]]})
    assert plan(both, [table(rows=HAND_ROWS)], 2.0).chosen == plan(prof, [table(rows=HAND_ROWS)], 2.0).chosen


def _pool_table(model_id, accs, n_problems=40, k_samples=4, seed=1):
    """A table with a sample pool whose confidence (vote share) predicts correctness."""
    import random as _r

    from edgekit.evaluate.estimators import accuracy_rows
    from edgekit.schemas.table import ProblemRecord, SampleRecord

    rng = _r.Random(seed)
    probs = []
    for i in range(n_problems):
        hard = rng.random() < 0.5
        samples = []
        for _ in range(k_samples):
            right = rng.random() < (0.25 if hard else 0.9)
            samples.append(
                SampleRecord(
                    answer="7" if right else str(rng.choice([3, 4, 5, 6, 8])),
                    correct=right,
                    tokens=30,
                    finished=True,
                    mean_logprob=-0.2 if right else -1.5,
                )
            )
        probs.append(ProblemRecord(id=f"q{i}", target="7", prompt_tokens=50, samples=samples, greedy=samples[0]))
    t = AccuracyTable(
        task="object_counting",
        model_id=model_id,
        quant="Q4_K_M",
        prompt_template="cot",
        temperature=0.8,
        n_samples=k_samples,
        seed=0,
        max_tokens=64,
        n_problems=n_problems,
        prompt_tokens_mean=50.0,
        problems=probs,
        rows=[],
    )
    t.rows = accuracy_rows(probs, [64], None, ["greedy", "majority"])
    return t


def test_joint_offload_planning_picks_config_and_threshold(prof, tmp_path):
    from edgekit.plan.joint import joint_plan

    local = _pool_table("m", None)
    cloud = _pool_table("cloud", None, seed=2)
    for p in cloud.problems:  # a strong cloud: right on every problem
        for s in p.samples:
            s.correct, s.answer = True, "7"
    r = plan_any(prof, [local], 4.0)
    j = joint_plan(r, cloud, cloud_latency_s=0.5, offload_budget=0.6)
    local_acc = r.accuracy[j.candidate]
    assert j.system_accuracy > local_acc and 0 < j.offload_rate <= 0.6
    assert j.accuracy_lo <= j.system_accuracy <= j.accuracy_hi
    assert j.expected_s == pytest.approx(r.pred["total_s"][j.candidate] + j.offload_rate * 0.5)
    # no offload allowed: the system is the local configuration
    j0 = joint_plan(r, cloud, cloud_latency_s=0.5, offload_budget=0.0)
    assert j0.offload_rate == 0.0 and j0.system_accuracy <= j.system_accuracy
    pf_res = plan_any(prof, [local], 4.0)
    pf_res.joint, pf_res.chosen, pf_res.cloud = j, j.candidate, {"latency_s": 0.5, "accuracy_table": "c.json"}
    pf = to_plan_file(pf_res)
    assert pf.offload.threshold == j.threshold and "no guarantee" in pf.offload.guarantee
    assert pf.predicted.system_accuracy == j.system_accuracy and pf.cloud.latency_s == 0.5
    with pytest.raises(SchemaError, match="lacks"):
        joint_plan(r, cloud.model_copy(update={"problems": cloud.problems[:5]}), cloud_latency_s=0.5)
    with pytest.raises(UsageError, match="cloud's measured latency"):
        joint_plan(r, cloud, cloud_latency_s=0)
