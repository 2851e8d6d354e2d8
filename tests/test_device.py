"""Device detection and thermal sampling, on recorded Jetson trees and on this machine."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from rich.console import Console

from edgekit.cli.render_device import render_device
from edgekit.device import (
    ThermalSampler,
    detect_device,
    llama_build,
    nvpmodel_mode,
    parse_nvpmodel_query,
    parse_tegra_release,
)
from edgekit.device.sysinfo import cpu_model, guess_llama_build
from edgekit.power.nvml import JETSON_WHY
from edgekit.schemas.profile import DeviceInfo

try:  # tests/ without __init__.py: pytest puts tests/ on sys.path
    from test_power import FakeNvml
except ImportError:  # pragma: no cover - tests/ as a package
    from tests.test_power import FakeNvml

FIX = Path(__file__).parent / "fixtures" / "sysfs"
ORIN = FIX / "orin_jp6"


def fake_llama(offload: bool, info: bytes, version: str = "0.3.36"):
    return SimpleNamespace(
        __version__=version, llama_supports_gpu_offload=lambda: offload, llama_print_system_info=lambda: info
    )


CUDA_INFO = (
    b"CPU : NEON = 1 | ARM_FMA = 1 | FP16_VA = 1 | DOTPROD = 1 | LLAMAFILE = 1 | OPENMP = 1 | "
    b"CUDA : ARCHS = 870 | USE_GRAPHS = 1 | PEER_MAX_BATCH_SIZE = 128 | "
)


def test_detect_device_orin_fixture():
    r = detect_device(
        ORIN, nvml=FakeNvml(energy=False, power=False, name=b"Orin (nvgpu)"), llama_module=fake_llama(True, CUDA_INFO)
    )
    assert r.is_jetson and r.jetson_model == "NVIDIA Jetson AGX Orin Developer Kit"  # NUL stripped
    assert r.jetson_release == "L4T R36.3.0"
    assert r.nvpmodel_mode == "default: MODE_50W (mode 3)"
    assert "not necessarily the current mode" in r.nvpmodel_note
    assert r.cpu_model == "ARM Cortex-A78AE"
    assert r.name == "NVIDIA Jetson AGX Orin Developer Kit"
    assert (r.llama_build, r.llama_cpp_python, r.gpu_offload) == ("cuda", "0.3.36", True)
    assert [g.name for g in r.gpus] == ["Orin (nvgpu)"]
    sensors = {s.name: s for s in r.power_sensors}
    assert sensors["jetson-ina3221"].available and sensors["jetson-ina3221"].method.startswith(
        "sum of rails: VDD_GPU_SOC"
    )
    assert not sensors["nvml:0"].available and sensors["nvml:0"].why_unavailable == JETSON_WHY
    assert not sensors["rapl"].available and sensors["rapl"].fix
    # host facts are not mixed in from the machine running the test
    assert r.cpu_cores_logical is None and r.ram_total_mb is None and any("host facts" in n for n in r.notes)
    info = r.to_device_info()
    assert isinstance(info, DeviceInfo) and info.jetson_release == "L4T R36.3.0" and info.llama_build == "cuda"
    assert json.loads(r.to_json())["jetson_model"] == r.jetson_model
    text = _render_text(r)
    assert "L4T R36.3.0" in text and "jetson-ina3221" in text and "available" in text


def _render_text(r) -> str:
    c = Console(record=True, width=160)
    c.print(render_device(r))
    return c.export_text()


def test_detect_device_real_machine_is_labelled():
    r = detect_device()
    assert r.cpu_cores_logical == psutil.cpu_count() and r.ram_total_mb == pytest.approx(
        psutil.virtual_memory().total / 2**20
    )
    assert r.gpus or r.nvml_note  # either GPUs, or why none
    assert [s.name for s in r.power_sensors] == ["nvml:0", "jetson-ina3221", "rapl"]
    for s in r.power_sensors:
        assert s.available or (s.why_unavailable and s.fix)
    assert (not r.available_sensors) == any("no power sensor" in n for n in r.notes)
    if r.llama_build is None:
        assert r.llama_note  # llama_cpp missing (or mid-install): said, not guessed
    assert isinstance(r.to_device_info(), DeviceInfo)
    assert r.name and "unknown device" not in r.name
    _render_text(r)


def test_parse_tegra_release_and_cpuinfo(tmp_path):
    assert (
        parse_tegra_release("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64")
        == "L4T R35.4.1"
    )
    assert parse_tegra_release("garbage") is None
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nmodel name\t: Intel(R) Core(TM) i7-1185G7 @ 3.00GHz\n")
    assert cpu_model(tmp_path) == "Intel(R) Core(TM) i7-1185G7 @ 3.00GHz"
    assert cpu_model(tmp_path / "nope") is None


def test_nvpmodel_query_and_default():
    out = "NV Fan Mode:quiet\nNV Power Mode: MAXN\n0\n"
    assert parse_nvpmodel_query(out) == "MAXN (mode 0)"
    calls = []

    def run(cmd, **kw):
        calls.append(cmd)
        return SimpleNamespace(stdout=out, stderr="", returncode=0)

    assert nvpmodel_mode("/", which=lambda n: "/usr/sbin/nvpmodel", run=run) == (
        "MAXN (mode 0)",
        "current mode from `nvpmodel -q`",
    )
    assert calls == [["nvpmodel", "-q"]]
    mode, note = nvpmodel_mode(
        ORIN, which=lambda n: "/usr/sbin/nvpmodel", run=run
    )  # fixture root: never runs the host tool
    assert mode == "default: MODE_50W (mode 3)" and len(calls) == 1 and "nvpmodel not on PATH" in note


def test_llama_build_guess():
    assert llama_build(fake_llama(True, CUDA_INFO))["build"] == "cuda"
    assert llama_build(fake_llama(False, b"CPU : AVX2 = 1 | CUDA = 0 | "))["build"] == "cpu"
    assert guess_llama_build("AVX = 1 | VULKAN = 1 | CUDA = 0", True)[0] == "vulkan"
    assert guess_llama_build("Metal : EMBED_LIBRARY = 1 | CPU : NEON = 1", True)[0] == "metal"
    assert guess_llama_build("CPU : NEON = 1 |", True, platform="linux") == (
        "gpu",
        "GPU offload supported but system info names no backend",
    )
    assert guess_llama_build("", None)[0] is None


def test_llama_not_importable(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    lb = llama_build()
    assert lb["build"] is None and lb["version"] is None and "not importable" in lb["note"]


def test_thermal_sampler_fixture(tmp_path):
    root = tmp_path / "orin"
    shutil.copytree(ORIN, root)
    z = root / "sys/devices/virtual/thermal/thermal_zone9"  # Xavier's fixed 100 C placeholder: ignored
    z.mkdir()
    (z / "type").write_text("PMIC-Die\n")
    (z / "temp").write_text("100000\n")
    fake = FakeNvml(energy=False, power=False, temp_c=44, throttle_mask=0x1 | 0x20)
    with ThermalSampler(root, nvml=fake, interval_s=0.02) as ts:
        time.sleep(0.08)
        for c in range(4):
            (root / f"sys/devices/system/cpu/cpu{c}/cpufreq/scaling_cur_freq").write_text("1190400\n")
        time.sleep(0.08)
    s = ts.summary()
    assert s["cpu_freq_start_mhz"] == pytest.approx(2201.6) and s["cpu_freq_min_mhz"] == pytest.approx(1190.4)
    assert s["max_temp_c"] == pytest.approx(48.031) and s["max_temp_sensor"] == "thermal_zone4/tj-thermal"
    assert s["throttle_reasons"] == ["sw_thermal"]  # gpu_idle is not a slowdown
    assert s["samples"] >= 4 and s["errors"] == []
    assert "gpu0" in ts.samples[0]["temps_c"] and "thermal_zone2/cv0-thermal" not in ts.samples[0]["temps_c"]


def test_thermal_sampler_real_machine_never_invents():
    with ThermalSampler(interval_s=0.02) as ts:
        time.sleep(0.05)
    s = ts.summary()
    assert s["samples"] >= 2
    f = psutil.cpu_freq()
    if f is None or not f.current:
        assert s["cpu_freq_start_mhz"] is None or s["cpu_freq_start_mhz"] > 0
    else:
        assert s["cpu_freq_start_mhz"] > 0
    temps = getattr(psutil, "sensors_temperatures", lambda: {})() or {}
    zones = list(Path("/sys/devices/virtual/thermal").glob("thermal_zone*"))
    if not temps and not zones and not ts._gpu:
        assert s["max_temp_c"] is None  # no sensor: no temperature
