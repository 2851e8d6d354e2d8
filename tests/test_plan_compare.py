"""Paired comparisons in the planner (issue #24): ties, material savings, unpaired fallbacks, reproducibility."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgekit.evaluate.estimators import accuracy_rows, problem_scores
from edgekit.evaluate.paired import paired_diff, pairing
from edgekit.figures import wilson
from edgekit.perfmodel import synthetic as sy
from edgekit.plan import plan, to_plan_file
from edgekit.schemas.table import AccuracyTable, ProblemRecord, SampleRecord, load_table

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(a=0.0, b=1e-3, c=0.05, alpha=0.01, beta=0.001, gamma=0.0)  # ~0.4 s for 30 steps
SLOW = dict(a=0.0, b=3e-3, c=0.10, alpha=0.04, beta=0.002, gamma=0.0)  # ~1.5 s


@pytest.fixture(scope="module")
def prof():
    return sy.device_profile(
        [
            sy.model_profile("small", FAST, noise=0.02, size_bytes=500_000_000),
            sy.model_profile("big", SLOW, noise=0.02, size_bytes=1_500_000_000, seed=1),
        ]
    )


def pool_table(model_id: str, correct: set[int], ids=None, n=30, task_file="f" * 64, samples=4) -> AccuracyTable:
    """A table whose every sample (and the greedy one) is right exactly on problems ``correct``: per-problem data."""
    ids = ids or [f"object_counting/{i}" for i in range(n)]
    probs = []
    for i, pid in enumerate(ids):
        ok = i in correct
        s = SampleRecord(answer="7" if ok else "3", correct=ok, tokens=29, finished=True)
        probs.append(ProblemRecord(id=pid, target="7", prompt_tokens=60, samples=[s] * samples, greedy=s))
    return AccuracyTable(
        task="bigbench:object_counting",
        model_id=model_id,
        quant="Q4_K_M",
        prompt_template="terse",
        temperature=0.8,
        n_samples=samples,
        seed=0,
        max_tokens=32,
        n_problems=len(ids),
        prompt_tokens_mean=60.0,
        task_file_sha256=task_file,
        problems=probs,
        rows=accuracy_rows(probs, [32], None, ["greedy", "majority"]),
    )


def _greedy(res, model):
    return next(
        i for i in range(len(res)) if res.config(i)["model_id"] == model and res.config(i)["aggregation"] == "greedy"
    )


def test_paired_difference_separates_what_overlapping_marginal_intervals_cannot(prof):
    small = pool_table("small", set(range(9)))  # 9/30 = 30 %
    big = pool_table("big", set(range(16)))  # 16/30 = 53 %: right wherever small is, and on 7 more
    lo, hi = wilson(np.array([0.3, 16 / 30]), np.array([30, 30]))
    assert hi[0] > lo[1]  # the marginal intervals overlap: the old rule took the cheaper one
    res = plan(prof, [small, big], 5.0)
    assert res.config(res.chosen)["model_id"] == "big" and res.why_chosen is None
    vs = next(c for c in res.competitors() if res.config(c.other)["model_id"] == "small")
    assert vs.paired and vs.n_shared == 30 and vs.verdict == "win" and vs.lo > 0
    assert vs.diff == pytest.approx(7 / 30) and vs.latency_saving_s < 0 and vs.material
    # the same rows without per-problem records can only be compared unpaired: a tie, and the cheaper one is taken
    bare = [t.model_copy(update={"problems": []}) for t in (small, big)]
    res = plan(prof, bare, 5.0)
    assert res.config(res.chosen)["model_id"] == "small" and "tie" in res.why_chosen
    vs = res.competitors()[0]
    assert not vs.paired and "keeps no per-problem records" in vs.how and "Newcombe" in vs.how


def test_a_true_tie_with_a_material_saving_goes_to_the_cheaper_one_with_the_reason(prof):
    small = pool_table("small", set(range(14)) | {16})  # 15/30
    big = pool_table("big", set(range(16)))  # 16/30: +2 and -1 problems against small
    res = plan(prof, [small, big], 5.0)
    assert res.config(res.most_accurate)["model_id"] == "big"
    assert res.config(res.chosen)["model_id"] == "small"
    assert "a tie" in res.why_chosen and "material saving" in res.why_chosen and "paired on 30" in res.why_chosen
    vs = next(c for c in res.competitors() if c.other == res.most_accurate)
    assert vs.paired and vs.verdict == "tie" and vs.lo < 0 < vs.hi and vs.diff == pytest.approx(-1 / 30)
    assert vs.material and vs.latency_saving_s > 0.5
    pf = to_plan_file(res)
    top = next(c for c in pf.competitors if c.model_id == "big" and c.aggregation == "greedy")
    assert top.paired and top.verdict == "tie" and top.diff == pytest.approx(-1 / 30) and top.latency_saving_s > 0.5
    assert pf.selection == res.why_chosen
    # --prefer most-accurate keeps the most accurate one
    res = plan(prof, [small, big], 5.0, prefer="most-accurate")
    assert res.chosen == res.most_accurate


def test_a_saving_inside_the_prediction_intervals_is_not_taken(prof):
    """Same model: greedy vs one more decode step is no material saving, so the higher point estimate wins."""
    probs = pool_table("small", set(range(15))).problems
    for p in probs[15:18]:  # the sampled configuration is right on 3 more problems, at one more step
        p.samples = [SampleRecord(answer="7", correct=True, tokens=30, finished=True)] * 4
    t = pool_table("small", set(range(15))).model_copy(update={"problems": probs})
    t.rows = accuracy_rows(probs, [32], None, ["greedy", "majority"])
    res = plan(prof, [t], 5.0)
    c = res.config(res.chosen)
    assert c["aggregation"] == "majority" and res.accuracy[res.chosen] == pytest.approx(0.6)
    g = _greedy(res, "small")
    vs = next(x for x in res.competitors() if x.other == g)
    assert not vs.material and "not material" in vs.saving_how


def test_disjoint_problems_are_unpaired_and_flagged(prof):
    small = pool_table("small", set(range(14)) | {16})
    big = pool_table("big", set(range(16)), ids=[f"object_counting/{i}" for i in range(30, 60)])
    res = plan(prof, [small, big], 5.0)
    cmp = res.competitors()
    assert cmp and all(
        not c.paired and "only 0 shared problems" in c.how
        for c in cmp
        if res.config(c.other)["model_id"] != res.config(res.chosen)["model_id"]
    )
    assert not res.warnings


def test_fewer_than_ten_shared_problems_is_unpaired_and_said():
    a = pool_table("small", {1, 2})
    b = pool_table("big", {1}, ids=[f"object_counting/{i}" for i in range(21, 51)])  # 9 shared: 21..29
    p = pairing(a, b, ("a.json", "b.json"))
    assert not p.paired and "only 9 shared problems" in p.why and p.warning is None
    assert pairing(a, pool_table("big", {1}, ids=[f"object_counting/{i}" for i in range(20, 50)])).paired


def test_tables_on_different_task_file_versions_are_not_paired_one_warning(prof):
    small = pool_table("small", set(range(9)), task_file="a" * 64)
    big = pool_table("big", set(range(16)), task_file="b" * 64)
    res = plan(prof, [small, big], 5.0, table_paths=["s.json", "b.json"])
    assert len(res.warnings) == 1 and "different versions" in res.warnings[0] and "s.json" in res.warnings[0]
    assert "\n" not in res.warnings[0]
    assert all(not c.paired for c in res.competitors() if res.config(c.other)["model_id"] == "small")
    # older tables without the file hash: a shared id with another target is another version too
    old = [t.model_copy(update={"task_file_sha256": None}) for t in (small, big)]
    old[1].problems[3] = old[1].problems[3].model_copy(update={"target": "8"})
    p = pairing(*old)
    assert not p.paired and "object_counting/3" in p.warning


def test_bootstrap_is_reproducible_under_its_seed(prof):
    rng = np.random.default_rng(5)
    d = rng.normal(0.05, 0.5, size=(3, 40))
    a, b = paired_diff(d), paired_diff(d)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c = paired_diff(d, seed=1)
    assert not np.array_equal(a[1], c[1])  # the seed matters
    small = pool_table("small", set(range(14)) | {16})
    big = pool_table("big", set(range(16)))
    r1, r2 = plan(prof, [small, big], 5.0), plan(prof, [small, big], 5.0)
    assert [(c.diff, c.lo, c.hi) for c in r1.competitors()] == [(c.diff, c.lo, c.hi) for c in r2.competitors()]


def test_problem_scores_average_to_every_row_of_the_shipped_tables():
    for path in sorted((ROOT / "tables").glob("*.json")):
        t = load_table(path)
        for r in t.rows:
            s = problem_scores(t.problems, r.budget, r.aggregation)
            assert s[:, 0 if r.aggregation == "greedy" else r.k - 1].mean() == pytest.approx(r.accuracy, abs=1e-12), (
                path,
                r,
            )


def test_shipped_object_counting_tables_choose_the_1_5b_over_the_noise_rule():
    """The issue's case on its own tables (latency from a synthetic two-model profile: 0.5B fast, 1.5B ~4x slower)."""
    t05 = load_table(ROOT / "tables" / "object_counting-qwen0.5b-terse.json")
    t15 = load_table(ROOT / "tables" / "object_counting-qwen1.5b-terse.json")
    p = sy.device_profile(
        [sy.model_profile(t05.model_id, FAST, noise=0.02), sy.model_profile(t15.model_id, SLOW, noise=0.02)]
    )
    res = plan(p, [t05, t15], 3.0)
    c = res.config(res.chosen)
    assert (c["model_id"], c["n"], c["aggregation"]) == (t15.model_id, 4, "majority")
    one = next(
        i
        for i in range(len(res))
        if res.config(i)["model_id"] == t05.model_id
        and res.n[i] == 1
        and res.config(i)["aggregation"] == "majority"
        and res.feasible[i]
    )
    vs = res.comparator.compare(res.chosen, [one])[0]
    assert vs.paired and vs.verdict == "win" and vs.lo > 0.05
    opt = res.optimism()
    assert opt is not None and opt[0] > 0 and opt[1] >= 2


