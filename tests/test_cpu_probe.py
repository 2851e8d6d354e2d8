"""The kernel probe (issue: never crash on the CPU edgekit was installed on).

The probe children are real: they load SmolLM2 through llama.cpp; the faults are real too (the
child reads address 0 through ctypes and dies by SIGSEGV, or sleeps past the timeout).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edgekit.errors import BackendError, UsageError
from edgekit.host import kernels
from edgekit.host.cpu import has_amx, isa_flags

SMOL = "smollm2-135m-instruct"


@pytest.fixture
def probe_home(tmp_path, monkeypatch):
    """A private probe cache; nothing memoised from other tests."""
    from edgekit.engines import llamacpp_probe as probe

    monkeypatch.setenv("EDGEKIT_PROBE_DIR", str(tmp_path / "probe"))
    monkeypatch.delenv("EDGEKIT_EXTRA_BUFFERS", raising=False)
    monkeypatch.delenv("EDGEKIT_PROBE_FAULT", raising=False)
    monkeypatch.setattr(probe, "_memo", {})
    return tmp_path / "probe"


def _choose(smol_path, **kw):
    from edgekit.engines import llamacpp_probe as probe
    from edgekit.engines.llamacpp_core import ll
    from edgekit.models.gguf import check_gguf

    info = check_gguf(smol_path)
    types = kw.pop("tensor_types", info.extra["tensor_types"])
    return probe.choose(
        str(smol_path),
        model_bytes=info.file_size,
        tensor_types=types,
        gpu_layers=0,
        threads=2,
        cpu_model="test CPU",
        ll=ll,
    )


def test_a_child_killed_by_a_signal_is_a_verdict_and_the_next_configuration_is_used(smol_path, probe_home, monkeypatch):
    monkeypatch.setenv("EDGEKIT_PROBE_FAULT", "segv:default")
    c = _choose(smol_path)
    v = {x.config: x for x in c.verdicts}
    assert v["default"].ok is False and v["default"].how == "killed by SIGSEGV"
    assert v["plain"].ok and v["plain"].decode_tok_s > 0
    assert c.config == "plain" and c.use_extra_bufts is False and c.source == "probe"
    # the verdict is cached: a second choice (fresh process memory) runs no child -- with every
    # configuration now set to crash, a re-probe would fail
    from edgekit.engines import llamacpp_probe as probe

    monkeypatch.setattr(probe, "_memo", {})
    monkeypatch.setenv("EDGEKIT_PROBE_FAULT", "segv:*")
    again = _choose(smol_path)
    assert again.config == "plain" and again.source == "cache"
    # ... and invalidated when the key changes (other tensor types): probed again, and now nothing survives
    with pytest.raises(BackendError) as e:
        _choose(smol_path, tensor_types={2: 1, 99: 1})
    assert "every llama.cpp kernel configuration crashed" in e.value.message and "CMAKE_ARGS" in e.value.fix


def test_a_hung_child_is_a_verdict(smol_path, probe_home, monkeypatch):
    monkeypatch.setenv("EDGEKIT_PROBE_FAULT", "hang:default")
    monkeypatch.setenv("EDGEKIT_PROBE_TIMEOUT", "20")
    c = _choose(smol_path)
    v = {x.config: x for x in c.verdicts}
    assert v["default"].how.startswith("hung: no answer in 20 s") and not v["default"].ok
    assert c.config == "plain"


def test_a_forced_configuration_that_crashes_is_refused_not_loaded(smol_path, probe_home, monkeypatch):
    monkeypatch.setenv("EDGEKIT_EXTRA_BUFFERS", "on")
    monkeypatch.setenv("EDGEKIT_PROBE_FAULT", "segv:default")
    with pytest.raises(BackendError) as e:
        _choose(smol_path)
    assert "EDGEKIT_EXTRA_BUFFERS=on crashes in the probe" in e.value.message and "killed by SIGSEGV" in e.value.message
    monkeypatch.setenv("EDGEKIT_EXTRA_BUFFERS", "off")  # the other one is probed on its own and used
    assert _choose(smol_path).config == "plain"


def test_bad_mode_and_corrupt_cache(smol_path, probe_home, monkeypatch, caplog):
    monkeypatch.setenv("EDGEKIT_EXTRA_BUFFERS", "bogus")
    with pytest.raises(UsageError) as e:
        kernels.requested_mode()
    assert "auto, on or off" in e.value.fix
    monkeypatch.delenv("EDGEKIT_EXTRA_BUFFERS")
    first = _choose(smol_path)
    files = list(probe_home.glob("*.json"))
    assert len(files) == 1 and first.source == "probe"
    files[0].write_text("{not json")
    from edgekit.engines import llamacpp_probe as probe

    monkeypatch.setattr(probe, "_memo", {})
    with caplog.at_level("DEBUG", logger="edgekit.probe"):
        again = _choose(smol_path)
    assert again.source == "probe" and "ignored" in caplog.text  # re-probed, with a debug line
    assert json.loads(files[0].read_text())["version"] == kernels.PROBE_VERSION  # rewritten


def test_the_engine_loads_with_the_probed_configuration_and_says_so(smol_path, probe_home, monkeypatch):
    from edgekit.runtime import Runtime

    monkeypatch.setenv("EDGEKIT_PROBE_FAULT", "segv:default")
    with Runtime(str(smol_path), n_ctx=512, max_n=2) as rt:
        r = rt.generate("What is 2+2?", max_tokens=4)
    assert r.timings.kernels == "plain" and rt.engine.kernels.use_extra_bufts is False
    assert r.timings.threads in (1, 2)


def test_cli_exit_2_one_line_when_every_configuration_crashes(smol_path, tmp_path):
    env = {**os.environ, "EDGEKIT_PROBE_DIR": str(tmp_path / "p"), "EDGEKIT_PROBE_FAULT": "segv:*"}
    p = subprocess.run(
        [sys.executable, "-m", "edgekit.cli.main", "run", "hi", "-m", str(smol_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "crashed" in lines[0] and "CMAKE_ARGS" in lines[0] and "Traceback" not in p.stderr


def test_device_json_shows_cpu_support(tmp_path):
    env = {**os.environ, "EDGEKIT_PROBE_DIR": str(tmp_path / "p")}
    p = subprocess.run(
        [sys.executable, "-m", "edgekit.cli.main", "device", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    d = json.loads(p.stdout)
    assert d["cpu_isa"] == isa_flags() and d["kernel_mode"] == "auto"
    assert d["usable_cpus"]["usable"] >= 1 and d["llama_features"]
    assert d["kernel_probes"] == []  # nothing probed in this fresh folder


@pytest.mark.skipif(
    not has_amx(isa_flags()), reason="this CPU reports no AMX (amx_tile): the AMX host test runs only there"
)
def test_on_an_amx_host_a_real_model_runs_through_runtime(probe_home):
    """The README's default install on an AMX host: no rebuild, the probe picks what works."""
    from edgekit.runtime import Runtime

    with Runtime("qwen2.5-coder-0.5b-instruct", n_ctx=1024, max_n=4) as rt:
        r = rt.generate("How many legs do 3 spiders have?", n=4, max_tokens=32, seed=0)
    assert r.timings.generated_tokens > 0 and r.timings.kernels in ("default", "plain")


def test_a_crash_only_when_numpy_loads_first_is_named_as_a_library_conflict(smol_path, probe_home, monkeypatch):
    """Seen on an H200 host: every configuration crashed in the child (numpy's libraries loaded before
    llama.cpp's), yet survived with llama_cpp imported first. The error names that, not the kernels."""
    monkeypatch.setenv("EDGEKIT_PROBE_FAULT", "numpyfirst:*")
    with pytest.raises(BackendError) as e:
        _choose(smol_path)
    assert "only when numpy's libraries are loaded before it" in e.value.message
    assert "LD_PRELOAD" in e.value.fix and "CMAKE_ARGS" not in e.value.fix
