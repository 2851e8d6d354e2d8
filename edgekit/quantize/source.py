"""What a quantize run starts from: a catalogue id, a variant id, a local GGUF path (or hf: spec).

Also the shared mechanics of writing one output: the size estimate and disk check, the temporary
name beside the final one (renamed into place only when complete), and sweeping temporaries that a
killed run left behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.errors import EdgekitError, ModelNotFound, UsageError
from edgekit.models import CATALOG, GGUFInfo, check_gguf, find_variant, resolve
from edgekit.models.gguf import FILE_TYPES
from edgekit.models.integrity import catalog_entry_for_path, sha256_file
from edgekit.schemas.quant import SourceInfo, VariantCard

FLOAT_TYPES = frozenset({"F32", "F16", "BF16"})
_FLOAT_TENSOR_IDS = frozenset({0, 1, 30})  # ggml F32, F16, BF16

# effective bits per weight of the quantized (2-D) tensors, with some room for the mixes llama.cpp
# picks (K-quants keep some tensors at higher precision); 1-D tensors stay F32
BPW = {
    "F32": 32,
    "F16": 16,
    "BF16": 16,
    "Q8_0": 8.5,
    "Q6_K": 6.6,
    "Q5_1": 6.0,
    "Q5_0": 5.5,
    "Q5_K_M": 5.7,
    "Q5_K_S": 5.5,
    "Q4_1": 5.0,
    "Q4_0": 4.5,
    "Q4_K_M": 4.9,
    "Q4_K_S": 4.6,
    "Q3_K_L": 4.3,
    "Q3_K_M": 3.9,
    "Q3_K_S": 3.5,
    "Q2_K": 3.4,
    "Q2_K_S": 3.0,
    "IQ4_XS": 4.25,
    "IQ4_NL": 4.5,
    "IQ3_M": 3.7,
    "IQ3_S": 3.44,
    "IQ3_XS": 3.3,
    "IQ3_XXS": 3.06,
    "IQ2_M": 2.7,
    "IQ2_S": 2.5,
    "IQ2_XS": 2.31,
    "IQ2_XXS": 2.06,
    "IQ1_M": 1.75,
    "IQ1_S": 1.56,
    "TQ1_0": 1.69,
    "TQ2_0": 2.06,
    "MXFP4_MOE": 4.25,
}
MARGIN = 1.15  # on the estimate: the mix can put more tensors at higher precision than the table says
FREE_ENV = "EDGEKIT_FREE_BYTES"  # tests only: pretend the disk has this many bytes free
FreeBytes = Callable[[Path], int]


@dataclass
class Source:
    spec: str
    path: Path
    info: GGUFInfo
    sha256: str
    base_model: str  # the family the outputs belong to (catalogue id, or the file's stem)
    quant: str | None  # "Q4_1", "F16", ... (general.file_type, else from tensor types)
    model_id: str | None = None  # catalogue or variant id
    dequantized_from: str | None = None  # lineage carried from an F16 reference's card
    notes: list[str] = field(default_factory=list)

    @property
    def is_float(self) -> bool:
        if self.quant is not None:
            return self.quant in FLOAT_TYPES
        return set(self.info.extra.get("tensor_types", {})) <= _FLOAT_TENSOR_IDS

    def source_info(self) -> SourceInfo:
        return SourceInfo(
            path=str(self.path),
            sha256=self.sha256,
            quant=self.quant,
            model_id=self.model_id,
            dequantized_from=self.dequantized_from,
        )


def _quant_of(info: GGUFInfo) -> str | None:
    q = info.quant
    if q is not None and not q.startswith("ftype"):
        return q
    types = set(info.extra.get("tensor_types", {}))
    if types and types <= _FLOAT_TENSOR_IDS:
        return "F16" if 1 in types else ("BF16" if 30 in types else "F32")
    return q  # None: unknown; quantized tensors present and no file type recorded


_QUANT_SUFFIX = re.compile(
    r"[-._](" + "|".join(sorted(map(re.escape, FILE_TYPES.values()), key=len, reverse=True)) + r")$", re.IGNORECASE
)


def base_name_for(path: Path) -> str:
    """A family name from a file name: ``SmolLM2-135M-Instruct.Q4_1.gguf`` -> ``smollm2-135m-instruct``."""
    stem = _QUANT_SUFFIX.sub("", path.stem)
    return re.sub(r"[^a-z0-9.]+", "-", stem.lower()).strip("-") or "model"


def resolve_source(spec: str) -> Source:
    """A catalogue id (pulled if missing), a variant id, or a GGUF file; refuses anything that is not a
    whole GGUF model with one line (GGUFError / ModelNotFound)."""
    if spec in CATALOG:
        r = resolve(spec)
        info = check_gguf(r.path)
        return Source(spec, r.path, info, CATALOG[spec].sha256, spec, _quant_of(info) or CATALOG[spec].quant, spec)
    card = find_variant(spec)
    if card is None and (Path(spec).expanduser().is_file()):
        card = _card_for_file(Path(spec).expanduser())
    if card is not None:
        if card.format != "gguf":
            raise UsageError(
                f"{card.variant_id} is a {card.format} variant; GGUF types need a GGUF source",
                fix="quantize from the GGUF model it was made from",
            )
        r = resolve(card.variant_id)
        info = check_gguf(r.path)
        return Source(
            spec,
            r.path,
            info,
            card.sha256,
            card.base_model,
            card.type,
            card.variant_id,
            card.source.dequantized_from,
            [n for n in card.notes if "dequantized" in n],
        )
    p = Path(spec).expanduser()
    if not spec.startswith("hf:") and not p.exists():
        if p.suffix == ".gguf" or os.sep in spec:
            raise ModelNotFound(f"model file {p} does not exist", fix="check the path")
        resolve(spec)  # an unknown id: the catalogue's "did you mean" error
    info = check_gguf(p if not spec.startswith("hf:") else resolve(spec).path)
    entry = catalog_entry_for_path(info.path)
    if entry is not None:
        return resolve_source(entry.id)
    return Source(spec, info.path.resolve(), info, sha256_file(info.path), base_name_for(info.path), _quant_of(info))


def _card_for_file(p: Path) -> VariantCard | None:
    from edgekit.models import list_variants

    rp = p.resolve()
    for c in list_variants():
        if Path(c.path).resolve() == rp:
            return c
    return None


# -- writing one output -----------------------------------------------------------------------
def estimate_bytes(info: GGUFInfo, type_name: str) -> int:
    """Expected size of ``info``'s model in ``type_name``: parameters x bits per weight (1-D tensors
    at F32), plus the header, with a margin."""
    mat = int(info.extra.get("matrix_elements", 0))
    other = int(info.extra.get("n_elements", 0)) - mat
    bpw = BPW.get(type_name, 16.0)
    return int((mat * bpw / 8 + other * 4) * MARGIN + int(info.extra.get("header_bytes", 0)))


def free_bytes(path: Path) -> int:
    """Free bytes on the disk holding ``path`` (``$EDGEKIT_FREE_BYTES`` overrides it, for tests)."""
    env = os.environ.get(FREE_ENV)
    if env:
        return int(env)
    p = path
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def check_disk(folder: Path, need: int, what: str, free: FreeBytes | None = None) -> None:
    have = (free or free_bytes)(folder)
    if have < need:
        raise EdgekitError(
            f"not enough disk space in {folder} for {what}: about {need / 1e6:,.0f} MB needed, "
            f"{have / 1e6:,.0f} MB free; nothing was written",
            fix="free some space, or set EDGEKIT_HOME to a folder on a bigger disk",
        )


def sweep_partials(folder: Path) -> None:
    """Remove temporaries left by runs that were killed (their process is gone)."""
    import psutil

    if not folder.is_dir():
        return
    for p in folder.glob(".*.partial"):
        m = re.search(r"\.(\d+)\.partial$", p.name)
        if m and not psutil.pid_exists(int(m.group(1))):
            with contextlib.suppress(OSError):
                p.unlink()


@contextlib.contextmanager
def partial_for(dest: Path) -> Iterator[Path]:
    """A temporary name beside ``dest``; removed on any exit (a completed one was renamed already)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    try:
        yield tmp
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
