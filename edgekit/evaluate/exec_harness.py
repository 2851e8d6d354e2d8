"""The checker that runs next to model-written code: ``python -I -B -c <this source> <json>``.

Standard library only (inside the sandbox edgekit is not importable); design notes are in
:mod:`edgekit.evaluate.humaneval_exec`. Two processes:

* the *judge* (this process, trusted): non-dumpable, child subreaper, the only holder of the
  result pipe; it receives the per-run token and the test source from the parent **after** it
  forked the worker, runs the test's ``check()`` itself and writes ``PASS <token>`` or
  ``FAIL <token> <reason>`` when ``check()`` has returned or raised;
* the *worker* (untrusted): loses every inherited descriptor but its two RPC pipes, drops to a
  throwaway uid when there is one, installs an audit hook (no sockets, no ctypes), executes the
  program and answers ``call``/``names`` requests with plain data (JSON, tagged for tuples, sets,
  ...). Whatever it sends, the judge only ever sees fresh built-in values.
"""

import builtins
import json
import os
import re
import signal
import struct
import sys
import time

MAX_MESSAGE = 16 * 1024 * 1024
REASON_CHARS = 120
MAX_ITEMS = 1_000_000
PROGRAM_MODULE = "program"  # not "__main__": ``if __name__ == "__main__":`` blocks do not run (as in HumanEval)


def sanitize(text, limit=REASON_CHARS):
    """First non-empty line, printable ASCII only, at most ``limit`` characters."""
    line = next((ln for ln in str(text).splitlines() if ln.strip()), "")
    return "".join(c if " " <= c <= "~" else "?" for c in line.strip())[:limit]


# ---------------------------------------------------------------- values across the boundary


def encode(v, depth=0):
    if depth > 200:
        raise ValueError("value nested too deeply to check")
    d = depth + 1
    if v is None or v is True or v is False:
        return v
    if isinstance(v, bool):
        return bool(v)
    if isinstance(v, int) or _is_integral(v):
        i = int(v)
        return i if -(2**53) < i < 2**53 else {"x": format(i, "x")}
    if isinstance(v, float):
        return float(v)
    if isinstance(v, str):
        return str.__str__(v)
    if isinstance(v, list):
        return [encode(x, d) for x in v]
    if isinstance(v, tuple):
        return {"t": [encode(x, d) for x in v]}
    if isinstance(v, dict):
        return {"d": [[encode(k, d), encode(x, d)] for k, x in v.items()]}
    if isinstance(v, frozenset):
        return {"fs": [encode(x, d) for x in v]}
    if isinstance(v, set):
        return {"s": [encode(x, d) for x in v]}
    if isinstance(v, bytearray):
        return {"ba": bytes(v).hex()}
    if isinstance(v, bytes):
        return {"b": bytes(v).hex()}
    if isinstance(v, complex):
        return {"c": [v.real, v.imag]}
    if isinstance(v, range):
        return {"r": [v.start, v.stop, v.step]}
    if getattr(v, "shape", None) == () and callable(getattr(v, "item", None)):  # a numpy scalar (np.bool_, ...)
        return encode(v.item(), d)
    if hasattr(type(v), "__next__") and hasattr(type(v), "__iter__"):  # generator, map, filter, zip
        items = []
        for x in v:
            if len(items) >= MAX_ITEMS:
                raise ValueError("iterator too long to check")
            items.append(encode(x, d))
        return {"it": items}
    raise TypeError(f"a value of type {type(v).__name__} cannot be passed between the test and the program")


def _is_integral(v):
    try:
        import numbers

        return isinstance(v, numbers.Integral)
    except Exception:
        return False


def decode(o, depth=0):
    """Strict inverse of encode: builds only built-in values, rejects anything else."""
    if depth > 200:
        raise ValueError("value nested too deeply")
    d = depth + 1
    if o is None or type(o) in (bool, int, float, str):
        return o
    if type(o) is list:
        return [decode(x, d) for x in o]
    if type(o) is dict and len(o) == 1:
        ((tag, val),) = o.items()
        if tag == "x" and type(val) is str and re.fullmatch(r"-?[0-9a-f]+", val):
            return int(val, 16)
        if tag == "b" and type(val) is str:
            return bytes.fromhex(val)
        if tag == "ba" and type(val) is str:
            return bytearray.fromhex(val)
        if tag == "c" and type(val) is list and len(val) == 2 and all(type(x) in (int, float) for x in val):
            return complex(val[0], val[1])
        if tag == "r" and type(val) is list and len(val) == 3 and all(type(x) is int for x in val) and val[2]:
            return range(*val)
        if type(val) is list:
            if tag == "t":
                return tuple(decode(x, d) for x in val)
            if tag == "s":
                return {decode(x, d) for x in val}
            if tag == "fs":
                return frozenset(decode(x, d) for x in val)
            if tag == "it":
                return iter([decode(x, d) for x in val])
            if tag == "d" and all(type(kv) is list and len(kv) == 2 for kv in val):
                return {decode(k, d): decode(x, d) for k, x in val}
    raise ValueError("malformed value from the program")


# ---------------------------------------------------------------- framing


