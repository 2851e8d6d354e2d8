"""Power meters against recorded sysfs trees and a fake NVML module."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgekit.errors import UsageError
from edgekit.power import (
    JetsonMeter,
    NullMeter,
    NvmlMeter,
    PowerSampler,
    RaplMeter,
    best_meter,
    decode_reasons,
    detect_meters,
    estimated_cpu_power_mw,
    trapezoid_mj,
)
from edgekit.power.nvml import JETSON_WHY
from edgekit.power.rapl import NODIR_WHY, NOPERM_FIX, NOPERM_WHY

FIX = Path(__file__).parent / "fixtures" / "sysfs"
PK_MAX = 262143328850


def materialize(name: str, dest: Path) -> Path:
    """Copy a fixture tree to ``dest/name``, restoring ':' in names stored as '%3A'."""
    out = dest / name
    shutil.copytree(FIX / name, out)
    for dirpath, dirnames, filenames in os.walk(out, topdown=False):
        for n in dirnames + filenames:
            if "%3A" in n:
                os.rename(os.path.join(dirpath, n), os.path.join(dirpath, n.replace("%3A", ":")))
    return out


def write_atomic(path: Path, text: str) -> None:
    """Replace a sysfs-like file atomically, so a polling sampler never sees it half-written."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------- fake NVML
class FakeNVMLError(Exception):
    def __init__(self, value: int):
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return {3: "Not Supported", 9: "Driver Not Loaded", 2: "Invalid Argument"}.get(self.value, "Unknown Error")


class FakeNotSupported(FakeNVMLError):
    def __init__(self):
        super().__init__(3)


class FakeNvml:
    """The subset of pynvml edgekit uses. Energy counter rises at ``energy_rate_mw``."""

    NVMLError = FakeNVMLError
    NVMLError_NotSupported = FakeNotSupported
    NVML_TEMPERATURE_GPU = 0

    def __init__(
        self,
        energy=True,
        power=True,
        init_fails=False,
        energy_rate_mw=30000.0,
        power_mw=45000,
        throttle_mask=0,
        temp_c=71,
        name=b"NVIDIA GeForce RTX 4090",
    ):
        self.energy, self.power, self.init_fails = energy, power, init_fails
        self.energy_rate_mw, self.power_mw, self.throttle_mask, self.temp_c, self.name = (
            energy_rate_mw,
            power_mw,
            throttle_mask,
            temp_c,
            name,
        )
        self.t0 = time.monotonic()
        self.inits = 0

    def nvmlInit(self):
        if self.init_fails:
            raise FakeNVMLError(9)
        self.inits += 1

    def nvmlShutdown(self):
        self.inits -= 1

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, i):
        if i != 0:
            raise FakeNVMLError(2)
        return "handle0"

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if not self.energy:
            raise FakeNotSupported()
        return int(123_456_789 + self.energy_rate_mw * (time.monotonic() - self.t0))  # mJ

    def nvmlDeviceGetPowerUsage(self, h):
        if not self.power:
            raise FakeNotSupported()
        return self.power_mw

    def nvmlDeviceGetTemperature(self, h, sensor):
        return self.temp_c

    def nvmlDeviceGetCurrentClocksEventReasons(self, h):
        return self.throttle_mask

    def nvmlDeviceGetName(self, h):
        return self.name

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(total=24 * 2**30, used=0, free=24 * 2**30)

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return 450000

    def nvmlSystemGetDriverVersion(self):
        return "550.54.14"


# --------------------------------------------------------------------------------- RAPL
def test_rapl_fixture_domains_and_total_method(tmp_path):
    m = RaplMeter(materialize("rapl", tmp_path))
    assert m.available and m.has_energy_counter and m.name == "rapl"
    assert sorted(m.read_components_energy_mj()) == [
        "package-0",
        "package-0/core",
        "package-0/dram",
        "package-1",
        "package-1/dram",
    ]
    assert m.total_method.startswith("sum of RAPL zones: package-0 + package-1")
    assert "DRAM reported as a component" in m.total_method


