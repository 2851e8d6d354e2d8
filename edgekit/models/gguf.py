"""Read and check a GGUF file's header without loading the model.

Catches the three failures users meet: not a GGUF at all, a truncated file (an interrupted
copy), and an architecture llama.cpp does not know. A header error in a file edgekit verified
before (a cached catalogue model, or a file with a recorded sha256) is first checked against its
hash: if that does not match, it is reported as a corrupt file (a ChecksumMismatch that is also a
GGUFError) with the fix that repairs it (`edgekit models pull ID`), not as "truncated".

Also returns the metadata the planner and profiler need (architecture, layers, heads, chat
template, quantization).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import GGUFError

GGUF_MAGIC = b"GGUF"

# ggml type id -> (bytes per block, elements per block). Unknown ids skip the size check.
GGML_TYPE_SIZE = {
    0: (4, 1),
    1: (2, 1),
    2: (18, 32),
    3: (20, 32),
    6: (22, 32),
    7: (24, 32),
    8: (34, 32),
    9: (36, 32),
    10: (84, 256),
    11: (110, 256),
    12: (144, 256),
    13: (176, 256),
    14: (210, 256),
    15: (292, 256),
    16: (66, 256),
    17: (74, 256),
    18: (98, 256),
    19: (50, 256),
    20: (18, 32),
    21: (110, 256),
    22: (82, 256),
    23: (136, 256),
    24: (1, 1),
    25: (2, 1),
    26: (4, 1),
    27: (8, 1),
    28: (8, 1),
    29: (56, 256),
    30: (2, 1),
    34: (54, 256),
    35: (66, 256),
    39: (17, 32),
}

# general.file_type (llama_ftype) -> name
FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4",
}

# Architectures this llama.cpp generation loads (subset that matters on edge devices). An
# unknown name is tried anyway; a failed load then reports it as unsupported.
KNOWN_ARCHS = {
    "llama",
    "llama4",
    "qwen2",
    "qwen2moe",
    "qwen3",
    "qwen3moe",
    "gemma",
    "gemma2",
    "gemma3",
    "gemma3n",
    "phi2",
    "phi3",
    "phimoe",
    "mistral3",
    "granite",
    "granitemoe",
    "olmo",
    "olmo2",
    "stablelm",
    "starcoder2",
    "deepseek",
    "deepseek2",
    "falcon",
    "gpt2",
    "gptneox",
    "bloom",
    "mpt",
    "internlm2",
    "minicpm",
    "minicpm3",
    "exaone",
    "smollm3",
    "cohere2",
    "command-r",
    "chatglm",
    "glm4",
    "nemotron",
    "bert",
    "nomic-bert",
    "t5",
    "mamba",
    "rwkv6",
    "rwkv7",
    "baichuan",
    "orion",
    "plamo",
    "codeshell",
    "jais",
    "arctic",
    "dbrx",
    "lfm2",
    "hunyuan-dense",
    "ernie4_5",
    "seed_oss",
    "gpt-oss",
    "apertus",
    "granitehybrid",
}

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


@dataclass
class GGUFInfo:
    path: Path
    version: int
    n_tensors: int
    metadata: dict[str, Any]
    file_size: int
    data_end: int  # byte offset where tensor data ends (== required file size)
    tensor_bytes: int
    arch: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default=None):
        return self.metadata.get(key, default)

    def arch_key(self, suffix: str, default=None):
        return self.metadata.get(f"{self.arch}.{suffix}", default)

    @property
    def quant(self) -> str | None:
        ft = self.metadata.get("general.file_type")
        return FILE_TYPES.get(ft, f"ftype{ft}") if ft is not None else None

    @property
    def chat_template(self) -> str | None:
        return self.metadata.get("tokenizer.chat_template")

    @property
    def n_layer(self) -> int | None:
        return self.arch_key("block_count")

    @property
    def n_embd(self) -> int | None:
        return self.arch_key("embedding_length")

    @property
    def n_head(self) -> int | None:
        return self.arch_key("attention.head_count")

    @property
    def n_head_kv(self) -> int | None:
        v = self.arch_key("attention.head_count_kv", self.n_head)
        return max(v) if isinstance(v, list) else v

    @property
    def head_dim(self) -> int | None:
        k = self.arch_key("attention.key_length")
        if k:
            return k
        if self.n_embd and self.n_head:
            h = max(self.n_head) if isinstance(self.n_head, list) else self.n_head
            return self.n_embd // h
        return None

    def kv_bytes_per_token(self, bytes_per_elem: float = 2.0) -> float | None:
        """K and V cache bytes per token of context (f16 cache by default)."""
        if not (self.n_layer and self.n_head_kv and self.head_dim):
            return None
        kl = self.arch_key("attention.key_length", self.head_dim)
        vl = self.arch_key("attention.value_length", self.head_dim)
        return float(self.n_layer * self.n_head_kv * (kl + vl) * bytes_per_elem)

    def shape(self) -> dict[str, Any]:
        """The size and shape facts a profile's ``ModelInfo`` takes from this header (cross-model estimates)."""
        return {
            "arch": self.arch,
            "size_bytes": self.tensor_bytes,
            "n_layer": self.n_layer,
            "n_embd": self.n_embd,
            "n_head_kv": self.n_head_kv,
            "n_embd_head": self.head_dim,
            "kv_bytes_per_token": self.kv_bytes_per_token(),
        }


