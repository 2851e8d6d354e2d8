"""An interrupted or failed `edgekit profile` never removes measured data.

Real sweeps of smollm2-135m (tiny: 2 prompt lengths, 2 decode points, 2 reps) through the real sweep
code; interruptions are injected deterministically (a progress callback raising KeyboardInterrupt, a
wrapped ``Runtime.generate`` raising after k calls) and, for the CLI, as a real SIGINT to a
subprocess once it has the model loaded.
"""

import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgekit.errors import EdgekitError, SchemaError, UsageError
from edgekit.profile.sweep import ProfileInterrupted, SweepConfig, partial_path, profile_model
from edgekit.schemas.profile import DeviceProfile, load_profile

SMOL = "smollm2-135m-instruct"
REPO = Path(__file__).resolve().parents[1]
# the CLI arguments of the tiny sweep (same points as tiny())
TINY_ARGS = ["--prompt-lengths", "16,32", "--contexts", "0", "--ns", "1,2", "--steps", "4", "--reps", "2"]


def tiny() -> SweepConfig:
    return SweepConfig(
        prompt_lengths=[16, 32], contexts=[0], ns=[1, 2], decode_steps=4, reps=2, load_reps=1, idle_s=0.1, n_ctx=256
    )


def stop_at(n_stage_calls: int, prefix: str, exc=KeyboardInterrupt):
    """A progress callback that raises ``exc`` at its ``n``-th stage starting with ``prefix``."""
    seen = []

    def progress(stage, done, total):
        if stage.startswith(prefix):
            seen.append(stage)
            if len(seen) == n_stage_calls:
                raise exc

    return progress


