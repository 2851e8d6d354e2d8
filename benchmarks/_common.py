"""What every benchmark script shares: options, output, statistics, errors, loopback servers.

Scripts run as ``python benchmarks/NAME.py``, so this folder is on ``sys.path`` and ``import _common``
works without any path edit. Nothing here imports edgekit at module level (the test loads this file alone).

- :func:`parser`: an ``argparse`` parser with the shared options (``--json``, ``--reps``, ``--out``, ``--model``,
  ``--threads``)
- :func:`emit`: print the result as JSON (``--json``) or as text; :func:`write_json`: the ``--out`` file
- :class:`Col`, :func:`format_table`, :func:`print_table`, :class:`TableStream`: plain aligned tables
- :func:`summarize` (:class:`Summary`), :func:`median_or_none`: summary statistics of repeated measurements
- :func:`log`: a progress line on stderr
- :func:`run_main`: the ``__main__`` wrapper (one-line errors, exit code)
- :func:`free_port`, :func:`loopback_server`, :func:`inprocess_server`: a server on 127.0.0.1, started and stopped
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

# ----------------------------------------------------------------------------- options


def parser(
    doc: str | None,
    *,
    json_flag: bool = True,
    reps: int | None = None,
    out: str | bool | None = None,
    model: str | None = None,
    threads: bool | int = False,
    paragraph: bool = False,
    helps: dict[str, str] | None = None,
) -> argparse.ArgumentParser:
    """A parser whose description is the first line (``paragraph``: the first paragraph) of ``doc``, with the
    shared options, each only where asked: ``--json`` (print JSON), ``--reps N`` (repetitions, default ``reps``),
    ``--out FILE`` (``out=True``: required; a string: its default), ``--model ID`` (default ``model``) and
    ``--threads N`` (``threads=True``: default None, the runtime's choice; an int: that). ``helps``: help texts
    for some of them, by option name (``{"out": "..."}``) instead of the generic ones."""
    text = (doc or "").strip()
    desc = text.split("\n\n")[0] if paragraph else (text.splitlines() or [""])[0]
    ap = argparse.ArgumentParser(description=desc or None)
    helps = helps or {}
    if model is not None:
        ap.add_argument(
            "--model", default=model, help=helps.get("model", f"catalogue id or .gguf path (default {model})")
        )
    if threads is not False:
        default = None if threads is True else int(threads)
        ap.add_argument("--threads", type=int, default=default, help=f"CPU threads (default {default or 'auto'})")
    if reps is not None:
        ap.add_argument("--reps", type=int, default=reps, help=helps.get("reps", f"repetitions (default {reps})"))
    if out is True:
        ap.add_argument("--out", required=True, help=helps.get("out", "write the result to this JSON file"))
    elif isinstance(out, str):
        ap.add_argument(
            "--out", default=out, help=helps.get("out", f"write the result to this JSON file (default {out})")
        )
    if json_flag:
        ap.add_argument("--json", action="store_true", help="print the result as JSON instead of text")
    return ap


# ----------------------------------------------------------------------------- output


def log(msg: str) -> None:
    """A progress or warning line on stderr (stdout carries the result)."""
    print(msg, file=sys.stderr, flush=True)


def emit(
    result: Any,
    json_flag: bool,
    text: str | Callable[[], Any] | None = None,
    *,
    indent: int | None = 1,
    default: Callable[[Any], Any] | None = None,
) -> None:
    """Print ``result`` as JSON on stdout when ``json_flag``; else ``text`` (a string, or a callable that prints),
    and without ``text`` the JSON after all."""
    if json_flag or text is None:
        print(json.dumps(result, indent=indent, default=default))
    elif callable(text):
        text()
    else:
        print(text)


def write_json(path: str | os.PathLike, result: Any, *, indent: int | None = 1) -> None:
    """Write ``result`` as JSON to ``path`` (the ``--out`` file), with a final newline."""
    with open(path, "w") as f:
        f.write(json.dumps(result, indent=indent) + "\n")


@dataclass(frozen=True)
class Col:
    """One table column: ``get`` is a row key or a function of the row; ``fmt`` a format spec (``".3f"``,
    ``"+.1f"``); ``align`` ``"<"`` or ``">"`` (default: right where ``fmt`` is given or the values are numbers,
    else left); ``width`` the least width; ``none`` stands for None (and a missing key).

    Where a table takes columns, a string ``"key"`` or ``"key:fmt"`` stands for ``Col(key, key, fmt)``: the JSON
    key is the column's head, so the text table and the JSON say the same thing."""

    head: str
    get: str | Callable[[Any], Any]
    fmt: str = ""
    align: str | None = None
    width: int = 0
    none: str = "-"

    @classmethod
    def of(cls, spec: Col | str) -> Col:
        if isinstance(spec, Col):
            return spec
        key, _, fmt = spec.partition(":")
        return cls(key, key, fmt)

    def value(self, row: Any) -> Any:
        return self.get(row) if callable(self.get) else row.get(self.get)

    def text(self, row: Any) -> str:
        v = self.value(row)
        return self.none if v is None else format(v, self.fmt) if self.fmt else str(v)

    def alignment(self, values: Iterable[Any] = ()) -> str:
        number = any(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        return self.align or (">" if self.fmt or number else "<")


def _line(cells: Iterable[str], aligns: Sequence[str], widths: Sequence[int]) -> str:
    return " ".join(f"{s:{a}{w}}" for s, a, w in zip(cells, aligns, widths)).rstrip()


def format_table(rows: Iterable[Any], cols: Sequence[Col | str]) -> list[str]:
    """A header line and one line per row, each column as wide as its widest cell (at least ``Col.width``)."""
    cs, rows = [Col.of(c) for c in cols], list(rows)
    cells = [[c.text(r) for c in cs] for r in rows]
    widths = [max([len(c.head), c.width] + [len(row[i]) for row in cells]) for i, c in enumerate(cs)]
    aligns = [c.alignment(c.value(r) for r in rows) for c in cs]
    return [_line([c.head for c in cs], aligns, widths)] + [_line(row, aligns, widths) for row in cells]


def print_table(rows: Iterable[Any], cols: Sequence[Col | str], file=None) -> None:
    for line in format_table(rows, cols):
        print(line, file=file or sys.stdout)


class TableStream:
    """A table printed row by row as results arrive (long runs): the header comes with the first row, and the
    widths are fixed then (the head's, the first row's cell + 2, ``Col.width``); a wider cell later pushes its line
    out rather than wait for the last row. ``enabled=False`` prints nothing (``--json`` runs)."""

    def __init__(self, cols: Sequence[Col | str], file=None, enabled: bool = True):
        self.cols, self.file, self.enabled = [Col.of(c) for c in cols], file, enabled
        self.widths: list[int] | None = None
        self.aligns: list[str] = []

    def row(self, row: Any) -> None:
        """Print ``row`` (nothing when not ``enabled``, e.g. under ``--json``)."""
        if not self.enabled:
            return
        cells = [c.text(row) for c in self.cols]
        out = self.file or sys.stdout
        if self.widths is None:
            self.widths = [max(len(c.head), len(s) + 2, c.width) for c, s in zip(self.cols, cells)]
            self.aligns = [c.alignment([c.value(row)]) for c in self.cols]
            print(_line([c.head for c in self.cols], self.aligns, self.widths), file=out)
        print(_line(cells, self.aligns, self.widths), file=out, flush=True)


# ----------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Summary:
    """Median, min-max spread and quartiles of the measurements that are not None (all None when there are none).
    Quartiles: ``statistics.quantiles(method="inclusive")``, i.e. linear interpolation between order statistics."""

    n: int
    median: float | None
    min: float | None
    max: float | None
    q1: float | None
    q3: float | None

    @property
    def iqr(self) -> float | None:
        return None if self.q1 is None else self.q3 - self.q1

    def spread(self, count_key: str = "n") -> dict:
        """``{"median", "min", "max", count_key}``: the benchmarks' usual JSON summary of repetitions."""
        return {"median": self.median, "min": self.min, "max": self.max, count_key: self.n}


def summarize(xs: Iterable[float | None]) -> Summary:
    v = [x for x in xs if x is not None]
    if not v:
        return Summary(0, None, None, None, None, None)
    q1, _, q3 = statistics.quantiles(v, n=4, method="inclusive") if len(v) > 1 else (v[0], v[0], v[0])
    return Summary(len(v), statistics.median(v), min(v), max(v), q1, q3)


def median_or_none(xs: Iterable[float | None]) -> float | None:
    """The median of the values that are not None; None if there are none."""
    return summarize(xs).median


def median_interval(xs: Iterable[float | None], level: float = 0.95) -> tuple[float | None, float | None]:
    """A distribution-free interval for the median: the order statistics x_(j) and x_(n+1-j) with the
    largest j whose binomial coverage 1 - 2 P(Bin(n, 1/2) < j) is still >= ``level`` (exact, no
    resampling). (None, None) with fewer than the values that coverage needs (6 at 95 %)."""
    v = sorted(x for x in xs if x is not None)
    n, best = len(v), None
    for j in range(1, n // 2 + 1):
        if 1 - 2 * sum(math.comb(n, i) for i in range(j)) / 2**n >= level:
            best = j
    return (v[best - 1], v[n - best]) if best else (None, None)


# ----------------------------------------------------------------------------- main


def run_main(main: Callable[..., int | None], argv: Sequence[str] | None = None) -> None:
    """Run ``main(argv)`` and exit with its return code. An edgekit error (a problem the user can fix) becomes
    ``error: <message> (fix: ...)`` and its exit code; any other exception one ``error:`` line and exit 1
    (``EDGEKIT_DEBUG=1``: the traceback instead); Ctrl-C exits 130; a closed stdout (``| head``) exits 1 quietly."""
    try:
        code = main(argv)
    except KeyboardInterrupt:
        log("interrupted")
        code = 130
    except BrokenPipeError:  # stdout closed early (`| head`): no error line, no traceback at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    except Exception as e:  # a benchmark's last line of defence: one line, not a traceback
        if os.environ.get("EDGEKIT_DEBUG"):
            raise
        one_line = getattr(e, "one_line", None)
        if callable(one_line):
            log(f"error: {one_line()}")
            code = getattr(e, "exit_code", 2)
        else:
            msg = " ".join(str(e).split()) or "(no message)"
            log(f"error: {type(e).__name__}: {msg} (EDGEKIT_DEBUG=1 shows the traceback)")
            code = 1
    sys.exit(code or 0)


# ----------------------------------------------------------------------------- loopback servers


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now (the OS's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _tail(path: str, lines: int = 5) -> str:
    try:
        with open(path, errors="replace") as f:
            return " | ".join(ln.strip() for ln in f.read().splitlines()[-lines:] if ln.strip())
    except OSError:
        return ""


@dataclass
class Server:
    """A running loopback server: ``url`` is ``http://127.0.0.1:PORT``; ``log_path`` its captured output."""

    port: int
    url: str
    proc: subprocess.Popen | None = None
    log_path: str | None = None


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return 200 <= r.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


@contextlib.contextmanager
def loopback_server(
    cmd: Callable[[int], list[str]] | Sequence[str],
    *,
    ready_path: str = "/",
    timeout: float = 120.0,
    env: dict | None = None,
    name: str = "server",
    stop_grace: float = 10.0,
) -> Iterator[Server]:
    """Start a server subprocess on 127.0.0.1 and stop it on exit.

    ``cmd``: the command, a function of the port or a list in which ``{port}`` is replaced. A free port is
    picked; the process runs in its own process group with stdout and stderr in a temporary log file (not the
    repository); it is ready when ``GET http://127.0.0.1:PORT{ready_path}`` answers 2xx within ``timeout`` s
    (else, or if it exits first, RuntimeError with the log's tail). On exit the whole group gets SIGTERM, then
    SIGKILL after ``stop_grace`` s. The log file is removed on a clean exit; if the server or the block failed,
    its path is logged and it is kept."""
    port = free_port()
    argv = cmd(port) if callable(cmd) else [str(a).replace("{port}", str(port)) for a in cmd]
    fd, log_path = tempfile.mkstemp(prefix=f"edgekit-bench-{name}-", suffix=".log")
    failed = True
    with os.fdopen(fd, "w") as logf:
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while not _ready(url + ready_path):
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode} before it was ready: {_tail(log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready on port {port} after {timeout:g} s: {_tail(log_path)}")
            time.sleep(0.2)
        yield Server(port=port, url=url, proc=proc, log_path=log_path)
        failed = False
    finally:
        _stop_group(proc, stop_grace)
        if failed:
            log(f"{name} log: {log_path}")
        else:
            with contextlib.suppress(OSError):
                os.unlink(log_path)


def _stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    # children that outlived the leader
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def inprocess_server(app: Any, *, timeout: float = 30.0) -> Iterator[Server]:
    """Serve an ASGI ``app`` with uvicorn on 127.0.0.1 in a thread of this process (for a benchmark that must share
    objects, e.g. one Runtime, with the server); the socket is bound before the thread starts (no port race),
    ready within ``timeout`` s or RuntimeError; stopped on exit."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    th = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not th.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the in-process server did not start on port {port} within {timeout:g} s")
            time.sleep(0.01)
        yield Server(port=port, url=f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        th.join(10)
        sock.close()