def test_eval_prints_every_accuracy_with_its_interval_and_whether_rows_separate(monkeypatch):
    from rich.console import Console

    from edgekit.cli import eval_cmd

    def printed(t):
        con = Console(record=True, width=200, file=open("/dev/null", "w"))
        monkeypatch.setattr(eval_cmd, "console", con)
        eval_cmd.render_table(t)
        return con.export_text()

    few = pool_table("small", {0, 1}, n=5)
    out = printed(few)
    assert "40.0 % [11.8, 76.9]" in out and "too few to separate" in out
    # 30 problems, every sample right on 10, greedy right on 25 more: greedy is better beyond noise
    t = pool_table("small", set(range(10)))
    for p in t.problems[10:25]:
        p.greedy = SampleRecord(answer="7", correct=True, tokens=29, finished=True)
    t.rows = accuracy_rows(t.problems, [32], None, ["greedy", "majority"])
    out = printed(t)
    assert "83.3 % [" in out and "E[steps]" in out and "4 of 4 rows are below the best (greedy) beyond noise" in out
    tied = pool_table("small", set(range(10)))
    assert "no row is separated from the best" in printed(tied)


def test_the_frontier_fits_80_columns_and_the_why_lines_name_each_competitor(prof):
    from rich.console import Console

    from edgekit.cli.render_plan import render_frontier, why_lines

    small = pool_table("small", set(range(14)) | {16})
    big = pool_table("big", set(range(16)))
    res = plan(prof, [small, big], 5.0)
    con = Console(record=True, width=80, file=open("/dev/null", "w"))
    con.print(render_frontier(res, 80))
    text = con.export_text()
    assert "…" not in text and max(len(x) for x in text.splitlines()) <= 80
    assert "small B=32 n=1" in text and "big B=32 n=1" in text
    wide = Console(record=True, width=200, file=open("/dev/null", "w"))
    wide.print(render_frontier(res, 200))
    assert "acc. from" in wide.export_text()  # wide terminals keep every column
    lines = why_lines(res)
    assert lines[0].startswith("why: chose small") and "a tie" in lines[0]
    assert any(
        x.startswith("  vs big B=32 n=1 greedy (53.3 %): -3.3 pts [")
        and "(paired, 30 problems): tie" in x
        and "beyond both prediction intervals" in x
        for x in lines
    )