def send(fd, obj):
    data = json.dumps(obj, separators=(",", ":")).encode("utf-8")
    if len(data) > MAX_MESSAGE:
        raise ValueError("value too large to check")
    data = struct.pack(">I", len(data)) + data
    while data:
        data = data[os.write(fd, data) :]


def _read_exact(fd, n):
    parts, got = [], 0
    while got < n:
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            return None
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def recv(fd):
    """The next message, or None at end of file."""
    head = _read_exact(fd, 4)
    if head is None:
        return None
    (n,) = struct.unpack(">I", head)
    if n > MAX_MESSAGE:
        raise ValueError("oversized message")
    body = _read_exact(fd, n)
    if body is None:
        raise ValueError("truncated message")
    return json.loads(body.decode("utf-8"))


def describe(e):
    try:
        msg = f"{e.msg} (line {e.lineno})" if isinstance(e, SyntaxError) else str(e)
    except BaseException:  # noqa: BLE001 - a hostile __str__
        msg = ""
    return {"type": type(e).__name__, "message": sanitize(msg), "exit": not isinstance(e, Exception)}


# ---------------------------------------------------------------- process helpers


def _prctl(option, arg):
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, arg, 0, 0, 0) == 0
    except Exception:
        return False


PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 24, 36, 38
CAP_SETPCAP = 8


def _set_limits(limits):
    import resource

    for name, value in limits:
        lim = getattr(resource, name)
        try:
            soft, hard = resource.getrlimit(lim)
            v = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(lim, (v, hard))
        except (ValueError, OSError):
            pass


def _drop_capabilities():
    """Root without a throwaway uid: empty every capability set (bounding too, so exec cannot regain
    them) and set no_new_privs. Root without CAP_SYS_PTRACE cannot ptrace the non-dumpable judge
    or open its /proc entries."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
    except (OSError, ValueError):
        last = 63
    for cap in [c for c in range(last + 1) if c != CAP_SETPCAP] + [CAP_SETPCAP]:
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    if libc.capset(ctypes.byref(Header(0x20080522, 0)), (Data * 2)()) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")
    with open("/proc/self/status") as f:
        if any(ln.startswith(("CapEff:", "CapPrm:", "CapBnd:")) and int(ln.split()[1], 16) for ln in f):
            raise OSError("capabilities are still held")


def _close_fds_except(keep):
    try:
        fds = [int(x) for x in os.listdir("/proc/self/fd")]
    except OSError:
        fds = range(3, 4096)
    for fd in fds:
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


# ---------------------------------------------------------------- worker (untrusted from exec on)


def _audit(event, args):
    if event.startswith("socket."):  # socket.__new__ covers a re-imported _socket too
        raise OSError("network access is disabled during evaluation")
    if event.startswith("ctypes."):
        raise OSError("ctypes is disabled during evaluation")


def worker(cfg, req_r, resp_w):
    _close_fds_except({req_r, resp_w})
    uid = cfg.get("uid")
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    elif os.geteuid() == 0:
        try:
            _drop_capabilities()
        except Exception as e:  # fail closed: a capable root program could take over the judge
            send(
                resp_w,
                {"exc": {"type": "OSError", "message": sanitize(f"cannot drop root capabilities: {e}"), "exit": True}},
            )
            os._exit(1)
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if cfg.get("nproc"):
        _set_limits([("RLIMIT_NPROC", cfg["nproc"])])
    os.chdir(cfg["progdir"])
    import types

    sys.addaudithook(_audit)
    mod = types.ModuleType(PROGRAM_MODULE)
    sys.modules[PROGRAM_MODULE] = mod
    ns = mod.__dict__
    try:
        with open("program.py", encoding="utf-8") as f:
            src = f.read()
        exec(compile(src, "program.py", "exec", dont_inherit=True, optimize=0), ns)
    except BaseException as e:  # noqa: BLE001 - any way out of the program is reported
        send(resp_w, {"exc": describe(e)})
        os._exit(1)
    send(resp_w, {"ready": True})
    table = {}
    while True:
        msg = recv(req_r)
        if msg is None:
            os._exit(0)
        try:
            if msg["op"] == "names":
                out = {}
                for name in msg["names"]:
                    if name not in ns:
                        continue
                    v = ns[name]
                    if isinstance(v, types.ModuleType):
                        continue
                    if callable(v):
                        table[name] = v
                        out[name] = {"call": True}
                    else:
                        try:
                            out[name] = {"value": encode(v)}
                        except Exception:
                            pass
                reply = {"names": out}
            else:
                args, kwargs = decode(msg["args"]), decode(msg["kwargs"])
                reply = {"ok": encode(table[msg["name"]](*args, **kwargs))}
        except BaseException as e:  # noqa: BLE001
            reply = {"exc": describe(e)}
        send(resp_w, reply)
        if "exc" in reply and reply["exc"]["exit"]:
            os._exit(1)


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
    except BaseException as e:  # noqa: BLE001
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
    _prctl(PR_SET_DUMPABLE, 0)  # same-uid processes cannot ptrace us or open /proc/<us>/{mem,fd}
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans of the program stay our descendants: the parent kills them
    _set_limits(cfg["limits"])
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


if __name__ == "__main__":
    main()