class _Reader:
    def __init__(self, buf, path: Path):
        self.buf = buf
        self.pos = 0
        self.path = path

    def need(self, n: int):
        if self.pos + n > len(self.buf):
            raise GGUFError(
                f"{self.path} is truncated: its header ends at byte {len(self.buf)}",
                fix="the file is incomplete; re-copy or re-download it",
            )

    def unpack(self, fmt: str):
        n = struct.calcsize(fmt)
        self.need(n)
        v = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += n
        return v

    def string(self) -> str:
        n = self.unpack("<Q")
        self.need(n)
        s = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return s.decode("utf-8", errors="replace")

    def skip_string(self):
        n = self.unpack("<Q")
        self.need(n)
        self.pos += n

    def value(self, vtype: int, keep: bool = True):
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == 8:
            return self.string()
        if vtype == 9:
            etype = self.unpack("<I")
            count = self.unpack("<Q")
            if etype in _SCALARS:
                size = struct.calcsize(_SCALARS[etype])
                self.need(size * count)
                if keep and count <= 4096:
                    vals = list(struct.unpack_from(f"<{count}{_SCALARS[etype][1]}", self.buf, self.pos))
                else:
                    vals = f"<array of {count}>"
                self.pos += size * count
                return vals
            if etype == 8:
                for _ in range(count):  # vocabularies: skip fast, keep only the count
                    self.skip_string()
                return f"<array of {count} strings>"
            return [self.value(etype, keep) for _ in range(count)]
        raise GGUFError(
            f"{self.path}: unknown GGUF value type {vtype}", fix="the file is corrupt or from a newer GGUF version"
        )


def _as_damage(path: str | Path, err: GGUFError) -> GGUFError:
    """The error to raise for a header problem: the corrupt-file error if the file is one edgekit
    verified before and its hash no longer matches, else ``err`` unchanged."""
    from edgekit.models.integrity import explain_header_error

    p = Path(path)
    try:
        if not p.is_file():
            return err
        return explain_header_error(p, err) or err
    except OSError:
        return err


def read_gguf(path: str | Path) -> GGUFInfo:
    """Parse the header and tensor table; raise GGUFError if not GGUF or truncated (a corrupt
    cached model: the corrupt-file error, a ChecksumMismatch and GGUFError)."""
    try:
        return _read_gguf(path)
    except GGUFError as e:
        damage = _as_damage(path, e)
        if damage is e:
            raise
        raise damage from e


@dataclass
class HeaderLayout:
    """Where everything in a GGUF header is: each metadata pair as (key, value type, array element
    type or None, start byte, end byte, value) and each tensor as (name, dims, ggml type, offset from
    the data start, bytes or None for a type edgekit cannot size)."""

    version: int
    kvs: list
    tensors: list
    align: int
    header_end: int
    data_start: int

    @property
    def metadata(self) -> dict[str, Any]:
        return {k: v for k, _, _, _, _, v in self.kvs}


