"""The checksum of a model that is a folder (an ONNX export): sha256 over its graph and weight files.

Lives on the models floor so that the cache's integrity checks (variant cards) and the onnx
engine hash a folder the same way.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from edgekit.models.integrity import sha256_file

# external weight files beside a graph over 2 GB: optimum writes model.onnx_data, onnxruntime's
# quantizer model.onnx.data
EXTERNAL_DATA = (".onnx_data", ".onnx.data")


def onnx_files(folder: Path) -> list[Path]:
    """The graph and weight files of an exported folder (what its card's sha256 covers)."""
    return sorted(
        p for p in Path(folder).iterdir() if p.is_file() and (p.suffix == ".onnx" or p.name.endswith(EXTERNAL_DATA))
    )


def folder_sha256(folder: Path) -> str:
    """sha256 over the sorted ``<name> <sha256>`` lines of the folder's onnx files."""
    lines = "".join(f"{p.name} {sha256_file(p)}\n" for p in onnx_files(folder))
    return hashlib.sha256(lines.encode()).hexdigest()