def test_rapl_energy_is_counter_difference(tmp_path):
    root = materialize("rapl", tmp_path)
    pc = root / "sys/class/powercap"
    m = RaplMeter(root)
    e0 = m.read_energy_mj()
    write_atomic(pc / "intel-rapl:1/energy_uj", str(123456789 + 2_500_000))
    write_atomic(pc / "intel-rapl:1:0/energy_uj", str(4000000 + 700_000))  # dram: not in the total
    assert m.read_energy_mj() - e0 == pytest.approx(2500.0)
    assert m.read_components_energy_mj()["package-1/dram"] == pytest.approx(700.0)


def test_rapl_wraparound_single_and_multiple(tmp_path):
    root = materialize("rapl", tmp_path)
    f = root / "sys/class/powercap/intel-rapl:0/energy_uj"
    m = RaplMeter(root)
    e0 = m.read_energy_mj()
    write_atomic(f, "171150")  # 328850 uJ to the wrap, then 171150: 500000 uJ
    assert m.read_energy_mj() - e0 == pytest.approx(500.0)
    raw, step = 171150, 100_000_000_000  # 100 kJ per poll, 6 polls: more than two wraps
    for _ in range(6):
        raw = (raw + step) % PK_MAX
        write_atomic(f, str(raw))
        m.read_energy_mj()
    assert m.read_energy_mj() - e0 == pytest.approx(500.0 + 6 * step / 1000)


def test_rapl_include_dram(tmp_path):
    root = materialize("rapl", tmp_path)
    m = RaplMeter(root, include_dram=True)
    e0 = m.read_energy_mj()
    write_atomic(root / "sys/class/powercap/intel-rapl:0:1/energy_uj", str(5000000 + 300_000))
    assert m.read_energy_mj() - e0 == pytest.approx(300.0)
    assert "dram" in m.total_method


def test_rapl_window_uses_counter_with_wrap(tmp_path):
    root = materialize("rapl", tmp_path)
    pc = root / "sys/class/powercap"
    m = RaplMeter(root)
    with m.window(interval_s=0.01) as w:
        time.sleep(0.05)
        write_atomic(pc / "intel-rapl:0/energy_uj", "671150")  # +1_000_000 uJ across the wrap
        write_atomic(pc / "intel-rapl:1/energy_uj", str(123456789 + 2_000_000))
        time.sleep(0.05)
    assert w.method == "counter" and w.complete and w.gap_reason is None
    assert w.energy_mj == pytest.approx(3000.0)
    assert w.components["package-0"] == pytest.approx(1000.0)
    assert w.components["package-0/core"] == 0
    assert w.mean_power_mw == pytest.approx(3000.0 / w.covered_s)
    assert w.energy_figure().method == "measured"


def test_rapl_read_power_from_counter(tmp_path):
    root = materialize("rapl", tmp_path)
    m = RaplMeter(root)
    m.read()
    write_atomic(root / "sys/class/powercap/intel-rapl:1/energy_uj", str(123456789 + 1_000_000))
    time.sleep(0.1)
    p = m.read_power_mw()  # 1000 mJ over 0.1..~0.5 s
    assert 1000 / 0.5 < p <= 1000 / 0.1


def test_rapl_permission_denied_via_reader(tmp_path):
    root = materialize("rapl", tmp_path)

    def reader(path: Path) -> str:
        if path.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(path))
        return path.read_text()

    m = RaplMeter(root, reader=reader)
    assert not m.available
    assert m.why_unavailable == NOPERM_WHY and m.fix == NOPERM_FIX
    assert m.read_energy_mj() is None and m.read_power_mw() is None


