"""Sharing the CPU with the robot: thread policy, usable CPUs, adaptive threads, peers, background load."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest

from edgekit.errors import UsageError
from edgekit.host import peers
from edgekit.host.cpu import cgroup_quota, usable_cpus
from edgekit.host.load import ThreadTuner
from edgekit.host.threads import set_priority

SMOL = "smollm2-135m-instruct"
CLI = [sys.executable, "-m", "edgekit.cli.main"]

READ_BACK = r"""
import ctypes, json, sys
from edgekit.runtime import Runtime
rt = Runtime(sys.argv[1], n_ctx=256, max_n=1)
rt.generate("hi", max_tokens=2)
libs = sorted({l.split()[-1] for l in open('/proc/self/maps') if 'libgomp' in l})
sys.stderr.flush()
ctypes.CDLL(libs[0]).omp_display_env(1)   # libgomp prints the ICVs it actually runs with
print(json.dumps(rt.engine.threading()), flush=True)
"""


def test_the_wait_policy_is_set_before_llama_cpp_loads_and_read_back_from_libgomp(smol_path):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "EDGEKIT_THREADING")}
    p = subprocess.run(
        [sys.executable, "-c", READ_BACK, str(smol_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr[-500:]
    assert "GOMP_SPINCOUNT = '300000'" in p.stderr  # what libgomp itself reports: llama.cpp's own waiting
    rep = json.loads(p.stdout.strip().splitlines()[-1])
    assert rep["adaptive"] is True and "GOMP_SPINCOUNT 300000" in rep["wait"]
    # passive on request: libgomp sleeps at once (spin count 0), threads still adaptive
    p = subprocess.run(
        [sys.executable, "-c", READ_BACK, str(smol_path)],
        env={**env, "EDGEKIT_THREADING": "passive"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "OMP_WAIT_POLICY = 'PASSIVE'" in p.stderr and "GOMP_SPINCOUNT = '0'" in p.stderr, p.stderr[-400:]
    assert json.loads(p.stdout.strip().splitlines()[-1])["adaptive"] is True
    # the old behaviour on request: fixed threads
    p = subprocess.run(
        [sys.executable, "-c", READ_BACK, str(smol_path)],
        env={**env, "EDGEKIT_THREADING": "spin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert json.loads(p.stdout.strip().splitlines()[-1])["adaptive"] is False
    # a bad value: one line at the first model load
    p = subprocess.run(
        [sys.executable, "-m", "edgekit.cli.main", "run", "hi", "-m", str(smol_path)],
        env={**env, "EDGEKIT_THREADING": "fast"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 2 and "auto, passive, spin" in p.stderr and len(p.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(
    shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2, reason="needs taskset and 2+ CPUs"
)
def test_an_affinity_limited_process_gets_one_thread(smol_path):
    code = (
        "from edgekit.runtime import Runtime; import json,sys; rt=Runtime(sys.argv[1], n_ctx=256); "
        "print(json.dumps(rt.engine.threading()))"
    )
    p = subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-c", code, str(smol_path)], capture_output=True, text=True, timeout=300
    )
    rep = json.loads(p.stdout.strip().splitlines()[-1])
    assert rep["threads"] == 1 and rep["usable"] == 1


def test_usable_cpus_reads_affinity_and_the_tightest_cgroup_quota(tmp_path):
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text("0::/system.slice/robot.service\n")
    base = tmp_path / "sys/fs/cgroup"
    (base / "system.slice/robot.service").mkdir(parents=True)
    (base / "cpu.max").write_text("max 100000\n")
    (base / "system.slice/cpu.max").write_text("300000 100000\n")
    (base / "system.slice/robot.service/cpu.max").write_text("150000 100000\n")
    assert cgroup_quota(tmp_path, tmp_path / "proc") == (1.5, str(base / "system.slice/robot.service/cpu.max"))
    u = usable_cpus(tmp_path, tmp_path / "proc", affinity=[0, 1, 2, 3], physical=4, logical=4)
    assert u.count == 1 and "cgroup quota 1.5" in u.why
    (base / "system.slice/robot.service/cpu.max").write_text("max 100000\n")
    assert usable_cpus(tmp_path, tmp_path / "proc", affinity=[0, 1, 2, 3], physical=4, logical=4).count == 3
    # cgroup v1
    (tmp_path / "proc/self/cgroup").write_text("4:cpu,cpuacct:/docker/abc\n")
    v1 = tmp_path / "sys/fs/cgroup/cpu,cpuacct/docker/abc"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert usable_cpus(tmp_path, tmp_path / "proc", affinity=[0, 1, 2, 3], physical=4, logical=4).count == 2
    # hyper-threads: 8 logical on 4 cores, affinity to all -> 4
    assert usable_cpus(tmp_path / "none", tmp_path / "none", affinity=list(range(8)), physical=4, logical=8).count == 4


def test_cpu_share_counts_others_but_not_lower_priority_work(tmp_path):
    from edgekit.host.load import _TICK, CpuShare

    stat = tmp_path / "stat"

    def write(user, nice):
        stat.write_text(
            f"cpu  0 0 0 0 0 0 0 0 0 0\ncpu0 {user} {nice} 0 0 0 0 0 0 0 0\ncpu1 {user} {nice} 0 0 0 0 0 0 0 0\n"
        )

    for niced, want in ((False, 0.5), (True, 1.5)):
        own = [0.0]
        write(0, 0)
        share = CpuShare([0, 1], tmp_path, own_cpu_s=lambda own=own: own[0])
        share._niced = niced
        share._last = share._read()
        # one second later: per CPU 0.5 s user (0.25 s of each ours) and 0.5 s of work at nice > 0
        write(int(0.5 * _TICK), int(0.5 * _TICK))
        own[0] = 0.5
        share._last = (share._last[0] - 1.0, share._last[1], share._last[2])
        # not niced: lower-priority work yields to us, others = 1.0 - 0.5 ours; niced: it competes as an equal
        assert share.sample() == pytest.approx(want, abs=0.05)


class FakeShare:
    def __init__(self, values):
        self.values = list(values)

    def age_s(self):
        return 1.0  # a window long enough: the forced look does not wait

    def sample(self, min_window_s=0.05):
        return self.values.pop(0)


def test_thread_tuner_gives_up_a_taken_core_and_takes_it_back():
    calls = []
    t = ThreadTuner(2, calls.append, interval_s=0.0, share=FakeShare([0.05, 0.9, 1.0, 0.6, 0.3, 0.1]))
    seen = [t.check() for _ in range(6)]
    assert seen == [2, 1, 1, 1, 1, 2]  # 0.6 and 0.3 busy: not a whole core free yet (hysteresis); 0.1: back to 2
    assert calls == [1, 2]
    fixed = ThreadTuner(2, calls.append, fixed=2, interval_s=0.0, share=FakeShare([1.5]))
    assert fixed.check() == 2 and "fixed" in fixed.describe()
    fixed.pin(1)
    assert fixed.threads == 1 and calls[-1] == 1
    fixed.pin(None)
    assert fixed.threads == 2


def test_registry_sees_a_live_peer_and_forgets_a_dead_one(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path))
    monkeypatch.setenv("EDGEKIT_PEER_REGISTRY", "on")
    code = (
        "from edgekit.host import peers; import time; peers.register('test peer'); "
        "print('up', flush=True); time.sleep(120)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env={**os.environ})
    try:
        assert child.stdout.readline().strip() == "up"
        live = peers.live_peers()
        assert [p["pid"] for p in live] == [child.pid] and live[0]["what"] == "test peer"
    finally:
        child.kill()
        child.wait()
    assert peers.live_peers() == [] and not (tmp_path / "run" / f"{child.pid}.json").exists()  # stale: removed


def test_a_second_process_warns(smol_path, tmp_path):
    env = {**os.environ, "EDGEKIT_HOME": str(tmp_path), "EDGEKIT_PEER_REGISTRY": "on"}
    code = (
        "from edgekit.host import peers; import time; peers.register('llama.cpp other'); "
        "print('up', flush=True); time.sleep(300)"
    )
    first = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert first.stdout.readline().strip() == "up"
        p = subprocess.run(
            CLI + ["run", "What is 2+2?", "-m", str(smol_path), "--max-tokens", "4"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert p.returncode == 0, p.stderr
        assert f"warning: 1 other edgekit process(es) hold a model on this machine: pid {first.pid}" in p.stderr
        assert "threads follow the free cores" in p.stderr
    finally:
        first.kill()
        first.wait()


def _busy_children(pid: int) -> list[int]:
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True) if "while True" in " ".join(c.cmdline())]
    except psutil.Error:
        return []


def test_background_workers_start_and_are_gone_after_ctrl_c(smol_path, tmp_path):
    out = tmp_path / "p.json"
    p = subprocess.Popen(
        CLI + ["profile", "-m", str(smol_path), "--quick", "--background", "2", "-o", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    workers: list[int] = []
    deadline = time.time() + 240
    while time.time() < deadline and len(workers) < 2:
        workers = _busy_children(p.pid)
        time.sleep(0.2)
    assert len(workers) == 2, "the busy workers never started"
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    time.sleep(0.5)
    assert not [w for w in workers if psutil.pid_exists(w) and psutil.Process(w).status() != psutil.STATUS_ZOMBIE]


def test_bad_input_threads_background_priority(smol_path, tmp_path):
    usable = usable_cpus().count
    p = subprocess.run(
        CLI + ["run", "hi", "-m", str(smol_path), "--threads", str(usable + 1)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2 and f"the {usable} usable CPU(s)" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    out = tmp_path / "never.json"
    for cmd, says in (("false", "exited at once"), ("/nonexistent/robot-load", "failed to start")):
        p = subprocess.run(
            CLI + ["profile", "-m", str(smol_path), "--quick", "--background", cmd, "-o", str(out)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert p.returncode == 2 and says in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert not out.exists()
    p = subprocess.run(
        CLI + ["run", "hi", "-m", str(smol_path), "--priority", "urgent"], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 2 and "normal, nice, batch, idle" in p.stderr
    with pytest.raises(UsageError):
        set_priority("realtime")


def test_priority_idle_applies_to_the_threads_llama_cpp_starts(smol_path):
    code = (
        "import os, sys; from edgekit.host.threads import set_priority; set_priority('idle');"
        "from edgekit.runtime import Runtime; rt = Runtime(sys.argv[1], n_ctx=256); rt.generate('hi', max_tokens=4);"
        "print(sorted({os.sched_getscheduler(int(t)) for t in os.listdir('/proc/self/task')}))"
    )
    p = subprocess.run([sys.executable, "-c", code, str(smol_path)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-300:]
    assert p.stdout.strip().splitlines()[-1] == f"[{os.SCHED_IDLE}]"


def test_the_first_look_is_forced_so_a_loaded_machine_starts_with_fewer_threads():
    # the engine calls check(force=True) after its warm-up decode: without the force, the first
    # request of a fresh process would run inside the interval with every usable thread
    calls = []
    t = ThreadTuner(2, calls.append, interval_s=60.0, share=FakeShare([1.0, 1.0]))
    assert t.check() == 2 and calls == []  # inside the interval: no look
    assert t.check(force=True) == 1 and calls == [1]


def test_the_engine_decides_its_threads_before_the_first_request(smol_path):
    from edgekit.engines.llamacpp import LlamaCppEngine

    with LlamaCppEngine(str(smol_path), max_n=1, n_ctx=256) as e:
        assert e.warmup_s > 0  # one throw-away decode at load: the first request costs what later ones do
        assert e.tuner.others is not None or e.tuner.usable <= 1 or e.tuner.fixed  # looked at the load already
