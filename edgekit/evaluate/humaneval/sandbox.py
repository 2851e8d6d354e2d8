"""bubblewrap (command line, probe) and the checker's process tree (find, stop, kill); design notes:
:mod:`edgekit.evaluate.humaneval`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgekit.evaluate.humaneval.wire import sanitize

TMPFS_BYTES = 64 * 1024**2
INNER_PROGDIR = "/tmp/program"  # where the program directory appears inside the sandbox
RUN_MARKER = "EDGEKIT_EXEC_RUN"  # environment variable naming the run (found again by kill_tree)
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/alternatives")


def python_dirs() -> list[str]:
    cands = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    cands.add(os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))))
    cands.add(os.path.dirname(os.path.abspath(sys.executable)))
    covered = [d for d in _SYSTEM_DIRS if os.path.isdir(d) and not os.path.islink(d)]
    out: list[str] = []
    for d in sorted(cands, key=len):
        if (
            d != "/"
            and os.path.isdir(d)
            and not any(d == c or d.startswith(c.rstrip("/") + "/") for c in covered + out)
        ):
            out.append(d)
    return out


_features: dict[str, str] = {}


def bwrap_argv(bwrap: str, progdir: str, privileged: bool, run_id: str) -> list[str]:
    if bwrap not in _features:
        try:
            _features[bwrap] = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            _features[bwrap] = ""
    help_text = _features[bwrap]
    a = [
        bwrap,
        "--die-with-parent",
        "--new-session",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--hostname",
        "sandbox",
    ]
    if not privileged:
        a.append("--unshare-user")
    a += ["--cap-drop", "ALL"]
    if privileged:  # the judge keeps these to move the worker to the throwaway uid; the worker has none
        a += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    for d in _SYSTEM_DIRS:
        if os.path.islink(d):
            a += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            a += ["--ro-bind", d, d]
    for f in _ETC:
        if os.path.exists(f):
            a += ["--ro-bind", f, f]
    a += ["--proc", "/proc", "--dev", "/dev"]
    if "--perms" in help_text:
        a += ["--perms", "1777"]
    if "--size" in help_text:
        a += ["--size", str(TMPFS_BYTES)]
    a += ["--tmpfs", "/tmp"]
    made: set[str] = set()
    for d in python_dirs():
        parents = [str(q) for q in reversed(Path(d).parents) if str(q) != "/" and str(q) not in made]
        for q in parents:  # bubblewrap would create them 0700: the worker's uid could not reach the stdlib
            if q != "/tmp" and not any(q == s or q.startswith(s + "/") for s in _SYSTEM_DIRS):
                a += ["--dir", q]
                made.add(q)
        a += ["--ro-bind", d, d]
    if "--perms" in help_text and "--size" in help_text:
        # The program runs in the size-limited private tmpfs: nothing it writes reaches the host's disk.
        a += [
            "--perms",
            "1777",
            "--dir",
            INNER_PROGDIR,
            "--ro-bind",
            os.path.join(progdir, "program.py"),
            os.path.join(INNER_PROGDIR, "program.py"),
        ]
    else:  # older bubblewrap: the host program directory, writable
        a += ["--bind", progdir, INNER_PROGDIR]
    a += ["--chdir", "/", "--clearenv"]
    for k, v in (
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
        ("LANG", "C.UTF-8"),
        ("HOME", "/tmp"),
        ("TMPDIR", "/tmp"),
        ("PYTHONDONTWRITEBYTECODE", "1"),
        ("PYTHONHASHSEED", "0"),
        (RUN_MARKER, run_id),
    ):
        a += ["--setenv", k, v]
    return a + ["--"]


def bwrap_problem() -> str | None:
    """None when a real sandbox starts here (as check_program starts it), else why not."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bubblewrap is not installed"
    privileged, uid = os.geteuid() == 0, 1_000_000_000
    probe = "import os, socket\n"
    if privileged:
        probe += f"os.setgroups([]); os.setresgid({uid}, {uid}, {uid}); os.setresuid({uid}, {uid}, {uid})\n"
    probe += (
        f"os.chdir({INNER_PROGDIR!r})\nassert open('program.py').read() == 'probe'\nopen('scratch', 'w').write('x')\n"
    )
    with tempfile.TemporaryDirectory(prefix="edgekit-probe-", ignore_cleanup_errors=True) as tmp:
        Path(tmp, "program.py").write_text("probe")
        if privileged:
            for path in (tmp, os.path.join(tmp, "program.py")):
                os.chown(path, uid, uid)
        argv = bwrap_argv(bwrap, tmp, privileged, "probe") + [sys.executable, "-I", "-B", "-c", probe]
        try:
            r = subprocess.run(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30, cwd="/"
            )
        except (OSError, subprocess.SubprocessError) as e:
            return f"bubblewrap does not start: {sanitize(str(e))}"
        if r.returncode != 0:
            lines = r.stderr.decode("utf-8", "replace").strip().splitlines()
            why = sanitize(lines[-1]) if lines else f"exit status {r.returncode}"
            return f"bubblewrap does not work here: {why}"
    return None