@pytest.mark.skipif(not hasattr(os, "fork") or os.geteuid() != 0, reason="needs root to drop to an unprivileged user")
def test_rapl_permission_denied_real_unprivileged_read():
    """The real thing: a 0400 root-owned energy_uj read by an unprivileged user (as on Linux >= 5.10).
    A forked child drops to uid/gid 65534 (nobody) and builds the meter; chmod alone does not stop root."""
    tmp = Path(tempfile.mkdtemp(prefix="edgekit-rapl-"))
    try:
        root = materialize("rapl", tmp)
        for dirpath, _dirs, files in os.walk(tmp):
            os.chmod(dirpath, 0o755)
            for n in files:
                os.chmod(os.path.join(dirpath, n), 0o400 if n == "energy_uj" else 0o444)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            try:
                os.close(r)
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                m = RaplMeter(root)
                os.write(w, f"{m.available}\n{m.why_unavailable}".encode())
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r) as f:
            out = f.read()
        os.waitpid(pid, 0)
        assert out.splitlines() == ["False", NOPERM_WHY]
    finally:
        shutil.rmtree(tmp)


def test_rapl_no_powercap(tmp_path):
    m = RaplMeter(tmp_path)
    assert not m.available and m.why_unavailable == NODIR_WHY and m.fix


def test_rapl_counter_file_vanishes_mid_window(tmp_path):
    root = materialize("rapl", tmp_path)
    f = root / "sys/class/powercap/intel-rapl:1/energy_uj"
    m = RaplMeter(root)
    with m.window(interval_s=0.01) as w:
        write_atomic(f, str(123456789 + 1_000_000))
        time.sleep(0.05)
        f.unlink()
        time.sleep(0.05)
    assert not w.complete and "FileNotFoundError" in w.gap_reason
    assert w.method == "counter" and w.energy_mj == pytest.approx(1000.0)  # what it had, before the gap
    assert w.energy_figure().note.startswith("incomplete")


# --------------------------------------------------------------------------------- Jetson
def test_jetson_orin_agx_sum_of_rails():
    m = JetsonMeter(FIX / "orin_jp6")
    assert m.available and not m.has_energy_counter
    rails = m.read_components_power_mw()
    assert rails == pytest.approx(
        {"VDD_GPU_SOC": 6000.0, "VDD_CPU_CV": 2400.0, "VIN_SYS_5V0": 3800.0, "VDDQ_VDD2_1V8AO": 698.88}
    )
    assert m.total_method == "sum of rails: VDD_GPU_SOC + VDD_CPU_CV + VIN_SYS_5V0 + VDDQ_VDD2_1V8AO"
    assert m.read_power_mw() == pytest.approx(12898.88)
    assert m.read_energy_mj() is None


def test_jetson_orin_nano_vdd_in():
    m = JetsonMeter(FIX / "orin_nano_jp6")
    assert m.total_method == "VDD_IN rail"
    assert m.read_power_mw() == pytest.approx(5056 * 1450 / 1000)


def test_jetson_nano_jp4_iio_pom_5v_in(tmp_path):
    m = JetsonMeter(materialize("nano_jp4", tmp_path))
    assert m.available and m.total_method == "POM_5V_IN rail"
    assert m.read_power_mw() == 3872.0
    assert m.read_components_power_mw() == {"POM_5V_IN": 3872.0, "POM_5V_GPU": 480.0, "POM_5V_CPU": 1192.0}


def test_jetson_absent(tmp_path):
    m = JetsonMeter(tmp_path)
    assert not m.available and "INA3221" in m.why_unavailable and m.read_power_mw() is None


def test_trapezoid():
    assert trapezoid_mj([(0.0, 1000.0), (1.0, 3000.0), (3.0, 3000.0)]) == pytest.approx(8000.0)


def test_jetson_window_integrates_power():
    m = JetsonMeter(FIX / "orin_nano_jp6")
    with m.window(interval_s=0.02) as w:
        time.sleep(0.2)
    assert w.method == "integrated" and w.complete
    assert w.mean_power_mw == pytest.approx(7331.2)
    assert w.energy_mj == pytest.approx(7331.2 * w.covered_s)
    assert w.covered_s == pytest.approx(w.duration_s, abs=0.02)
    assert w.components["VDD_SOC"] == pytest.approx(5048 * 300 / 1000 * w.covered_s)
    assert len(w.samples) >= 5