def test_the_task_file_hash_is_the_same_for_every_template_and_split():
    from edgekit.evaluate.tasks import load_task

    a = load_task("bigbench:object_counting", template="terse", split="0:5")
    b = load_task("bigbench:object_counting", template="cot", split="10:20")
    assert a.source_sha256 == b.source_sha256 and len(a.source_sha256) == 64 and a.sha256 != b.sha256
    assert load_task("bigbench:strategyqa", template="terse").source_sha256 != a.source_sha256


def test_the_chosen_accuracy_is_marked_optimistic_and_a_heldout_figure_is_shown_beside_it(prof):
    from edgekit.cli.render_plan import accuracy_line

    res = plan(prof, [pool_table("small", set(range(14)) | {16}), pool_table("big", set(range(16)))], 5.0)
    line = accuracy_line(res)
    assert "optimistic" in line and "held out: not measured" in line
    assert "held out: 41.0 % [30.0, 52.0] (verify run)" in accuracy_line(res, (0.41, 0.30, 0.52, "verify run"))
    pf = to_plan_file(res)
    assert pf.predicted.accuracy_optimism is not None and pf.predicted.accuracy_optimism >= 0
    assert pf.predicted.accuracy_selected_from >= 2 and "bootstrap" in pf.predicted.accuracy_optimism_how


def test_planner_value_runs_a_grammar_constrained_configuration_with_its_grammar():
    import sys
    from types import SimpleNamespace

    from edgekit.evaluate.tasks import load_task

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import planner_value as pv
    finally:
        sys.path.pop(0)
    seen = []

    class FakeRuntime:
        def generate(self, messages, options):
            seen.append(options)
            return SimpleNamespace(answer="A", timings=SimpleNamespace(total_s=0.1))

    task = load_task("bigbench:date_understanding", template="terse", split="0:2")
    cfg = {
        "n": 3,
        "budget": 16,
        "temperature": 0.8,
        "top_p": 0.95,
        "aggregation": "majority",
        "extractor": "choice",
        "answer_format": "answer",
    }
    out = pv.run_config(FakeRuntime(), task, cfg, 0)
    assert out["n_problems"] == 2 and len(seen) == 2
    assert all(o.grammar and "Answer: " in o.grammar and o.n == 3 and o.max_tokens == 16 for o in seen)
    assert seen[0].seed != seen[1].seed  # the eval's per-problem seeds
    free = pv.run_config(FakeRuntime(), task, {**cfg, "answer_format": None}, 0)
    assert free["n_problems"] == 2 and seen[-1].grammar is None