def user_tasks() -> int:
    """Tasks (processes and threads) whose real uid is ours: what RLIMIT_NPROC counts."""
    uid, n = os.getuid(), 0
    for pid in _pids():
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(ln.split(":", 1) for ln in f if ":" in ln)
            if int(fields["Uid"].split()[0]) == uid:
                n += int(fields.get("Threads", "1"))
        except (OSError, ValueError, KeyError, IndexError):
            pass
    return n


def kill_tree(proc: subprocess.Popen, run_id: str, sweep: bool) -> None:
    """Stop, then kill, every process of this run; reap the one we started (bounded).

    Members: the started process and all its descendants (the judge is a child subreaper, so the
    program's orphans stay descendants; in the sandbox everything lives in one PID namespace under
    it) and, with ``sweep`` (no PID namespace), every process in its session or process group or
    carrying this run's environment marker. Stopped processes cannot fork, so the scan repeats until
    it finds nothing new; a pid is signalled only while its start time still matches the scan."""
    stopped: dict[int, int] = {}
    for _ in range(50):
        new = {pid: start for pid, start in members(proc.pid, run_id, sweep).items() if pid not in stopped}
        if not new:
            break
        for pid, start in new.items():
            _signal(pid, start, signal.SIGSTOP)
        stopped.update(new)
    for pid, start in stopped.items():
        _signal(pid, start, signal.SIGKILL)
    deadline = time.monotonic() + 1.0  # SIGKILL is asynchronous: return once they are dead (bounded)
    while time.monotonic() < deadline and any(_alive(pid, start) for pid, start in stopped.items()):
        time.sleep(0.01)
    for kill in (lambda: os.killpg(proc.pid, signal.SIGKILL), proc.kill):
        try:
            kill()
        except (ProcessLookupError, PermissionError):
            pass
    try:
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        pass


def members(root: int, run_id: str, sweep: bool) -> dict[int, int]:
    """{pid: start time} of the processes of this run (see kill_tree)."""
    procs = {}
    for pid in _pids():
        st = _stat(pid)
        if st is not None:
            procs[pid] = st
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    out: set[int] = set()
    stack = [root] if root in procs else []
    while stack:
        pid = stack.pop()
        if pid not in out:
            out.add(pid)
            stack.extend(children.get(pid, ()))
    if sweep:
        marker, me = f"{RUN_MARKER}={run_id}".encode(), os.getpid()
        for pid, (_, pgrp, sid, _) in procs.items():
            if pid not in out and pid != me and (pgrp == root or sid == root or _has_marker(pid, marker)):
                out.add(pid)
    return {pid: procs[pid][3] for pid in out}


def _pids() -> list[int]:
    try:
        return [int(x) for x in os.listdir("/proc") if x.isdigit()]
    except OSError:
        return []


def _stat(pid: int) -> tuple[int, int, int, int] | None:
    """(ppid, process group, session, start time) from /proc/<pid>/stat, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        rest = data[data.rindex(b")") + 2 :].split()  # the command name may contain spaces and parentheses
        return int(rest[1]), int(rest[2]), int(rest[3]), int(rest[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int, start: int) -> bool:
    """The process still exists and is not a zombie (dead, waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            rest = f.read().rsplit(b")", 1)[1].split()
        return int(rest[19]) == start and rest[0] not in (b"Z", b"X")
    except (OSError, ValueError, IndexError):
        return False


def _has_marker(pid: int, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return marker in f.read().split(b"\0")
    except OSError:
        return False


def _signal(pid: int, start: int, sig: int) -> None:
    st = _stat(pid)
    if st is not None and st[3] == start:  # still the same process, not a reused pid
        try:
            os.kill(pid, sig)
        except OSError:
            pass
