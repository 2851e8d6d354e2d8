"""GPU offload and GPU memory, testable on a CPU: --gpu-layers reaches the engine and the profile,
NVML memory readings become the profile's peak_vram_mb (fake NVML), bad values fail early."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from edgekit.device.thermal import ThermalSampler
from edgekit.errors import UsageError
from edgekit.power.nvml import NvmlMeter
from edgekit.profile.sweep import SweepConfig, profile_model, vram_figure
from edgekit.schemas.checks import check_gpu_layers

try:  # tests/ without __init__.py: pytest puts tests/ on sys.path
    from test_power import FakeNvml
except ImportError:  # pragma: no cover - tests/ as a package
    from tests.test_power import FakeNvml

SMOL = "smollm2-135m-instruct"


class GrowingNvml(FakeNvml):
    """Device memory in use: 500 MiB until ``grow()``, then 500 + ``extra_mib``."""

    def __init__(self, extra_mib=1200.0, **kw):
        super().__init__(**kw)
        self.used = 500 * 2**20
        self.extra = extra_mib * 2**20

    def grow(self):
        self.used += self.extra

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(total=141 * 2**30, used=self.used, free=141 * 2**30 - self.used)


def test_nvml_memory_used_mb():
    assert NvmlMeter(0, nvml=FakeNvml()).memory_used_mb() == 0.0
    g = GrowingNvml()
    m = NvmlMeter(0, nvml=g)
    assert m.memory_used_mb() == pytest.approx(500.0)
    g.grow()
    assert m.memory_used_mb() == pytest.approx(1700.0)
    assert NvmlMeter(0, nvml=FakeNvml(init_fails=True)).memory_used_mb() is None  # no driver: None, never 0


def test_thermal_sampler_records_first_and_peak_gpu_memory(tmp_path):
    g = GrowingNvml(extra_mib=1000.0)
    with ThermalSampler(tmp_path, nvml=g, interval_s=0.01) as ts:
        time.sleep(0.05)
        g.grow()
        time.sleep(0.05)
    s = ts.summary()
    assert s["gpu_mem_used_start_mb"] == pytest.approx(500.0)
    assert s["gpu_mem_used_peak_mb"] == pytest.approx(1500.0)


def test_thermal_sampler_without_gpu_has_no_memory(tmp_path):
    with ThermalSampler(tmp_path, nvml=FakeNvml(init_fails=True), interval_s=0.01) as ts:
        time.sleep(0.02)
    s = ts.summary()
    assert s["gpu_mem_used_start_mb"] is None and s["gpu_mem_used_peak_mb"] is None


def test_vram_figure():
    f = vram_figure({"gpu_mem_used_start_mb": 500.0, "gpu_mem_used_peak_mb": 1500.0}, "cuda", 0.5)
    assert f.method == "measured" and f.unit == "MB" and f.value == pytest.approx(1000 * 2**20 / 1e6)
    assert "NVML" in f.source and "before the first load" in f.source
    cpu = vram_figure({"gpu_mem_used_start_mb": 500.0, "gpu_mem_used_peak_mb": 1500.0}, "cpu", 0.5)
    assert cpu.value is None and "CPU build" in cpu.note
    blind = vram_figure({"gpu_mem_used_start_mb": None, "gpu_mem_used_peak_mb": None}, "cuda", 0.5)
    assert blind.value is None and "no NVML memory reading" in blind.note
    # other processes freeing memory during the sweep never gives a negative figure
    assert vram_figure({"gpu_mem_used_start_mb": 900.0, "gpu_mem_used_peak_mb": 900.0}, "cuda", 0.5).value == 0.0


@pytest.mark.parametrize(
    "value,engine,needle",
    [
        (-2, None, "integer >= -1"),
        (1.5, None, "integer >= -1"),
        (True, None, "integer >= -1"),
        (-1, "onnx", "applies to the llama.cpp engine"),
        (4, "openai", "applies to the llama.cpp engine"),
    ],
)
def test_bad_gpu_layers(value, engine, needle):
    with pytest.raises(UsageError, match=needle):
        check_gpu_layers(value, engine)


def test_good_gpu_layers():
    assert check_gpu_layers(None, "onnx") is None
    assert check_gpu_layers(-1, "llama.cpp") == -1 and check_gpu_layers(0) == 0 and check_gpu_layers(99) == 99


def test_sweep_validates_gpu_layers_before_loading():
    with pytest.raises(UsageError, match="llama.cpp engine"):
        SweepConfig(gpu_layers=-1, engine="onnx").validate(None)


def test_profile_records_gpu_layers_cpu_build_has_no_vram(tmp_path):
    """The requested offload is recorded; on this CPU build the GPU memory figure says why it is absent."""
    cfg = SweepConfig(
        prompt_lengths=[16],
        contexts=[0],
        ns=[1, 2],
        decode_steps=3,
        reps=1,
        load_reps=1,
        idle_s=0.1,
        n_ctx=256,
        gpu_layers=-1,
    )
    prof = profile_model(SMOL, cfg, output=tmp_path / "p.json", device_name="ci-test")
    mp = prof.model(SMOL)
    assert mp.gpu_layers == -1
    import llama_cpp

    if not llama_cpp.llama_supports_gpu_offload():
        assert mp.peak_vram_mb.value is None and "CPU build" in mp.peak_vram_mb.note


def _cli(*args):
    e = {k: v for k, v in os.environ.items() if k != "EDGEKIT_DEBUG"}
    return subprocess.run(
        [sys.executable, "-m", "edgekit.cli.main", *args], capture_output=True, text=True, timeout=300, env=e
    )


@pytest.mark.parametrize(
    "args,needle",
    [
        (["profile", "--gpu-layers", "-3"], "invalid --gpu-layers"),
        (["profile", "--engine", "onnx", "--gpu-layers", "-1"], "--gpu-layers applies to the llama.cpp engine"),
        (["run", "hi", "--gpu-layers", "-5"], "invalid --gpu-layers"),
        (
            ["run", "hi", "--engine", "openai", "--base-url", "http://127.0.0.1:9/v1", "--gpu-layers", "-1"],
            "--gpu-layers applies to the llama.cpp engine",
        ),
    ],
)
def test_cli_bad_gpu_layers_one_line(args, needle):
    r = _cli(*args)
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr


def test_cli_run_gpu_layers_reaches_the_result():
    r = _cli(
        "run", "What is 2 + 3?", "--model", SMOL, "--max-tokens", "8", "--gpu-layers", "-1", "--json", "--ctx", "512"
    )
    assert r.returncode == 0, r.stderr
    import json

    assert json.loads(r.stdout)["extra"]["gpu_layers"] == -1
