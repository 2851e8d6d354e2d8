"""The untrusted side of the checker: it executes the model-written program and answers the judge.

Standard library only (runs as part of ``python -I -B -c <checker>``, see :mod:`.harness`). Before
the program runs, the worker loses every inherited descriptor but its two RPC pipes, drops to a
throwaway uid when there is one (root without one empties its capability sets), sets no_new_privs
and installs an audit hook (no sockets, no ctypes). It then answers ``names`` and ``call`` requests
with plain data (:mod:`.wire`). The process controls here are used by the judge too.
"""

import os
import signal
import sys

from .wire import decode, describe, encode, recv, sanitize, send

PROGRAM_MODULE = "program"  # not "__main__": ``if __name__ == "__main__":`` blocks do not run (as in HumanEval)

# ---------------------------------------------------------------- process helpers


def prctl(option, arg):
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, arg, 0, 0, 0) == 0
    except Exception:
        return False


PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 24, 36, 38
CAP_SETPCAP = 8


def set_limits(limits):
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
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if cfg.get("nproc"):
        set_limits([("RLIMIT_NPROC", cfg["nproc"])])
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
    except BaseException as e:  # any way out of the program is reported
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
        except BaseException as e:
            reply = {"exc": describe(e)}
        send(resp_w, reply)
        if "exc" in reply and reply["exc"]["exit"]:
            os._exit(1)
