"""The thin call into llama.cpp's quantizer (``llama_model_quantize``), for ``edgekit.quantize``.

Workflows never import ``llama_cpp``; they call :func:`quantize_gguf` here. It knows the types this
build offers (every ``LLAMA_FTYPE_*`` constant llama-cpp-python exposes), fills
``llama_model_quantize_params`` (threads, allow_requantize, an importance matrix), and turns a
failure into one-line error carrying llama.cpp's own last log line.

The C call cannot be cancelled. It runs in a worker thread so that Ctrl-C reaches the caller at
once; the caller removes its temporary output, and the worker removes whatever the C call leaves
behind when it returns (a process that exits takes the thread with it).
"""

from __future__ import annotations

import collections
import ctypes
import logging
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgekit.errors import BackendError, UsageError

try:
    import llama_cpp as ll
except ImportError as e:  # pragma: no cover - install problem
    raise BackendError("llama-cpp-python is not installed", fix='pip install "llama-cpp-python>=0.3.36,<0.4"') from e

log = logging.getLogger("edgekit.llama_cpp")

_PREFIX = "LLAMA_FTYPE_MOSTLY_"
# name -> llama_ftype, every type this build offers (F32 is "ALL_F32" in llama.h)
FTYPES: dict[str, int] = {"F32": ll.LLAMA_FTYPE_ALL_F32}
FTYPES.update(
    sorted(((k[len(_PREFIX) :], int(getattr(ll, k))) for k in dir(ll) if k.startswith(_PREFIX)), key=lambda kv: kv[1])
)
# llama.cpp refuses these without an importance matrix (tools/quantize does the same check)
NEEDS_IMATRIX = frozenset({"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "Q2_K_S"})


_LOG_HOOK: dict = {}


def version() -> str:
    return str(getattr(ll, "__version__", "?"))


def ftypes() -> dict[str, int]:
    """The quant types this llama.cpp build can write: name -> llama_ftype."""
    return dict(FTYPES)


def _imatrix_array(imatrix: Mapping[str, np.ndarray]):
    """A NULL-terminated ``llama_model_imatrix_data[]`` (llama.cpp copies it at the start of the call);
    returns the array and the buffers it points into (keep both alive during the call)."""
    arr = (ll.llama_model_imatrix_data * (len(imatrix) + 1))()
    keep = []
    for i, (name, vals) in enumerate(imatrix.items()):
        v = np.ascontiguousarray(vals, dtype=np.float32)
        b = name.encode()
        keep += [v, b]
        arr[i].name = b
        arr[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        arr[i].size = v.size
    arr[len(imatrix)].name = None
    return arr, keep


class _LastLines:
    def __init__(self):
        self.lines: collections.deque[str] = collections.deque(maxlen=20)

        @ll.llama_log_callback
        def cb(level, text, user_data):  # ctypes callback
            try:
                s = text.decode("utf-8", errors="replace").rstrip("\n")
                if s.strip():
                    self.lines.append(s.strip())
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("%s", s)
            except BaseException:  # never raise into C
                pass

        self.cb = cb

    def reason(self) -> str:
        for s in reversed(self.lines):
            low = s.lower()
            if "error" in low or "failed" in low or "invalid" in low or "requires" in low:
                return s[:200]
        return self.lines[-1][:200] if self.lines else "no message from llama.cpp"


def quantize_gguf(
    src: str | Path,
    dst: str | Path,
    type_name: str,
    *,
    threads: int = 0,
    allow_requantize: bool = False,
    imatrix: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Quantize GGUF ``src`` into ``dst`` (written by llama.cpp directly: pass a temporary name).
    Blocks until done; Ctrl-C raises KeyboardInterrupt at once (see the module notes)."""
    if type_name not in FTYPES:
        raise UsageError(f"unknown quant type {type_name!r}", fix="use one of " + ", ".join(FTYPES))
    if type_name in NEEDS_IMATRIX and not imatrix:
        raise UsageError(f"{type_name} needs an importance matrix", fix="pass --imatrix FILE (from llama-imatrix)")
    params = ll.llama_model_quantize_default_params()
    params.nthread = int(threads or 0)
    params.ftype = FTYPES[type_name]
    params.allow_requantize = bool(allow_requantize)
    keep = None
    if imatrix:
        arr, keep = _imatrix_array(imatrix)
        params.imatrix = ctypes.cast(arr, ctypes.POINTER(ll.llama_model_imatrix_data))
        keep.append(arr)
    lines = _LastLines()
    result: dict = {}
    cancelled = threading.Event()
    out = Path(dst)

    def work():
        try:
            result["rc"] = ll.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params))
        except BaseException as e:
            result["exc"] = e
        if cancelled.is_set():  # the caller gave up: remove what the C call wrote
            out.unlink(missing_ok=True)
            _restore_log()
        _ = (lines, keep)  # the callback and the imatrix buffers live as long as the C call

    _LOG_HOOK["cb"] = lines.cb  # referenced while llama.cpp holds it (a freed callback would crash it)
    ll.llama_log_set(lines.cb, ctypes.c_void_p(0))
    t = threading.Thread(target=work, name="edgekit-quantize", daemon=True)
    t.start()
    try:
        while t.is_alive():
            t.join(0.2)
    except BaseException:
        cancelled.set()
        raise
    finally:
        if not t.is_alive():
            _restore_log()
    if "exc" in result:
        raise BackendError(f"llama.cpp quantize failed: {result['exc']}", fix="see EDGEKIT_DEBUG=1 for llama.cpp's log")
    if result.get("rc", 1) != 0:
        raise BackendError(
            f"llama.cpp could not quantize {Path(src).name} to {type_name}: {lines.reason()}",
            fix="check the source model; EDGEKIT_DEBUG=1 shows llama.cpp's log",
        )


def _restore_log() -> None:
    try:
        from edgekit.engines import llamacpp

        ll.llama_log_set(llamacpp.log_to_logging, ctypes.c_void_p(0))
        _LOG_HOOK["cb"] = llamacpp.log_to_logging
    except Exception:  # the engine's log hook is a nicety here
        pass
