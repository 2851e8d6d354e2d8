"""The per-row log-sum-exp of a logits block, through ggml's own vectorised softmax kernel when the
loaded llama.cpp has it, else numpy.

Private to the llama.cpp engine (:class:`edgekit.engines.llamacpp_sample.BlockSampler` uses it).

Every sampled token's log-probability (what the confidence scores read) needs
``lse = max + log(sum(exp(row - max)))`` over the whole vocabulary (151,936 logits for Qwen2.5).
numpy's float32 ``exp`` is vectorised only with AVX-512 here; on an AVX2 CPU it costs ~1.3 ns per
element: 0.3-0.45 ms per row, the largest part of edgekit's per-step work outside ``llama_decode``
(benchmarks/sample_cost.py). ``libggml-cpu`` exports ``ggml_vec_soft_max_f32(n, y, x, max)``: it
writes ``exp(x - max)`` to ``y`` with ggml's SIMD exp (AVX2/AVX-512/NEON, whatever the build has)
and returns the sum in double precision; 2.8-3.4x faster than numpy on the 2-core EPYC (0.10 against
0.27 ms for a 151,936-logit row).

Safety, since the symbol is ggml's and not llama.h's:
- only a ``libggml-cpu`` that is already loaded in this process is used (``RTLD_NOLOAD``): the
  library llama.cpp decodes with, so its code runs on this CPU (never another build's variant);
- at first use the kernel is checked against a float64 reference on a known vector (a changed
  signature or a broken kernel gives a wrong sum, and then numpy is used, with a warning);
- ``EDGEKIT_LSE=numpy`` forces numpy.

The two agree to float32 precision (the kernel sums in double; numpy's pairwise float32 sum is
the less exact of the two): |difference| < 1e-5 nats on real rows (tests/test_sampling_fast.py).
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger("edgekit.engines")
_SYMBOL = "ggml_vec_soft_max_f32"


def _lib_dir() -> Path | None:
    try:
        import llama_cpp.llama_cpp as llc
    except ImportError:  # pragma: no cover - install problem, reported by the engine
        return None
    base = getattr(llc, "_base_path", None)
    return Path(base) if base else None


def _loaded_kernel():
    """``ggml_vec_soft_max_f32`` from the ``libggml-cpu`` this process has already loaded, or None.
    ``RTLD_NOLOAD`` opens a library only if it is loaded (matched by name: the file names of
    llama.cpp's library folder are tried, ``libggml-cpu.so.0`` as well as its variants)."""
    d, mode = _lib_dir(), getattr(os, "RTLD_NOLOAD", None)
    if d is None or mode is None or not d.is_dir():  # Windows has no RTLD_NOLOAD: numpy there
        return None
    for path in sorted(d.glob("*ggml-cpu*")):
        try:
            f = getattr(ctypes.CDLL(str(path), mode=mode | getattr(os, "RTLD_LAZY", 1)), _SYMBOL)
        except (OSError, AttributeError):
            continue
        f.restype = ctypes.c_double
        f.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float]
        return f
    return None


def _checked(f) -> bool:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(1029) * 5).astype(np.float32)  # odd length: the SIMD tail too
    y = np.empty_like(x)
    m = float(x.max())
    try:
        got = f(len(x), y.ctypes.data, x.ctypes.data, m)
    except Exception:  # pragma: no cover - a foreign call that fails  # noqa: BLE001 - any failure means "not usable"
        return False
    ref = np.exp(x.astype(np.float64) - m)
    want = float(ref.sum())
    return bool(np.isfinite(got) and abs(got - want) <= 1e-6 * want and np.allclose(y, ref, rtol=1e-5, atol=1e-30))


class RowLse:
    """Per-row log-sum-exp over a (rows, n_vocab) float32 block; ``impl`` says which code ran."""

    def __init__(self, n_vocab: int):
        self.nv = n_vocab
        self._f = None
        self.impl = "numpy"
        if os.environ.get("EDGEKIT_LSE", "").strip().lower() != "numpy":
            f = _loaded_kernel()
            if f is not None and _checked(f):
                self._f, self.impl = f, f"ggml ({_SYMBOL})"
                self._scratch = np.empty(n_vocab, np.float32)  # the kernel's exp output, never read
            elif f is not None:
                log.warning("ggml's softmax kernel failed its check; log-probabilities use numpy")
        self._buf = np.empty((0, n_vocab), np.float32)  # the numpy path's work space, grown on use

    def __call__(self, block: np.ndarray, m: np.ndarray) -> np.ndarray:
        """``m + log(sum(exp(block - m)))`` per row, float32; ``m`` the rows' maxima."""
        f = self._f
        if f is None or not block.flags.c_contiguous or block.dtype != np.float32:
            return self._numpy(block, m)
        k, nv = block.shape
        x0, step, y = block.ctypes.data, nv * 4, self._scratch.ctypes.data
        sums = np.fromiter((f(nv, y, x0 + i * step, float(m[i])) for i in range(k)), np.float64, k)
        return (m.astype(np.float64) + np.log(sums)).astype(np.float32)

    def _numpy(self, block: np.ndarray, m: np.ndarray) -> np.ndarray:
        k = block.shape[0]
        if self._buf.shape[0] < k:
            self._buf = np.empty((k, self.nv), np.float32)
        buf = self._buf[:k]
        mk = m[:, None]
        np.subtract(block, mk, out=buf)
        np.exp(buf, out=buf)
        return (mk + np.log(buf.sum(axis=1, keepdims=True)))[:, 0]
