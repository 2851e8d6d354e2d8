"""bubblewrap and process-tree helpers for :mod:`edgekit.evaluate.humaneval_exec` (design notes there)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

from edgekit.evaluate.exec_harness import sanitize

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
        if d != "/" and os.path.isdir(d) and not any(d == c or d.startswith(c.rstrip("/") + "/")
                                                     for c in covered + out):
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
    a = [bwrap, "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-net", "--unshare-ipc",
         "--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox"]
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
    a += ["--bind", progdir, INNER_PROGDIR, "--chdir", "/", "--clearenv"]
    for k, v in (("PATH", "/usr/local/bin:/usr/bin:/bin"), ("LANG", "C.UTF-8"), ("HOME", "/tmp"), ("TMPDIR", "/tmp"),
                 ("PYTHONDONTWRITEBYTECODE", "1"), ("PYTHONHASHSEED", "0"), (RUN_MARKER, run_id)):
        a += ["--setenv", k, v]
    return a + ["--"]


def bwrap_problem() -> Optional[str]:
    """None when a real sandbox starts here, else why not."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bubblewrap is not installed"
    privileged = os.geteuid() == 0
    probe = "import os, socket\n"
    if privileged:
        probe += "u = 1_000_000_000\nos.setgroups([]); os.setresgid(u, u, u); os.setresuid(u, u, u)\n"
    probe += "open('/tmp/program/x', 'w') if os.access('/tmp/program', os.W_OK) else None\n"
    with tempfile.TemporaryDirectory(prefix="edgekit-probe-", ignore_cleanup_errors=True) as tmp:
        if privileged:
            os.chown(tmp, 1_000_000_000, 1_000_000_000)
        argv = bwrap_argv(bwrap, tmp, privileged, "probe") + [sys.executable, "-I", "-B", "-c", probe]
        try:
            r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               timeout=30, cwd="/")
        except (OSError, subprocess.SubprocessError) as e:
            return f"bubblewrap does not start: {sanitize(str(e))}"
        if r.returncode != 0 or not os.path.exists(os.path.join(tmp, "x")):
            return f"bubblewrap does not work here: {sanitize(r.stderr.decode('utf-8', 'replace')) or r.returncode}"
    return None


def user_tasks() -> int:
    try:
        import psutil

        uid, n = os.getuid(), 0
        for p in psutil.process_iter(["uids", "num_threads"]):
            if p.info["uids"] is not None and p.info["uids"].real == uid:
                n += p.info["num_threads"] or 1
        return n
    except Exception:
        return 4096


def kill_tree(proc: subprocess.Popen, run_id: str, sweep: bool) -> None:
    """Stop, then kill, every process of this run; reap the one we started (bounded)."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        stopped: set = set()
        for _ in range(50):  # stopped processes cannot fork; rescan until nothing new turns up
            new = members(psutil, proc.pid, run_id, sweep) - stopped
            if not new:
                break
            for p in new:
                try:
                    p.send_signal(signal.SIGSTOP)
                except psutil.Error:
                    pass
            stopped |= new
        for p in stopped:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
    for kill in (lambda: os.killpg(proc.pid, signal.SIGKILL), proc.kill):
        try:
            kill()
        except (ProcessLookupError, PermissionError):
            pass
    try:
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        pass


def members(psutil, pid: int, run_id: str, sweep: bool) -> set:
    out: set = set()
    try:
        root = psutil.Process(pid)
        out.add(root)
        out.update(root.children(recursive=True))
    except psutil.Error:
        pass
    if sweep:  # without a PID namespace: also the session, the process group and the environment marker
        me = os.getpid()
        for p in psutil.process_iter():
            if p.pid == me or p in out:
                continue
            try:
                if os.getsid(p.pid) == pid or os.getpgid(p.pid) == pid or p.environ().get(RUN_MARKER) == run_id:
                    out.add(p)
            except (psutil.Error, OSError):
                pass
    return out