def models_block(text: str) -> str:
    """The JSON text of the "models" list up to the end of its first entry."""
    start = text.index('"models": [')
    return text[start : text.index("\n    }", start) + 6]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A complete profile of smollm2 (bytes of the file)."""
    out = tmp_path_factory.mktemp("base") / "p.json"
    profile_model(SMOL, tiny(), output=out, device_name="ci-test")
    prof = load_profile(out)
    assert [m.is_partial for m in prof.models] == [False] and prof.models[0].partial is None
    assert '"partial"' not in out.read_text()  # complete entries serialise exactly as before the flag existed
    return out.read_bytes()


def seeded(tmp_path, base) -> Path:
    p = tmp_path / "p.json"
    p.write_bytes(base)
    return p


# --- the library: profile_model ---------------------------------------------------------------


def test_interrupted_append_keeps_the_complete_entry(tmp_path, base):
    p = seeded(tmp_path, base)
    old = json.loads(base)["models"][0]
    # 3rd prefill measurement = rep 2 of 16 tok: rep 1 of both lengths done, no decode
    with pytest.raises(ProfileInterrupted) as ei:
        profile_model(SMOL, tiny(), output=p, existing=load_profile(p), progress=stop_at(3, "prefill"))
    e = ei.value
    assert isinstance(e, KeyboardInterrupt) and e.saved_to == p
    assert "its complete entry is kept" in e.message and f"saved beside it in {p}" in e.message

    text = p.read_text()
    assert models_block(base.decode()) in text  # the old entry, byte for byte, still first in the file
    raw = json.loads(text)
    assert [m.get("partial") for m in raw["models"]] == [None, True]
    assert raw["models"][0] == old
    assert raw["device"] == json.loads(base)["device"] and raw["created"] == json.loads(base)["created"]

    prof = load_profile(p)
    assert prof.model(SMOL).model_dump() == prof.models[0].model_dump()  # lookup prefers the complete entry
    part = prof.partial_models()[0]
    assert [(x.prompt_tokens, x.prefill_s.reps) for x in part.prefill] == [(16, 1), (32, 1)]
    assert part.decode == [] and part.load_s.reps == 1 and part.model.arch == "llama"
    assert part.gaps[0] == "sweep stopped early at prefill 16 tok (rep 2/2): interrupted (Ctrl-C)"
    for g in (
        "prefill 16 tok: 1 of 2 reps",
        "prefill 32 tok: 1 of 2 reps",
        "decode ctx=32 n=1: 0 of 2 reps",
        "decode ctx=32 n=2: 0 of 2 reps",
        "drift: last reference run not measured",
    ):
        assert g in part.gaps


def test_interrupted_without_append_leaves_the_file_and_writes_beside_it(tmp_path, base):
    p = seeded(tmp_path, base)
    # 3rd decode measurement = rep 2 of ctx=32 n=1: prefill complete, decode 1 rep each
    with pytest.raises(ProfileInterrupted) as ei:
        profile_model(SMOL, tiny(), output=p, progress=stop_at(3, "decode"))
    side = tmp_path / "p.partial.json"
    assert ei.value.saved_to == side and f"{p} is left unchanged" in ei.value.message
    assert p.read_bytes() == base
    part = load_profile(side)
    assert [m.is_partial for m in part.models] == [True]
    mp = part.models[0]
    assert [x.prefill_s.reps for x in mp.prefill] == [2, 2]
    assert sorted((d.context_tokens, d.n, d.step_s.reps) for d in mp.decode) == [(32, 1, 1), (32, 2, 1)]
    assert "prefill 16 tok: 2 of 2 reps" not in " ".join(mp.gaps) and "decode ctx=32 n=2: 1 of 2 reps" in mp.gaps
    # a second interruption does not overwrite the first partial file either
    with pytest.raises(ProfileInterrupted) as ei:
        profile_model(SMOL, tiny(), output=p, progress=stop_at(1, "decode"))
    assert ei.value.saved_to == tmp_path / "p.partial-2.json" and partial_path(p) == tmp_path / "p.partial-3.json"
    assert load_profile(side).model_dump() == part.model_dump() and p.read_bytes() == base


def test_a_failure_mid_sweep_keeps_the_old_entry(tmp_path, base, monkeypatch):
    from edgekit.runtime import Runtime

    real, calls = Runtime.generate, []

    def failing(self, *a, **kw):  # the real generate, until the 11th call:
        calls.append(1)  # warm-up + 3 drift refs + 4 prefill + 2 decode (rep 1), then decode rep 2
        if len(calls) == 11:
            raise RuntimeError("llama_decode returned -3 (simulated)")
        return real(self, *a, **kw)

    monkeypatch.setattr(Runtime, "generate", failing)
    p = seeded(tmp_path, base)
    with pytest.raises(EdgekitError) as ei:
        profile_model(SMOL, tiny(), output=p, existing=load_profile(p))
    e = ei.value
    assert type(e) is EdgekitError and isinstance(e.__cause__, RuntimeError) and e.fix
    assert "\n" not in e.one_line() and "RuntimeError: llama_decode returned -3" in e.message
    assert e.saved_to == p and "its complete entry is kept" in e.message
    assert models_block(base.decode()) in p.read_text()
    prof = load_profile(p)
    assert prof.models[0].model_dump() == load_profile_bytes(base, tmp_path).models[0].model_dump()
    part = prof.partial_models()[0]
    assert [(x.prompt_tokens, x.prefill_s.reps) for x in part.prefill] == [(16, 2), (32, 2)]
    assert sorted((d.context_tokens, d.n, d.step_s.reps) for d in part.decode) == [(32, 1, 1), (32, 2, 1)]
    assert part.gaps[0] == (
        "sweep stopped early at decode ctx=32 n=1 (rep 2/2): RuntimeError: llama_decode returned -3 (simulated)"
    )


def load_profile_bytes(data: bytes, tmp_path) -> DeviceProfile:
    f = tmp_path / "copy-of-base.json"
    f.write_bytes(data)
    return load_profile(f)


def test_an_edgekit_error_mid_sweep_keeps_its_fix_and_names_the_partial_file(tmp_path, base):
    from edgekit.errors import BackendError

    p = seeded(tmp_path, base)
    with pytest.raises(BackendError) as ei:
        profile_model(
            SMOL, tiny(), output=p, progress=stop_at(2, "decode", BackendError("backend died", fix="restart it"))
        )
    assert ei.value.fix == "restart it" and ei.value.message.startswith("backend died; profiling smollm2")
    assert str(tmp_path / "p.partial.json") in ei.value.message and p.read_bytes() == base


def test_interrupted_before_anything_was_measured_writes_nothing(tmp_path, base):
    p = seeded(tmp_path, base)
    with pytest.raises(ProfileInterrupted) as ei:
        profile_model(SMOL, tiny(), output=p, existing=load_profile(p), progress=stop_at(1, "load"))
    assert ei.value.saved_to is None and "nothing was measured" in ei.value.message
    assert p.read_bytes() == base and sorted(x.name for x in tmp_path.iterdir()) == ["p.json"]
    # stopped during the 2nd load: the 1st load time is measured data, saved
    cfg = tiny()
    cfg.load_reps = 2
    with pytest.raises(ProfileInterrupted) as ei:
        profile_model(SMOL, cfg, output=p, existing=load_profile(p), progress=stop_at(2, "load"))
    assert ei.value.saved_to == p and models_block(base.decode()) in p.read_text()
    part = load_profile(p).partial_models()[0]
    assert part.load_s.reps == 1 and part.model.arch == "llama" and part.prefill == [] and part.peak_rss_mb.value > 0
    assert part.gaps[:3] == [
        "sweep stopped early at load: interrupted (Ctrl-C)",
        "load: 1 of 2 reps",
        "prefill 16 tok: 0 of 2 reps",
    ]
    assert "drift: not measured" in part.gaps


def test_a_complete_append_supersedes_the_model_entries_and_keeps_the_others(tmp_path, base):
    raw = json.loads(base)
    other = json.loads(json.dumps(raw["models"][0]))
    other["model"]["id"] = "other-model"
    stale = json.loads(json.dumps(raw["models"][0]))
    stale.update(partial=True, gaps=["sweep stopped early at x: interrupted (Ctrl-C)"])
    raw["models"] = [stale, other, raw["models"][0]]  # a partial first: the loader puts complete ones first
    p = tmp_path / "p.json"
    p.write_text(json.dumps(raw))
    prof = load_profile(p)
    assert [(m.model.id, m.is_partial) for m in prof.models] == [("other-model", False), (SMOL, False), (SMOL, True)]
    profile_model(SMOL, tiny(), output=p, existing=prof)
    after = load_profile(p)
    assert [(m.model.id, m.is_partial) for m in after.models] == [("other-model", False), (SMOL, False)]
    assert after.models[0].model_dump() == prof.models[0].model_dump()


def test_lookup_never_hands_out_a_partial_entry_as_complete(tmp_path, base):
    raw = json.loads(base)
    raw["models"][0].update(
        partial=True, gaps=["sweep stopped early at prefill 16 tok (rep 1/2): interrupted (Ctrl-C)"]
    )
    p = tmp_path / "partial-only.json"
    p.write_text(json.dumps(raw))
    prof = load_profile(p)
    assert prof.complete_models() == [] and len(prof.partial_models()) == 1
    with pytest.raises(SchemaError, match="only a partial entry") as ei:
        prof.model(SMOL)
    assert "--append" in ei.value.fix and "stopped early at prefill 16 tok" in ei.value.message
    assert prof.model(SMOL, allow_partial=True).is_partial
    with pytest.raises(SchemaError, match="has no model"):
        prof.model("nosuch")


def test_ctx_above_the_trained_context_warns_in_one_line(tmp_path):
    cfg = tiny()
    cfg.n_ctx = 16384  # smollm2 was trained for 8192
    warned = []
    with pytest.raises(ProfileInterrupted):  # stop at the first load: the warning comes before measuring
        profile_model(SMOL, cfg, output=tmp_path / "p.json", warn=warned.append, progress=stop_at(1, "load"))
    assert len(warned) == 1 and "\n" not in warned[0]
    assert "--ctx 16384 is above the 8192 tokens" in warned[0] and "(fix: pass --ctx 8192 or less)" in warned[0]
    assert SweepConfig(n_ctx=8192).ctx_warning(8192) is None and SweepConfig().ctx_warning(8192) is None
    with pytest.raises(UsageError, match="--ctx must be >= 1"):
        SweepConfig(n_ctx=0).validate(8192)


def test_default_output_name_keeps_the_whole_model_id():
    from edgekit.cli.profile_cmd import default_output

    assert default_output("qwen2.5-coder-0.5b-instruct", "box") == Path("profiles/box-qwen2.5-coder-0.5b-instruct.json")
    assert default_output("hf:bartowski/Some-Repo/model.Q4_K_M.gguf", "box") == Path("profiles/box-model.Q4_K_M.json")
    assert default_output("/models/tiny.v2.gguf", "my host") == Path("profiles/my-host-tiny.v2.json")
    assert default_output("/models/weights", "box") == Path("profiles/box-weights.json")


# --- the CLI ------------------------------------------------------------------------------------


def cli_env():
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    env.pop("EDGEKIT_DEBUG", None)
    return env


def edgekit(*args, cwd=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "edgekit.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(),
        cwd=cwd,
    )


def drop_none(x):
    if isinstance(x, dict):
        return {k: drop_none(v) for k, v in x.items() if v is not None}
    return [drop_none(v) for v in x] if isinstance(x, list) else x


def lines(s: str) -> list[str]:
    return [x for x in s.splitlines() if x.strip()]


def test_cli_json_and_csv(tmp_path):
    p = tmp_path / "p.json"
    r = edgekit("profile", "-m", SMOL, "-o", str(p), *TINY_ARGS, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert drop_none(doc) == json.loads(p.read_text())  # stdout is the saved profile
    (m,) = doc["models"]
    assert m["model"]["id"] == SMOL and m["partial"] is None  # --json prints every field; the file omits nulls
    assert [x["prompt_tokens"] for x in m["prefill"]] == [16, 32] and len(m["decode"]) == 2
    assert load_profile(p).model(SMOL).prefill[0].prefill_s.reps == 2

    # --csv, and the default output name (no -o): profiles/<host>-<model id>.json in the working directory
    r = edgekit("profile", "-m", SMOL, *TINY_ARGS, "--csv", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = list(csv.reader(io.StringIO(r.stdout)))
    assert rows[0] == ["kind", "prompt_tokens", "context_tokens", "n", "median_s", "iqr_s", "tok_s", "reps"]
    assert [(x[0], x[1], x[2], x[3], x[7]) for x in rows[1:]] == [
        ("prefill", "16", "", "1", "2"),
        ("prefill", "32", "", "1", "2"),
        ("decode_step", "", "32", "1", "2"),
        ("decode_step", "", "32", "2", "2"),
    ]
    assert all(float(x[4]) > 0 and float(x[6]) > 0 for x in rows[1:])
    from edgekit.cli.profile_cmd import default_output

    made = tmp_path / default_output(SMOL, socket.gethostname())
    assert made.exists() and load_profile(made).model(SMOL).decode


def test_cli_default_name_of_a_dotted_model_id(tmp_path):
    # fails on the (malformed) default file before loading any model: the message names the path
    from edgekit.cli.profile_cmd import default_output

    want = default_output("qwen2.5-coder-0.5b-instruct", socket.gethostname())
    assert want.name.endswith("-qwen2.5-coder-0.5b-instruct.json")
    (tmp_path / want).parent.mkdir()
    (tmp_path / want).write_text("{not json")
    r = edgekit("profile", "-m", "qwen2.5-coder-0.5b-instruct", "--append", cwd=tmp_path)
    assert r.returncode == 2 and len(lines(r.stderr)) == 1 and str(want) in r.stderr, r.stderr


def test_cli_append_adds_keeps_and_summarises(tmp_path, base):
    raw = json.loads(base)
    other = json.loads(json.dumps(raw["models"][0]))
    other["model"]["id"] = "other-model"
    stale = json.loads(json.dumps(other))
    stale.update(
        partial=True,
        gaps=[
            "sweep stopped early at decode ctx=32 n=1 (rep 1/2): interrupted (Ctrl-C)",
            "decode ctx=32 n=1: 0 of 2 reps",
        ],
    )
    stale["model"]["id"] = "half-model"
    raw["models"] = [other, stale]  # no smollm2 entry yet
    p = tmp_path / "p.json"
    p.write_text(json.dumps(raw))
    r = edgekit("profile", "-m", SMOL, "-o", str(p), *TINY_ARGS, "--append")
    assert r.returncode == 0, r.stderr
    after = json.loads(p.read_text())
    assert [(m["model"]["id"], m.get("partial")) for m in after["models"]] == [
        ("other-model", None),
        (SMOL, None),
        ("half-model", True),
    ]
    assert after["models"][0] == other and after["models"][2] == stale
    out = r.stdout
    assert f"saved {p} (3 entries):" in out
    assert f"{SMOL}: complete (this run)" in out and "other-model: complete" in out
    assert "half-model: partial: sweep stopped early at decode ctx=32 n=1" in out and "1 point(s) short of reps" in out


def sigint_when_loaded(proc, model_file: str, timeout=120):
    """SIGINT once the child has mmapped the model (it is measuring its load) plus `settle` seconds."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"exited early: {proc.communicate()}")
        try:
            if model_file in Path(f"/proc/{proc.pid}/maps").read_text():
                break
        except OSError:
            pass
        time.sleep(0.05)
    time.sleep(2.0)  # into the idle baseline / warm-up / prefill
    proc.send_signal(signal.SIGINT)
    return proc.communicate(timeout=120)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/maps")
