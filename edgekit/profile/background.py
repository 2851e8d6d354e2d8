"""``edgekit profile --background N|CMD``: measure a device while something else computes on it.

A robot's computer is never idle: perception, SLAM and control share the CPU with the model. A
profile measured on an idle machine promises latencies that a loaded one breaks. With
``--background 2`` the sweep runs beside two busy-loop processes; with ``--background "CMD"``
beside the user's own workload. The processes start after an idle reference decode, run for the
rest of the sweep, and are stopped -- on success, failure or Ctrl-C, and by the kernel if this
process dies (``PR_SET_PDEATHSIG``) -- so none is left behind. The profile records what ran,
how many cores the others used, and the measured slowdown of the reference decode.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import subprocess
import sys
import time

from edgekit.errors import UsageError

BUSY = "while True: pass"


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Background:
    def __init__(self, spec: str):
        spec = (spec or "").strip()
        if not spec:
            raise UsageError(
                "--background needs a number of busy workers or a command",
                fix='pass --background 1 or --background "CMD"',
            )
        self.workers: int | None = None
        self.command: str | None = None
        if spec.isdigit():
            self.workers = int(spec)
            if not 1 <= self.workers <= 256:
                raise UsageError(
                    f"--background {spec}: the number of busy workers must be in 1..256", fix="pass --background 1"
                )
        else:
            self.command = spec
            try:
                argv = shlex.split(spec)
            except ValueError as e:
                raise UsageError(
                    f"--background command does not parse: {e}", fix='quote the command: --background "CMD ARGS"'
                ) from None
            if not argv:
                raise UsageError("--background command is empty", fix='pass --background "CMD"')
        self.procs: list[subprocess.Popen] = []

    def describe(self) -> str:
        return f"{self.workers} busy worker(s)" if self.workers else f"command {self.command!r}"

    def start(self) -> Background:
        argvs = (
            [[sys.executable, "-c", BUSY]] * (self.workers or 0) if self.workers else [shlex.split(self.command or "")]
        )
        for argv in argvs:
            try:
                p = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            except OSError as e:
                self.stop()
                raise UsageError(
                    f"--background command failed to start: {e}", fix="check the command and its PATH"
                ) from None
            self.procs.append(p)
        time.sleep(0.3)
        dead = [p for p in self.procs if p.poll() is not None]
        if dead:
            err = (
                (dead[0].stderr.read() or b"").decode(errors="replace").strip().splitlines()[-1:]
                if dead[0].stderr
                else []
            )
            self.stop()
            raise UsageError(
                f"--background {self.describe()} exited at once (code {dead[0].returncode}"
                + (f": {err[0][:160]}" if err else "")
                + "); the profile was not started",
                fix="pass a command that keeps running (it is stopped when the sweep ends)",
            )
        return self

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except OSError:
                    pass
        deadline = time.monotonic() + 3
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except OSError:
                    pass
                p.wait()
            if p.stderr:
                p.stderr.close()
        self.procs = []