def test_sensor_vanishes_mid_run_records_gap(tmp_path):
    root = tmp_path / "t"
    shutil.copytree(FIX / "orin_nano_jp6", root)
    m = JetsonMeter(root)
    s = PowerSampler(m, interval_s=0.01).start()
    time.sleep(0.15)
    (root / "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon1/curr1_input").unlink()
    time.sleep(0.15)
    assert s.running  # the failing reads did not kill the thread
    s.stop()
    assert len(s.errors) >= 3 and all("FileNotFoundError" in e for _, e in s.errors)
    with m.window(interval_s=0.01) as w:  # every read fails now
        time.sleep(0.03)
    assert w.energy_mj is None and not w.complete and "fewer than two good readings" in w.gap_reason
    assert w.energy_figure().method == "unavailable"


def test_window_reports_partial_energy_after_gap(tmp_path):
    root = tmp_path / "t"
    shutil.copytree(FIX / "orin_nano_jp6", root)
    m = JetsonMeter(root)
    f = root / "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon1/curr2_input"
    with m.window(interval_s=0.01) as w:
        time.sleep(0.15)
        f.unlink()  # the sensor vanishes for 0.15 s, then comes back
        time.sleep(0.15)
        write_atomic(f, "420")
        time.sleep(0.15)
    assert not w.complete and w.errors
    assert "FileNotFoundError" in w.gap_reason and "energy covers" in w.gap_reason
    assert w.covered_s < w.duration_s - 0.1  # the gap is not bridged
    assert w.samples[-1][0] - w.samples[0][0] > w.duration_s - 0.05  # readings on both sides of the gap
    assert w.mean_power_mw == pytest.approx(7331.2)  # from the readings it has, not bridged across the gap
    assert w.power_figure().note.startswith("incomplete")


# --------------------------------------------------------------------------------- NVML
def test_nvml_energy_counter_path():
    m = NvmlMeter(0, nvml=FakeNvml(energy_rate_mw=30000.0, power_mw=45000))
    assert m.available and m.has_energy_counter and m.name == "nvml:0"
    with m.window(interval_s=0.01) as w:
        time.sleep(0.25)
    assert w.method == "counter"
    assert w.mean_power_mw == pytest.approx(30000.0, rel=0.05)  # the counter, not the 45 W power reading
    assert w.samples and all(p == 45000 for _, p in w.samples)


def test_nvml_power_integration_fallback():
    m = NvmlMeter(0, nvml=FakeNvml(energy=False, power_mw=45000))
    assert m.available and not m.has_energy_counter and "integrated" in m.total_method
    assert m.read_energy_mj() is None
    with m.window(interval_s=0.01) as w:
        time.sleep(0.2)
    assert w.method == "integrated"
    assert w.energy_mj == pytest.approx(45000 * w.covered_s)


def test_nvml_jetson_not_supported():
    m = NvmlMeter(0, nvml=FakeNvml(energy=False, power=False))
    assert not m.available and m.why_unavailable == JETSON_WHY
    assert m.read_power_mw() is None
    assert m.temperature_c() == 71  # the handle still answers non-power queries


def test_nvml_no_driver_and_no_pynvml(monkeypatch):
    m = NvmlMeter(0, nvml=FakeNvml(init_fails=True))
    assert not m.available and "no NVIDIA driver" in m.why_unavailable and m.fix
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    m = NvmlMeter(0)
    assert not m.available and m.why_unavailable == "pynvml is not installed" and m.fix == "pip install nvidia-ml-py"