@pytest.mark.parametrize("append", [True, False])
def test_cli_sigint_exits_130_with_one_line_and_keeps_the_data(tmp_path, base, append, smol_path):
    p = seeded(tmp_path, base)
    args = [
        "profile",
        "-m",
        SMOL,
        "-o",
        str(p),
        "--prompt-lengths",
        "16,32",
        "--contexts",
        "0",
        "--ns",
        "1,2",
        "--steps",
        "4",
        "--reps",
        "500",
    ] + (["--append"] if append else [])
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgekit.cli.main", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    out, err = sigint_when_loaded(proc, Path(smol_path).name)
    assert proc.returncode == 130, err
    assert out == "" and len(lines(err)) == 1 and err.startswith("interrupted: profiling smollm2-135m-instruct"), err
    saved = p if append else tmp_path / "p.partial.json"
    assert f"(partial data saved {'beside it in' if append else 'to'} {saved}, labelled partial)" in err
    assert "Traceback" not in err
    if append:
        assert models_block(base.decode()) in p.read_text()
    else:
        assert p.read_bytes() == base and f"{p} is left unchanged" in err
    part = load_profile(saved).partial_models()[-1]
    assert part.model.id == SMOL and part.load_s.reps >= 1 and part.gaps[0].startswith("sweep stopped early at ")
    assert part.gaps[0].endswith("interrupted (Ctrl-C)")
    assert load_profile(saved).model(SMOL, allow_partial=True) is not None


