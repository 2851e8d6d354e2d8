"""Run a generated program against its unit tests, out of process.

Each check runs ``python -I`` on a file in a fresh temporary directory, in its own process
group, with rlimits (address space, CPU seconds, file size, core dumps), a scrubbed
environment (no proxies, no user site) and a prelude that disables sockets. On timeout the
whole process group is killed. This is containment for model-written code, not a sandbox
against a determined attacker: run untrusted evaluations in a VM or container.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

MEMORY_LIMIT_BYTES = 2 * 1024**3
FILE_SIZE_LIMIT_BYTES = 16 * 1024**2

# Runs before the program: no network.
_PRELUDE = '''\
import socket as _edgekit_socket, _socket as _edgekit__socket
def _edgekit_no_network(*args, **kwargs):
    raise OSError("network access is disabled during evaluation")
class _EdgekitNoSocket:
    def __init__(self, *args, **kwargs):
        _edgekit_no_network()
for _m in (_edgekit_socket, _edgekit__socket):
    _m.socket = _EdgekitNoSocket
    for _name in ("create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo", "gethostbyname"):
        if hasattr(_m, _name):
            setattr(_m, _name, _edgekit_no_network)
del _m, _name
'''

_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "SYSTEMROOT", "TMPDIR")


def _limits(cpu_seconds: int):
    def apply():  # runs in the child between fork and exec
        import resource

        for lim, value in (
            (resource.RLIMIT_AS, MEMORY_LIMIT_BYTES),
            (resource.RLIMIT_CPU, cpu_seconds),
            (resource.RLIMIT_FSIZE, FILE_SIZE_LIMIT_BYTES),
            (resource.RLIMIT_CORE, 0),
        ):
            try:
                soft, hard = resource.getrlimit(lim)
                v = value if hard == resource.RLIM_INFINITY else min(value, hard)
                resource.setrlimit(lim, (v, hard))
            except (ValueError, OSError):
                pass

    return apply


def build_program(program: str, test: str, entry_point: str) -> str:
    return f"{_PRELUDE}\n{program}\n\n{test}\n\ncheck({entry_point})\n"


def check_program(program: str, test: str, entry_point: str, timeout_s: float = 5.0) -> tuple[bool, str]:
    """Run ``program`` + ``test`` + ``check(entry_point)``; return (passed, reason).

    reason is "passed", "timed out after <t>s", or "failed: <last line of stderr>"."""
    env = {k: os.environ[k] for k in _ENV_KEEP if k in os.environ}
    env.update(PYTHONDONTWRITEBYTECODE="1", PYTHONHASHSEED="0", no_proxy="*", NO_PROXY="*")
    with tempfile.TemporaryDirectory(prefix="edgekit-exec-") as tmp:
        script = Path(tmp) / "program.py"
        script.write_text(build_program(program, test, entry_point))
        proc = subprocess.Popen(
            [sys.executable, "-I", "-B", str(script)],
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # own process group: a timeout kills its children too
            preexec_fn=_limits(max(1, int(timeout_s) + 1)),
        )
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.communicate()
            return False, f"timed out after {timeout_s:g}s"
        finally:
            if proc.poll() is None:
                _kill_group(proc)
        _kill_group(proc)  # leftover grandchildren, if any
    if proc.returncode == 0:
        return True, "passed"
    lines = [ln for ln in err.decode("utf-8", "replace").strip().splitlines() if ln.strip()]
    if lines:
        return False, "failed: " + lines[-1].strip()[:300]
    if proc.returncode < 0:
        return False, f"failed: killed by signal {signal.Signals(-proc.returncode).name}"
    return False, f"failed: exit code {proc.returncode}"


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait()
