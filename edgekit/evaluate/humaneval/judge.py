"""The trusted side of the checker: runs the test's ``check()`` and alone says "passed".

Standard library only (runs as part of ``python -I -B -c <checker>``, see :mod:`.harness`; inside
the sandbox edgekit is not importable). ``main`` is the checker's entry point: the judge makes
itself non-dumpable and a child subreaper, forks the worker (:mod:`.worker`), and only then reads
the per-run token and the test source from the parent. It calls ``check()`` with proxies whose
calls go to the worker as plain data (:mod:`.wire`), and writes ``PASS <token>`` or
``FAIL <token> <reason>`` once ``check()`` has returned or raised. Design notes:
:mod:`edgekit.evaluate.humaneval`.
"""

import builtins
import json
import os
import re
import signal
import sys
import time

from .wire import decode, encode, recv, sanitize, send
from .worker import PR_SET_CHILD_SUBREAPER, PR_SET_DUMPABLE, PR_SET_PDEATHSIG, prctl, set_limits, worker

# ---------------------------------------------------------------- judge (trusted)


class ProgramExit(BaseException):
    """The program ended, or broke the protocol, before check() returned (tests cannot catch it)."""


class ProgramError(Exception):
    pass


_remote_classes = {}


def _remote_exception(info):
    if type(info) is not dict:
        return ProgramExit("the program broke the checker's protocol")
    name = info.get("type") if type(info.get("type")) is str else ""
    name = name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,60}", name) else "Exception"
    msg = sanitize(info.get("message", ""))
    text = f"{name}: {msg}" if msg else name
    if info.get("exit") is not False:  # SystemExit, KeyboardInterrupt, ...: the program is gone
        return ProgramExit(text)
    cls, base = ProgramError, getattr(builtins, name, None)
    if isinstance(base, type) and issubclass(base, Exception):  # so a test's ``except ValueError`` works
        cls = _remote_classes.get(name)
        if cls is None:
            try:
                cls = type(name, (ProgramError, base), {})
            except TypeError:
                cls = ProgramError
            _remote_classes[name] = cls
    e = cls(text)
    e.text = text
    return e


class Rpc:
    def __init__(self, req_w, resp_r, pid):
        self.req_w, self.resp_r, self.pid = req_w, resp_r, pid

    def _gone(self):
        status = None
        for _ in range(100):  # up to ~1 s for the worker to finish dying
            try:
                p, st = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                break
            if p:
                status = st
                break
            time.sleep(0.01)
        if status is None:
            return ProgramExit("the program closed the checker's channel before check() returned")
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            try:
                sig = signal.Signals(sig).name
            except ValueError:
                pass
            return ProgramExit(f"the program was killed by signal {sig} before check() returned")
        return ProgramExit(f"the program exited (status {os.WEXITSTATUS(status)}) before check() returned")

    def receive(self):
        try:
            msg = recv(self.resp_r)
        except Exception:
            raise ProgramExit("the program broke the checker's protocol") from None
        if msg is None:
            raise self._gone()
        if type(msg) is not dict:
            raise ProgramExit("the program broke the checker's protocol")
        return msg

    def request(self, msg):
        try:
            send(self.req_w, msg)
        except OSError:
            raise self._gone() from None
        return self.receive()

    def proxy(self, name):
        def call(*args, **kwargs):
            reply = self.request({"op": "call", "name": name, "args": encode(list(args)), "kwargs": encode(kwargs)})
            if "ok" in reply:
                try:
                    return decode(reply["ok"])
                except Exception:
                    raise ProgramExit("the program broke the checker's protocol") from None
            raise _remote_exception(reply.get("exc"))

        call.__name__ = call.__qualname__ = name
        return call


def _global_names(code):
    names = set(code.co_names)
    for c in code.co_consts:
        if hasattr(c, "co_names"):
            names |= _global_names(c)
    return names


def judge(test_src, entry_point, rpc):
    """(passed, reason): runs the test's check() here, the candidate in the worker. Modules the
    program imported are not taken over: the judge imports nothing on the program's say-so."""
    try:
        first = rpc.receive()
        if "exc" in first:
            raise _remote_exception(first["exc"])
        code = compile(test_src, "test.py", "exec", dont_inherit=True, optimize=0)
        wanted = sorted({n for n in _global_names(code) if not hasattr(builtins, n)} | {entry_point})
        found = rpc.request({"op": "names", "names": wanted}).get("names")
        if type(found) is not dict:
            raise ProgramExit("the program broke the checker's protocol")
        ns = {"__name__": "test", "__builtins__": builtins}
        for name, kind in found.items():  # helpers the test uses from the program (e.g. poly, encode_cyclic)
            if name not in wanted or type(kind) is not dict:
                continue
            if kind.get("call") is True:
                ns[name] = rpc.proxy(name)
            elif "value" in kind:
                try:
                    ns[name] = decode(kind["value"])
                except Exception:
                    pass
        if type(found.get(entry_point)) is not dict or found[entry_point].get("call") is not True:
            return False, f"NameError: name {entry_point!r} is not defined (or not a function)"
        exec(code, ns)  # the test's own definitions (check, METADATA) override anything injected
        check = ns.get("check")
        if not callable(check):
            return False, "NameError: the test defines no check()"
        check(rpc.proxy(entry_point))
    except BaseException as e:
        text = getattr(e, "text", None) or (str(e) if isinstance(e, ProgramExit) else None)
        if text is None:
            msg = sanitize(str(e))
            text = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
        return False, text
    return True, "passed"


def main():
    cfg = json.loads(sys.argv[1])
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    ctl_r, result_w = cfg["ctl_fd"], cfg["result_fd"]
    prctl(PR_SET_DUMPABLE, 0)  # same-uid processes cannot ptrace us or open /proc/<us>/{mem,fd}
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans of the program stay our descendants: the parent kills them
    set_limits(cfg["limits"])
    req_r, req_w = os.pipe()
    resp_r, resp_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            worker(cfg, req_r, resp_w)
        finally:
            os._exit(1)
    for fd in (req_r, resp_w):
        os.close(fd)
    # Only now, with the worker forked off, read the token and the test: the worker never had them.
    chunks = []
    while True:
        chunk = os.read(ctl_r, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(ctl_r)
    ctl = json.loads(b"".join(chunks).decode("utf-8"))
    token = ctl.pop("token")
    passed, reason = judge(ctl["test"], cfg["entry_point"], Rpc(req_w, resp_r, pid))
    line = f"PASS {token}\n" if passed else f"FAIL {token} {sanitize(reason)}\n"
    os.write(result_w, line.encode("ascii"))
    os.close(result_w)
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
    time.sleep(30)  # the parent kills this process tree (with whatever the program left) on reading the line
    os._exit(0)