def test_cli_failure_is_one_line_exit_2_and_keeps_the_data(tmp_path, base):
    p = seeded(tmp_path, base)
    code = (
        "import sys\n"
        "from edgekit.runtime import Runtime\n"
        "real, calls = Runtime.generate, []\n"
        "def failing(self, *a, **kw):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 9: raise RuntimeError('llama_decode returned -3 (simulated)')\n"
        "    return real(self, *a, **kw)\n"
        "Runtime.generate = failing\n"
        "from edgekit.cli.main import main\n"
        "main(sys.argv[1:])\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, "profile", "-m", SMOL, "-o", str(p), *TINY_ARGS],
        capture_output=True,
        text=True,
        timeout=300,
        env=cli_env(),
    )
    assert r.returncode == 2, r.stderr
    (line,) = lines(r.stderr)
    assert line.startswith(
        "error: profiling smollm2-135m-instruct stopped at decode ctx=32 n=1 (rep 1/2): RuntimeError"
    )
    assert f"partial data saved to {tmp_path / 'p.partial.json'}" in line and "(fix: " in line
    assert p.read_bytes() == base and load_profile(tmp_path / "p.partial.json").models[0].is_partial


def test_cli_ctx_zero_is_a_one_line_usage_error(tmp_path):
    r = edgekit("profile", "-m", SMOL, "-o", str(tmp_path / "p.json"), "--ctx", "0")
    assert r.returncode == 2 and lines(r.stderr) == [
        "error: --ctx must be >= 1, got 0 (fix: pass --ctx 1 or more, or leave it out)"
    ], r.stderr
    assert not (tmp_path / "p.json").exists()