def header_layout(mm, p: Path) -> HeaderLayout:
    """Parse the header of the GGUF mapped at ``mm`` (vocabularies skipped fast, not decoded)."""
    if mm[:4] != GGUF_MAGIC:
        raise GGUFError(
            f"{p} is not a GGUF model (magic {bytes(mm[:4])!r})",
            fix="pass a .gguf file (convert others with llama.cpp's convert_hf_to_gguf.py)",
        )
    r = _Reader(mm, p)
    r.pos = 4
    version = r.unpack("<I")
    if version not in (2, 3):
        raise GGUFError(
            f"{p} has GGUF version {version}; supported: 2, 3", fix="re-export the model with a current llama.cpp"
        )
    n_tensors = r.unpack("<Q")
    n_kv = r.unpack("<Q")
    kvs = []
    for _ in range(n_kv):
        start = r.pos
        key = r.string()
        vtype = r.unpack("<I")
        sub = None
        if vtype == 9:  # peek at the element type (value() reads it itself)
            r.need(4)
            sub = struct.unpack_from("<I", mm, r.pos)[0]
        value = r.value(vtype)
        kvs.append((key, vtype, sub, start, r.pos, value))
    tensors = []
    for _ in range(n_tensors):
        name = r.string()
        n_dims = r.unpack("<I")
        dims = [r.unpack("<Q") for _ in range(n_dims)]
        ttype = r.unpack("<I")
        offset = r.unpack("<Q")
        n_el = 1
        for d in dims:
            n_el *= d
        bs = GGML_TYPE_SIZE.get(ttype)
        tensors.append((name, dims, ttype, offset, (n_el // bs[1]) * bs[0] if bs else None))
    align = int(next((v for k, _, _, _, _, v in kvs if k == "general.alignment"), 32))
    return HeaderLayout(version, kvs, tensors, align, r.pos, (r.pos + align - 1) // align * align)


def _read_gguf(path: str | Path) -> GGUFInfo:
    p = Path(path)
    if not p.exists():
        raise GGUFError(
            f"model file {p} does not exist", fix="check the path, or use a catalogue id (`edgekit models list`)"
        )
    if p.is_dir():
        raise GGUFError(f"{p} is a directory, not a .gguf file", fix="pass the .gguf file inside it")
    size = p.stat().st_size
    if size < 24:
        raise GGUFError(f"{p} is not a GGUF model (only {size} bytes)", fix="pass a .gguf file")
    with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        lay = header_layout(mm, p)
    meta, data_start = lay.metadata, lay.data_start
    data_end = data_start if lay.tensors else lay.header_end
    total = 0
    n_elements = 0
    types: dict[int, int] = {}
    matrix_elements = 0
    for _, dims, ttype, offset, nbytes in lay.tensors:
        n_el = 1
        for d in dims:
            n_el *= d
        n_elements += n_el
        if len(dims) >= 2 and n_el > 1:
            matrix_elements += n_el
        types[ttype] = types.get(ttype, 0) + 1
        total += nbytes or 0
        data_end = max(data_end, data_start + offset + (nbytes or 0))
    if data_end > size:
        raise GGUFError(
            f"{p} is truncated: {size:,} bytes on disk, its tensors need {data_end:,}",
            fix="the file is incomplete; re-copy or re-download it",
        )
    arch = str(meta.get("general.architecture", ""))
    # tensor_types: ggml type id -> tensor count; n_elements: parameters (embeddings included);
    # matrix_elements: those in 2-D+ tensors (the ones a quantizer converts); header_bytes: up to the data
    extra = {
        "tensor_types": types,
        "n_elements": n_elements,
        "matrix_elements": matrix_elements,
        "header_bytes": data_start,
    }
    return GGUFInfo(p, lay.version, len(lay.tensors), meta, size, data_end, total, arch=arch, extra=extra)


def check_gguf(path: str | Path) -> GGUFInfo:
    info = read_gguf(path)
    if not info.arch:
        err = GGUFError(f"{path} has no general.architecture", fix="re-export the model with a current llama.cpp")
        damage = _as_damage(path, err)
        raise damage
    return info


def arch_is_known(arch: str) -> bool:
    return arch in KNOWN_ARCHS
