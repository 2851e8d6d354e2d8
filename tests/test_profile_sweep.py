"""A real, tiny profile of gemma-3-270m; failure paths keep what was measured."""

import json
import statistics

import pytest

from edgekit.errors import SchemaError, UsageError
from edgekit.power.base import PowerMeter
from edgekit.profile.sweep import SweepConfig, profile_model
from edgekit.schemas.profile import load_profile

GEMMA = "gemma-3-270m"


def tiny() -> SweepConfig:
    return SweepConfig(
        prompt_lengths=[16, 64], contexts=[0, 96], ns=[1, 2], decode_steps=4, reps=2, load_reps=1, idle_s=0.3, n_ctx=512
    )


class RampMeter(PowerMeter):
    """A power sensor that reads a known 5 W + 1 mW per call, then vanishes after `die_after` reads."""

    name = "test-ramp"
    available = True

    def __init__(self, die_after=None):
        self.calls = 0
        self.die_after = die_after

    def read_energy_mj(self):
        return None

    def read_power_mw(self):
        self.calls += 1
        if self.die_after is not None and self.calls > self.die_after:
            raise FileNotFoundError("in1_input vanished")
        return 5000.0 + self.calls


@pytest.fixture(scope="module")
def gemma_profile(tmp_path_factory):
    out = tmp_path_factory.mktemp("prof") / "p.json"
    prof = profile_model(GEMMA, tiny(), output=out, device_name="ci-test")
    return prof, out


def test_real_tiny_profile_is_consistent(gemma_profile):
    prof, out = gemma_profile
    mp = prof.model(GEMMA)
    assert mp.model.arch == "gemma3" and mp.model.sha256 and mp.threads >= 1
    assert [p.prompt_tokens for p in mp.prefill] == [16, 64]
    for p in mp.prefill:
        assert p.prefill_s.method == "measured" and p.prefill_s.reps == 2 and len(p.prefill_s.samples) == 2
        # tok/s is the median of per-repetition rates (with 2 reps not L / median time: a stall in one
        # repetition on a shared machine pulls those apart)
        rates = [p.prompt_tokens / x for x in p.prefill_s.samples]
        assert p.prefill_s.value > 0 and p.prefill_tok_s.value == pytest.approx(statistics.median(rates))
    pts = {(d.context_tokens, d.n) for d in mp.decode}
    assert pts == {(32, 1), (96, 1), (32, 2)}
    for d in mp.decode:
        assert d.step_s.value > 0 and d.step_s.reps == 2
        assert d.decode_tok_s.value == pytest.approx(statistics.median([d.n / x for x in d.step_s.samples]))
    assert mp.load_s.value > 0 and mp.peak_rss_mb.value > 100
    e = mp.energy
    for fig in (e.idle_power_mw, e.prefill_energy_per_token_mj, e.decode_energy_per_token_mj):
        assert fig.method in ("measured", "unavailable")
        if fig.method == "unavailable":
            assert fig.value is None and fig.note
    assert mp.drift is not None and mp.drift.decode_drift_pct is not None
    assert prof.device.name == "ci-test"


def test_profile_round_trip(gemma_profile):
    prof, out = gemma_profile
    again = load_profile(out)
    assert again.model_dump() == prof.model_dump()


def test_malformed_profile_is_rejected_with_field_and_file(gemma_profile, tmp_path):
    prof, out = gemma_profile
    raw = json.loads(out.read_text())
    raw["models"][0]["prefill"][0]["prompt_tokens"] = "many"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(raw))
    with pytest.raises(SchemaError) as ei:
        load_profile(bad)
    assert "bad.json" in ei.value.message and "prompt_tokens" in ei.value.message
    bad.write_text("{not json")
    with pytest.raises(SchemaError, match="not valid JSON"):
        load_profile(bad)


def test_energy_from_a_sensor_and_a_vanishing_sensor(tmp_path):
    cfg = tiny()
    cfg.prompt_lengths, cfg.contexts, cfg.ns = [16], [0], [1]
    prof = profile_model(GEMMA, cfg, meter=RampMeter(), output=tmp_path / "ok.json")
    e = prof.models[0].energy
    assert e.idle_power_mw.method == "measured" and 5000 < e.idle_power_mw.value < 6000
    assert e.prefill_energy_per_token_mj.method == "measured"
    prof = profile_model(GEMMA, cfg, meter=RampMeter(die_after=12), output=tmp_path / "gap.json")
    mp = load_profile(tmp_path / "gap.json").models[0]
    figs = [mp.energy.prefill_energy_per_token_mj, mp.energy.decode_energy_per_token_mj]
    assert any(f.method == "unavailable" or (f.note and "incomplete" in f.note) for f in figs)
    assert all(f.method == "unavailable" or f.note for f in figs)


def test_interrupted_sweep_still_saves_what_was_measured(tmp_path):
    from edgekit.profile.sweep import ProfileInterrupted

    out = tmp_path / "partial.json"

    def progress(stage, done, total):
        if stage.startswith("decode"):
            raise KeyboardInterrupt

    with pytest.raises(ProfileInterrupted, match="saved to") as ei:  # still a KeyboardInterrupt (CLI: exit 130)
        profile_model(GEMMA, tiny(), output=out, progress=progress)
    assert isinstance(ei.value, KeyboardInterrupt) and ei.value.saved_to == out  # no file was there: saved in place
    mp = load_profile(out).models[0]
    assert mp.partial is True and len(mp.prefill) == 2 and mp.decode == []
    assert mp.gaps[0].startswith("sweep stopped early at decode ctx=32 n=1 (rep 1/2): interrupted")
    assert "decode ctx=96 n=1: 0 of 2 reps" in mp.gaps


def test_bad_sweeps_fail_before_measuring(tmp_path):
    cfg = tiny()
    cfg.prompt_lengths = [4000]
    with pytest.raises(UsageError, match="context"):
        profile_model(GEMMA, cfg, output=tmp_path / "x.json")
    ro = tmp_path / "ro"
    ro.mkdir()
    target = ro / "file"
    target.write_text("")
    with pytest.raises(SchemaError, match="cannot write"):
        profile_model(GEMMA, tiny(), output=target / "p.json")  # a file where a folder must be


class SinkingMeter(RampMeter):
    """A sensor whose readings fall below the idle baseline during the work (what a coarse GPU energy
    counter does for a prefill of a few ms, seen on an H200): energy above idle is negative."""

    name = "test-sinking"

    def read_power_mw(self):
        self.calls += 1
        return 5000.0 - 10 * self.calls


def test_energy_below_idle_is_unavailable_not_a_negative_figure(tmp_path):
    cfg = tiny()
    cfg.prompt_lengths, cfg.contexts, cfg.ns = [16], [0], [1]
    e = profile_model(GEMMA, cfg, meter=SinkingMeter(), output=tmp_path / "p.json").models[0].energy
    for fig in (e.prefill_energy_per_token_mj, e.decode_energy_per_token_mj):
        assert fig.method == "unavailable" and fig.value is None
        assert "not resolvable" in fig.note and "idle baseline" in fig.note
