"""Other edgekit processes computing on this machine.

Each process that holds a loaded local model registers itself (``EDGEKIT_PEER_REGISTRY=off``: a
process neither registers nor looks, e.g. a test harness that holds models while it runs the CLI): a file
``<EDGEKIT_HOME>/run/<pid>.json`` that it keeps locked (``flock``) for as long as it lives. A
file whose lock can be taken belongs to a process that is gone (killed, crashed) and is removed
by whoever finds it. No daemon, no socket: the kernel releases the lock when the process dies.

The llama.cpp engine sizes its thread pool from the usable CPUs divided among the live peers
and re-checks before each request, so two edgekit processes split the cores instead of spinning
against each other.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no registry, nothing shared
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("edgekit.host")


def _off() -> bool:
    return os.environ.get("EDGEKIT_PEER_REGISTRY", "").strip().lower() == "off"


def run_dir() -> Path:
    return Path(os.environ.get("EDGEKIT_HOME") or Path.home() / ".cache" / "edgekit") / "run"


class Registration:
    """This process's entry; :meth:`close` (or process exit) removes it."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    def close(self) -> None:
        if self._fd >= 0:
            try:
                self.path.unlink(missing_ok=True)
            finally:
                os.close(self._fd)
                self._fd = -1


_held: dict[Path, tuple[Registration, int]] = {}


def register(what: str, *, folder: Path | None = None) -> Registration | None:
    """Register this process (one entry per process and folder, reference-counted)."""
    if fcntl is None or _off():
        return None
    folder = folder or run_dir()
    path = folder / f"{os.getpid()}.json"
    if path in _held:
        reg, n = _held[path]
        _held[path] = (reg, n + 1)
        return reg
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{os.getpid()}.tmp"  # locked before it gets its name: never seen unlocked
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, json.dumps({"pid": os.getpid(), "what": what, "since": time.time()}).encode())
        os.replace(tmp, path)
    except OSError as e:  # a read-only home must not stop inference: the check is best effort
        log.debug("peer registry not written (%s): %s", folder, e)
        return None
    reg = Registration(path, fd)
    _held[path] = (reg, 1)
    return reg


def unregister(reg: Registration | None) -> None:
    if reg is None:
        return
    entry = _held.get(reg.path)
    if entry is None:
        return
    if entry[1] > 1:
        _held[reg.path] = (reg, entry[1] - 1)
        return
    del _held[reg.path]
    reg.close()


def live_peers(folder: Path | None = None) -> list[dict]:
    """Other live edgekit processes holding a model ({pid, what, since}); stale entries removed."""
    if fcntl is None or _off():
        return []
    folder = folder or run_dir()
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    me, out = os.getpid(), []
    for name in names:
        if not name.endswith(".json") or name == f"{me}.json":
            continue
        path = folder / name
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:  # locked: its owner is alive
                try:
                    out.append(json.loads(os.read(fd, 4096) or b"{}"))
                except ValueError:
                    out.append({"pid": name[:-5]})
                continue
            path.unlink(missing_ok=True)  # we could lock it: the owner is gone
        finally:
            os.close(fd)
    return out


def warn_if_shared(others: list[dict], adaptive: bool) -> None:
    """One warning line when other edgekit processes hold a model here."""
    if not others:
        return
    pids = ", ".join(f"pid {p.get('pid')} ({p.get('what', '?')})" for p in others)
    how = (
        "threads follow the free cores, so each keeps about its share"
        if adaptive
        else "--threads is fixed, so the processes may slow each other down a lot "
        "(leave --threads out to share adaptively)"
    )
    log.warning("%d other edgekit process(es) hold a model on this machine: %s; %s", len(others), pids, how)