def test_nvml_throttle_temperature_info():
    fake = FakeNvml(throttle_mask=0x1 | 0x4 | 0x20 | 0x80)
    m = NvmlMeter(0, nvml=fake)
    assert m.throttle_reasons() == ["sw_power_cap", "sw_thermal", "hw_power_brake"]
    assert m.throttle_reasons(include_benign=True)[0] == "gpu_idle"
    assert decode_reasons(0x8 | 0x40) == ["hw_slowdown", "hw_thermal"]
    assert m.temperature_c() == 71.0
    info = m.gpu_info()
    assert info == {
        "index": 0,
        "name": "NVIDIA GeForce RTX 4090",
        "memory_total_mb": 24576.0,
        "power_limit_mw": 450000.0,
        "driver": "550.54.14",
    }
    m.close()
    assert fake.inits == 0 and not m.available


# --------------------------------------------------------------------------------- selection
def test_detect_and_best_meter_priorities(tmp_path):
    rapl = materialize("rapl", tmp_path)
    no_driver = FakeNvml(init_fails=True)
    ms = detect_meters(FIX / "orin_jp6", nvml=FakeNvml(energy=False, power=False))
    assert [m.name for m in ms] == ["nvml:0", "jetson-ina3221", "rapl"]
    assert [m.available for m in ms] == [False, True, False]
    assert isinstance(best_meter(FIX / "orin_jp6", nvml=FakeNvml()), JetsonMeter)  # Jetson: rails, not NVML
    assert isinstance(best_meter(rapl, nvml=FakeNvml()), NvmlMeter)
    assert isinstance(best_meter(rapl, nvml=no_driver), RaplMeter)
    null = best_meter(tmp_path / "empty", nvml=no_driver)
    assert isinstance(null, NullMeter) and not null.available
    for part in ("nvml:0: NVML init failed", "jetson-ina3221: no Jetson INA3221", "rapl: no RAPL powercap"):
        assert part in null.why_unavailable
    with null.window() as w:
        pass
    assert w.method == "unavailable" and w.energy_mj is None and w.gap_reason == null.why_unavailable
    assert w.energy_figure().method == "unavailable" and w.energy_figure().value is None


def test_real_machine_meter_is_labelled_never_invented():
    m = best_meter()
    if m.available:
        assert m.read_power_mw() is not None or m.read_energy_mj() is not None
    else:
        assert isinstance(m, NullMeter) and m.why_unavailable
        assert m.read_power_mw() is None and m.read_energy_mj() is None
        with m.window() as w:
            pass
        assert w.energy_figure().method == "unavailable"
    m.close()


def test_estimated_cpu_power_is_labelled():
    f = estimated_cpu_power_mw(65, 50)
    assert f.value == 32500.0 and f.unit == "mW" and f.method == "estimated" and f.source == "CPU load × TDP"
    with pytest.raises(UsageError):
        estimated_cpu_power_mw(65, 150)
    with pytest.raises(UsageError):
        estimated_cpu_power_mw(0, 50)


def test_periodic_thread_ticks_until_stopped_and_surfaces_what_escapes():
    from edgekit.power.periodic import PeriodicThread

    ticks = []
    t = PeriodicThread(lambda: ticks.append(1), 0.01, "test-ticker")
    t.start()
    assert ticks == [1]  # one tick in start(), before the thread runs
    time.sleep(0.1)
    assert t.running
    with pytest.raises(RuntimeError):
        t.start()
    t.stop()
    assert not t.running and len(ticks) >= 4  # the thread's ticks and one in stop()
    n = len(ticks)
    time.sleep(0.05)
    assert len(ticks) == n  # stopped: no more ticks

    calls = []

    def boom():
        calls.append(1)
        if len(calls) > 1:  # the thread's first tick
            raise ValueError("sensor driver bug")

    t = PeriodicThread(boom, 0.01, "test-ticker")
    t.start()
    time.sleep(0.05)
    assert not t.running and len(calls) == 2  # the escaped exception ended the thread...
    with pytest.raises(ValueError, match="sensor driver bug"):
        t.stop()  # ...and is raised here, in the caller's thread
