"""How llama.cpp's CPU threads share the machine: wait policy, thread count, priority.

llama.cpp's CPU backend is built with OpenMP (libgomp): at every barrier of a graph (hundreds
per token) a thread that is done waits for the others. By default it *spins* for a while.
When another process holds a core, the thread it waits for is descheduled and the spinning
thread burns the very time slice the late thread needs: a 2-core machine with one busy core
decodes at 5-30 % of its idle speed instead of about half. Passive waiting (the thread sleeps
at once) gives that share back but costs a futex wake per barrier, 35 % of idle speed in a VM.
So edgekit's default (``auto``) keeps llama.cpp's waiting and sizes the thread pool to the
cores that are free (:class:`edgekit.host.load.ThreadTuner`): with one thread per free core no
thread waits on a descheduled one.

:func:`apply_before_load` sets the OpenMP environment before libgomp initialises (that is, before
``llama_cpp`` is imported; afterwards the environment is read no more). ``EDGEKIT_THREADING``
chooses: ``auto`` (default: adaptive threads), ``passive`` (adaptive threads, passive waits),
or ``spin`` (llama.cpp's own behaviour: fixed threads). A user's own
``OMP_WAIT_POLICY``/``GOMP_SPINCOUNT`` wins and is reported as such.

:func:`set_priority` lowers this process's CPU priority (``nice``, ``batch`` = SCHED_BATCH,
``idle`` = SCHED_IDLE) for all its threads, present and future, so that a robot's control loop
keeps precedence over the language model.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from edgekit.errors import UsageError
from edgekit.host.cpu import usable_cpus

POLICIES = ("auto", "passive", "spin")
PRIORITIES = ("normal", "nice", "batch", "idle")
# auto keeps libgomp's own spin (GOMP_SPINCOUNT 300000, then sleep): with threads that follow the free
# cores no thread waits on a descheduled one, and idle speed is exactly llama.cpp's. Measured on a 2-core
# EPYC (benchmarks/coexist.py): adaptive threads with spin counts of 10k, 100k and 300k all kept 0.61-0.77x
# of idle speed beside a busy core; passive waiting cost 35 % when idle (a futex wake per barrier in a VM).
_ENV = {"auto": {}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}, "spin": {}}
_WAIT = {
    "auto": "libgomp default (spin up to GOMP_SPINCOUNT 300000, then sleep)",
    "passive": "passive (OMP_WAIT_POLICY=PASSIVE)",
    "spin": "libgomp default (spin up to GOMP_SPINCOUNT 300000, then sleep)",
}
_WHY = {
    "auto": "default: threads follow the free cores (a core another process takes is given up within 0.2 s)",
    "passive": "EDGEKIT_THREADING=passive: sleep at every barrier, threads follow the free cores",
    "spin": "EDGEKIT_THREADING=spin: llama.cpp's own behaviour, threads fixed at the usable CPUs",
}
_state: dict = {"applied": None}


def _gomp_loaded() -> bool:
    """Is libgomp already mapped into this process (then its environment is fixed)?"""
    try:
        return "libgomp" in Path("/proc/self/maps").read_text()
    except OSError:
        return "llama_cpp" in sys.modules


def requested_policy() -> str:
    v = (os.environ.get("EDGEKIT_THREADING") or "auto").strip().lower()
    if v not in POLICIES:
        raise UsageError(
            f"EDGEKIT_THREADING={v!r} is not a threading policy",
            fix=f"set EDGEKIT_THREADING to one of {', '.join(POLICIES)} (or unset it)",
        )
    return v


def apply_before_load() -> dict:
    """Set the wait policy for llama.cpp's OpenMP threads; idempotent. Returns :func:`policy`."""
    if _state["applied"] is not None:
        return _state["applied"]
    try:
        requested = requested_policy()
    except UsageError:  # reported where an engine is created (one line); never at import time
        requested = "auto"
    user = {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ}
    if _gomp_loaded():
        wait = "as loaded (llama_cpp/libgomp was loaded before edgekit could set it)"
        why = "import edgekit before llama_cpp, or set OMP_WAIT_POLICY=PASSIVE in the environment"
    elif user:
        wait = ", ".join(f"{k}={v}" for k, v in user.items())
        why = "from the environment"
    else:
        os.environ.update(_ENV[requested])
        wait, why = _WAIT[requested], _WHY[requested]
    _state["applied"] = {"policy": requested, "wait": wait, "why": why}
    return _state["applied"]


def policy() -> dict:
    """What was applied ({policy, wait, why}), or what would be if nothing has loaded yet."""
    if _state["applied"] is not None:
        return dict(_state["applied"])
    return {"policy": requested_policy(), "wait": "not applied yet (no local model loaded in this process)", "why": ""}


def check_threads(threads: int | None, usable: int | None = None) -> None:
    """``--threads`` within 1..the CPUs this process may use (:func:`edgekit.host.cpu.usable_cpus`)."""
    if threads is None:
        return
    if usable is None:
        usable = usable_cpus().count
    if not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= usable:
        raise UsageError(
            f"--threads must be between 1 and the {usable} usable CPU(s), got {threads!r}",
            fix=f"pass --threads 1..{usable} (or leave it out: edgekit picks from the usable CPUs)",
        )


def set_priority(cls: str) -> str:
    """Lower this process's CPU priority for every thread it has now and will start.

    ``normal``: unchanged; ``nice``: nice +10; ``batch``: SCHED_BATCH (nice +10 too);
    ``idle``: SCHED_IDLE (runs only when a CPU has nothing else to do). Returns a description."""
    cls = (cls or "normal").strip().lower()
    if cls not in PRIORITIES:
        raise UsageError(f"unknown priority class {cls!r}", fix=f"use one of {', '.join(PRIORITIES)}")
    if cls == "normal":
        return "normal"
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    for tid in tids:  # Linux: nice and policy are per thread; threads started later inherit them
        try:
            if cls in ("nice", "batch"):
                os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), 10))
            if cls == "batch":
                os.sched_setscheduler(tid, os.SCHED_BATCH, os.sched_param(0))
            if cls == "idle":
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        except (OSError, AttributeError) as e:
            raise UsageError(
                f"could not set priority {cls!r}: {e}",
                fix="use --priority nice (allowed for any user) or run where the scheduler policy may change",
            ) from e
    return {"nice": "nice +10", "batch": "SCHED_BATCH, nice +10", "idle": "SCHED_IDLE"}[cls]
