"""make_plan (what `edgekit plan` calls) on the committed profile and tables of this repo."""

from pathlib import Path

import pytest

from edgekit.errors import SchemaError, UsageError
from edgekit.plan import to_plan_file
from edgekit.plan.make import make_plan, parse_duration

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "ci-2core-amd-epyc.json"
T05 = ROOT / "tables" / "object_counting-qwen0.5b-cot.json"
T15 = ROOT / "tables" / "object_counting-qwen1.5b-terse.json"


def test_committed_profile_and_table_plan(tmp_path):
    res, written = make_plan(PROFILE, [T05], 30.0, output=tmp_path / "plan.json")
    pf = to_plan_file(res)
    assert pf.chosen.model_id == "qwen2.5-coder-0.5b-instruct" and written.exists()
    assert pf.predicted.latency_at_percentile_s <= 30.0
    # a tighter target never picks a more accurate configuration
    tight, _ = make_plan(PROFILE, [T05], 5.0)
    assert to_plan_file(tight).predicted.accuracy <= pf.predicted.accuracy + 1e-12


def test_unprofiled_uncached_catalogue_model_plans_from_its_recorded_header(tmp_path, monkeypatch):
    """A fresh machine (nothing downloaded) plans the README's example the same as one with the 1.5B cached: the
    cross-model estimate reads the header facts the catalogue records for the file its sha256 pins."""
    from edgekit.models.store import is_cached, lookup

    if not is_cached(lookup("qwen2.5-coder-1.5b-instruct")):
        pytest.skip("needs qwen2.5-coder-1.5b-instruct cached (`edgekit models pull qwen2.5-coder-1.5b-instruct`)")
    cached = to_plan_file(make_plan(PROFILE, [T05, T15], 4.0)[0]).model_dump(mode="json")
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path / "empty-cache"))
    fresh = to_plan_file(make_plan(PROFILE, [T05, T15], 4.0)[0]).model_dump(mode="json")
    for doc in (cached, fresh):
        doc.pop("created", None)
    assert fresh == cached
    assert fresh["chosen"]["model_id"] == "qwen2.5-coder-1.5b-instruct"


def test_unprofiled_uncached_model_without_header_facts_names_the_fix(tmp_path, monkeypatch):
    import dataclasses

    from edgekit.models.catalog import CATALOG

    e = CATALOG["qwen2.5-coder-1.5b-instruct"]
    monkeypatch.setitem(CATALOG, e.id, dataclasses.replace(e, header=None))
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(SchemaError) as ei:
        make_plan(PROFILE, [T05, T15], 4.0)
    assert "edgekit models pull qwen2.5-coder-1.5b-instruct" in ei.value.one_line()


@pytest.mark.parametrize("text,secs", [("2s", 2.0), ("500ms", 0.5), ("1.5", 1.5)])
def test_durations(text, secs):
    assert parse_duration(text) == pytest.approx(secs)


def test_bad_target_and_no_tables():
    with pytest.raises(UsageError):
        make_plan(PROFILE, [T05], 0)
    with pytest.raises(UsageError):
        make_plan(PROFILE, [], 2.0)
    with pytest.raises(UsageError):
        parse_duration("soon")
