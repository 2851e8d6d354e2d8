"""Check a program against its tests (the parent side): ``check_program`` and ``sandbox_status``.

Starts the checker (:mod:`.harness`) in bubblewrap when it works here (:mod:`.sandbox`), sends it the
test, waits for its verdict under a deadline and kills the whole process tree. Design notes:
:mod:`edgekit.evaluate.humaneval`.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from edgekit.errors import UsageError
from edgekit.evaluate.humaneval.harness import checker_source
from edgekit.evaluate.humaneval.sandbox import (
    INNER_PROGDIR,
    RUN_MARKER,
    bwrap_argv,
    bwrap_problem,
    kill_tree,
    user_tasks,
)
from edgekit.evaluate.humaneval.wire import sanitize

MEMORY_LIMIT_BYTES = 2 * 1024**3
FILE_SIZE_LIMIT_BYTES = 16 * 1024**2
SANDBOX_NPROC = 64  # tasks (processes and threads) of the throwaway uid
EXTRA_NPROC = 64  # without a throwaway uid: the user's current tasks + this

FIX = (
    "install bubblewrap (apt-get install bubblewrap) or pass --allow-code-execution to run model-written code "
    "with rlimits only"
)
_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "SYSTEMROOT", "TMPDIR")

_status_lock = threading.Lock()
_status: tuple[bool, str] | None = None


def check_program(
    program: str,
    test: str,
    entry_point: str,
    timeout_s: float = 5.0,
    *,
    allow_unsandboxed: bool = False,
    sandbox: bool | None = None,
) -> tuple[bool, str]:
    """Run ``check(<entry_point>)`` of ``test`` against ``program``; return (passed, reason).

    sandbox: None = bubblewrap when it works here, else rlimits only if ``allow_unsandboxed``
    (UsageError otherwise); True = bubblewrap or UsageError; False = rlimits only (needs
    ``allow_unsandboxed``)."""
    use_sandbox = _choose(sandbox, allow_unsandboxed)
    token, run_id = secrets.token_hex(16), secrets.token_hex(8)
    privileged = os.geteuid() == 0
    with tempfile.TemporaryDirectory(prefix="edgekit-exec-", ignore_cleanup_errors=True) as tmp:
        progdir = os.path.join(tmp, "program")
        os.mkdir(progdir, 0o700)
        Path(progdir, "program.py").write_text(program, encoding="utf-8")
        cfg = {
            "entry_point": entry_point,
            "progdir": progdir,
            "uid": None,
            "nproc": None,
            "limits": [
                ["RLIMIT_AS", MEMORY_LIMIT_BYTES],
                ["RLIMIT_CPU", max(1, int(timeout_s) + 1)],
                ["RLIMIT_FSIZE", FILE_SIZE_LIMIT_BYTES],
                ["RLIMIT_CORE", 0],
            ],
        }
        if use_sandbox and privileged:
            cfg["uid"], cfg["nproc"] = 1_000_000_000 + secrets.randbelow(1_000_000_000), SANDBOX_NPROC
            for p in (progdir, os.path.join(progdir, "program.py")):
                os.chown(p, cfg["uid"], cfg["uid"])
        elif not privileged:
            cfg["nproc"] = user_tasks() + EXTRA_NPROC
        fds: dict[str, int | None] = {}
        try:
            fds["ctl_r"], fds["ctl_w"] = os.pipe()
            fds["res_r"], fds["res_w"] = os.pipe()
            cfg["ctl_fd"], cfg["result_fd"] = fds["ctl_r"], fds["res_w"]
            python = [sys.executable, "-I", "-B", "-c", checker_source(), json.dumps(cfg)]
            if use_sandbox:
                fds["err_r"], fds["err_w"] = os.pipe()  # bubblewrap's own errors (the judge silences fd 2 first)
                cfg["progdir"] = INNER_PROGDIR
                python[-1] = json.dumps(cfg)
                argv = bwrap_argv(shutil.which("bwrap") or "bwrap", progdir, privileged, run_id) + python
                env, cwd = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, "/"
            else:
                argv, cwd = python, progdir
                env = {k: os.environ[k] for k in _ENV_KEEP if k in os.environ}
                env.update(
                    PYTHONDONTWRITEBYTECODE="1", PYTHONHASHSEED="0", no_proxy="*", NO_PROXY="*", **{RUN_MARKER: run_id}
                )
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=fds.get("err_w") or subprocess.DEVNULL,
                pass_fds=(fds["ctl_r"], fds["res_w"]),
                start_new_session=True,
            )
            for k in ("ctl_r", "res_w", "err_w"):
                _close(fds, k)
            payload = json.dumps({"token": token, "test": test}).encode("utf-8")
            try:
                line, timed_out, err = _exchange(fds, payload, time.monotonic() + timeout_s)
            finally:
                kill_tree(proc, run_id, sweep=not use_sandbox)
        finally:
            for k in list(fds):
                _close(fds, k)
    if line is not None:
        if secrets.compare_digest(line, f"PASS {token}".encode("ascii")):
            return True, "passed"
        text = line.decode("ascii", "replace")
        if text.startswith(f"FAIL {token} "):
            return False, "failed: " + sanitize(text[len(f"FAIL {token} ") :])
    if timed_out:
        return False, f"timed out after {timeout_s:g}s"
    if line is not None:
        return False, "failed: the checker's report does not belong to this run"
    if use_sandbox and err.strip():
        return False, "failed: the sandbox did not start: " + sanitize(err.decode("utf-8", "replace"))
    return False, f"failed: the checker stopped without a verdict (exit status {proc.returncode})"


def sandbox_status() -> tuple[bool, str]:
    """(available, description): whether model-written code runs in bubblewrap here, and what is and
    is not contained. Probed once (a real sandbox start), then cached."""
    global _status
    with _status_lock:
        if _status is None:
            problem = bwrap_problem()
            _status = (True, _sandbox_text()) if problem is None else (False, _rlimits_text(problem))
        return _status


def _sandbox_text() -> str:
    who = (
        "a throwaway uid without capabilities, at most 64 processes"
        if os.geteuid() == 0
        else "your uid in a user namespace without capabilities, process limit counted with your own processes"
    )
    return (
        "bubblewrap: no network, read-only root (system and Python directories only: no $HOME, /root, /home, "
        "/etc/passwd or host files), writes only to a private size-limited /tmp (where the program runs), PID "
        f"namespace (every process killed at the end), {who}; verdict from a separate judge process"
    )


def _rlimits_text(problem: str) -> str:
    root = (
        ", the process limit (root ignores RLIMIT_NPROC), other root processes and root-owned files (the program"
        " runs as root without capabilities)"
        if os.geteuid() == 0
        else ""
    )
    return (
        f"rlimits only ({problem}): NOT contained: file reads and writes anywhere this user can, network from "
        "subprocesses (e.g. python -c) and from code that gets past Python audit hooks, processes that leave the "
        f"session and clear their environment{root}; contained: wall-clock timeout, memory/CPU/file-size limits, "
        "sockets and ctypes in the program's own interpreter (audit hook); verdict from a separate judge process"
    )


def _choose(sandbox: bool | None, allow_unsandboxed: bool) -> bool:
    if sandbox is False:
        if not allow_unsandboxed:
            raise UsageError(
                "sandbox=False runs model-written code without a sandbox",
                fix="pass allow_unsandboxed=True as well (the CLI's --allow-code-execution)",
            )
        return False
    ok, desc = sandbox_status()
    if ok:
        return True
    why = desc.split(": NOT contained", 1)[
        0
    ]  # "rlimits only (<why bubblewrap does not work>)"; full text: sandbox_status()
    if sandbox is True:
        raise UsageError(
            f"no working sandbox for model-written code: {why}", fix="install bubblewrap (apt-get install bubblewrap)"
        )
    if not allow_unsandboxed:
        raise UsageError(f"refusing to run model-written code without a sandbox: here it would be {why}", fix=FIX)
    return False


def _close(fds: dict, key: str) -> None:
    fd = fds.get(key)
    if fd is not None:
        fds[key] = None
        try:
            os.close(fd)
        except OSError:
            pass


def _exchange(fds: dict, payload: bytes, deadline: float) -> tuple[bytes | None, bool, bytes]:
    """Send the control payload, read the judge's line. (line or None, timed out, bubblewrap stderr).
    poll, not select: descriptor numbers above 1024 are fine."""
    os.set_blocking(fds["ctl_w"], False)
    buf, err, sent = b"", b"", 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None, True, err
        poller = select.poll()
        for key, events in (("res_r", select.POLLIN), ("err_r", select.POLLIN), ("ctl_w", select.POLLOUT)):
            if fds.get(key) is not None:
                poller.register(fds[key], events)
        for fd, _ in poller.poll(max(1, int(left * 1000))):
            if fd == fds.get("ctl_w"):
                try:
                    sent += os.write(fd, payload[sent : sent + 65536])
                except BlockingIOError:
                    pass
                except OSError:  # the judge is gone; how it ended shows on the result pipe
                    sent = len(payload)
                if sent >= len(payload):
                    _close(fds, "ctl_w")
            elif fd == fds["res_r"]:
                chunk = os.read(fd, 65536)
                buf += chunk
                if not chunk or b"\n" in buf or len(buf) > 4096:
                    return (buf.split(b"\n")[0] if buf else None), False, err
            else:
                chunk = os.read(fd, 65536)
                if chunk:
                    err = (err + chunk)[:4096]
                else:
                    _close(fds, "err_r")
