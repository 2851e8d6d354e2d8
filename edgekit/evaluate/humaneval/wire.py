"""Values and messages between the judge and the worker (standard library only: also runs in the checker).

A value crosses the boundary as plain JSON with tags for what JSON lacks (tuples, sets, bytes, big
ints, ...); ``decode`` builds fresh built-in values only, whatever the other side sent. Messages are
length-prefixed JSON. Design notes: :mod:`edgekit.evaluate.humaneval`.
"""

import json
import os
import re
import struct

MAX_MESSAGE = 16 * 1024 * 1024
REASON_CHARS = 120
MAX_ITEMS = 1_000_000


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
    except BaseException:  # a hostile __str__
        msg = ""
    return {"type": type(e).__name__, "message": sanitize(msg), "exit": not isinstance(e, Exception)}
