"""Read an importance matrix (llama-imatrix output) into ``{tensor name: per-column importance}``.

Two formats, as llama.cpp's quantize tool reads them:

* GGUF (``imatrix.gguf``, current llama-imatrix): tensors ``<name>.in_sum2`` (sums of squared
  activations, one row per expert) and ``<name>.counts``; importance = in_sum2 / count (1 where a
  row never saw input).
* legacy binary (``imatrix.dat``): int32 entry count, then per entry the name (int32 length + bytes),
  int32 ncall, int32 nval, nval float32 sums; importance = sum / ncall.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from edgekit.errors import UsageError


def _bad(path: Path, why: str) -> UsageError:
    return UsageError(
        f"{path} is not an importance matrix: {why}",
        fix="pass the imatrix.gguf or imatrix.dat written by llama-imatrix for this model",
    )


def read_imatrix(path: str | Path) -> dict[str, np.ndarray]:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"importance matrix {p} does not exist", fix="check the --imatrix path")
    with open(p, "rb") as f:
        magic = f.read(4)
    data = _read_gguf(p) if magic == b"GGUF" else _read_legacy(p)
    if not data:
        raise _bad(p, "it holds no entries")
    for name, v in data.items():
        if not np.all(np.isfinite(v)):
            raise _bad(p, f"entry {name} has non-finite values")
    return data


def _read_gguf(p: Path) -> dict[str, np.ndarray]:
    import gguf

    try:
        r = gguf.GGUFReader(str(p), "r")
    except Exception as e:
        raise _bad(p, f"unreadable GGUF ({type(e).__name__})") from e
    tensors = {t.name: t for t in r.tensors}
    out = {}
    for name, t in tensors.items():
        if not name.endswith(".in_sum2"):
            continue
        base = name[: -len(".in_sum2")]
        c = tensors.get(base + ".counts")
        if c is None:
            raise _bad(p, f"{base} has sums but no counts")
        sums = np.asarray(t.data, dtype=np.float32).reshape(-1, int(t.shape[0]))
        counts = np.asarray(c.data, dtype=np.float32).reshape(-1)
        vals = np.ones_like(sums)
        for j in range(sums.shape[0]):
            if j < counts.size and counts[j] > 0:
                vals[j] = sums[j] / counts[j]
        out[base] = vals.reshape(-1)
    return out


def _read_legacy(p: Path) -> dict[str, np.ndarray]:
    buf = p.read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        n = struct.calcsize(fmt)
        if pos + n > len(buf):
            raise _bad(p, "truncated")
        v = struct.unpack_from(fmt, buf, pos)
        pos += n
        return v

    (n_entries,) = take("<i")
    if not 0 < n_entries < 1_000_000:
        raise _bad(p, f"bad entry count {n_entries}")
    out = {}
    for _ in range(n_entries):
        (ln,) = take("<i")
        if not 0 < ln < 4096 or pos + ln > len(buf):
            raise _bad(p, "bad entry name")
        name = buf[pos : pos + ln].decode("utf-8", errors="replace")
        pos += ln
        ncall, nval = take("<ii")
        if nval <= 0 or pos + 4 * nval > len(buf):
            raise _bad(p, f"entry {name} is truncated")
        vals = np.frombuffer(buf, dtype="<f4", count=nval, offset=pos).astype(np.float32)
        pos += 4 * nval
        out[name] = vals / ncall if ncall > 0 else vals
    return out
