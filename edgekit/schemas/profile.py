"""Device profile: a versioned JSON document (pydantic). The planner's only view of a device.

A profile holds, per model, figures that each say how they were obtained (see
:mod:`edgekit.figures`). ``kind`` is ``measured`` for profiles made by ``edgekit profile``
and ``published`` for reference profiles built from papers (see :mod:`edgekit.profile.reference`).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edgekit.errors import SchemaError
from edgekit.figures import Figure
from edgekit.jsonio import load_versioned, save_atomic

PROFILE_SCHEMA_VERSION = 1


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class GPUInfo(_M):
    index: int
    name: str
    memory_total_mb: float | None = None
    power_limit_mw: float | None = None
    driver: str | None = None


class DeviceFacts(_M):
    """What a device is: shared by the profile's record (:class:`DeviceInfo`) and the detected report
    (``edgekit.device.detect.DeviceReport``, which adds sensors, notes and CPU support)."""

    name: str  # human name: "2-core Xeon 2.5 GHz (CI machine kind)", "Jetson AGX Orin 64GB"
    hostname: str | None = None
    cpu_model: str | None = None
    cpu_cores_physical: int | None = None
    cpu_cores_logical: int | None = None
    cpu_freq_mhz: float | None = None
    ram_total_mb: float | None = None
    gpus: list[GPUInfo] = Field(default_factory=list)
    jetson_model: str | None = None
    jetson_release: str | None = None
    nvpmodel_mode: str | None = None
    llama_build: str | None = None  # "cpu", "cuda", "metal", ...
    llama_cpp_python: str | None = None
    gpu_offload: bool | None = None


class DeviceInfo(DeviceFacts):
    cpu_isa: list[str] | None = None  # instruction sets llama.cpp cares about (AVX2, AVX512, AMX_TILE, ...)


class ModelInfo(_M):
    id: str  # catalogue id, "hf:..." or a file name
    sha256: str | None = None
    arch: str | None = None  # GGUF general.architecture
    quant: str | None = None  # "Q4_K_M", "FP16", ...
    n_params: float | None = None
    size_bytes: int | None = None  # weights on disk / streamed per decode step
    n_layer: int | None = None
    n_embd: int | None = None
    n_head_kv: int | None = None
    n_embd_head: int | None = None  # head dim (for KV bytes per token)
    kv_bytes_per_token: float | None = None
    n_ctx_train: int | None = None


class PrefillPoint(_M):
    prompt_tokens: int
    prefill_s: Figure  # time to process the prompt = time to first token (no sampling)
    ttft_s: Figure | None = None  # prefill + first sampled token, when measured separately
    prefill_tok_s: Figure


class DecodePoint(_M):
    context_tokens: int  # KV depth when the measured decode steps start
    n: int  # parallel sequences decoded in one batch
    steps: int  # decode steps timed per repetition
    step_s: Figure  # wall time of one batched decode step (all n sequences)
    decode_tok_s: Figure  # aggregate tokens/s = n / step_s


class EnergyInfo(_M):
    meter: str  # "nvml:0", "rapl", "jetson-ina3221", "null", "published"
    idle_power_mw: Figure
    prefill_power_mw: Figure | None = None  # above idle
    decode_power_mw: Figure | None = None  # above idle
    prefill_energy_per_token_mj: Figure
    decode_energy_per_token_mj: Figure  # per generated token, n = 1
    note: str | None = None


class DriftReport(_M):
    decode_drift_pct: float | None = None  # first vs last repetition of the reference decode
    cpu_freq_start_mhz: float | None = None
    cpu_freq_min_mhz: float | None = None
    max_temp_c: float | None = None
    throttle_reasons: list[str] = Field(default_factory=list)
    flagged: bool = False
    reasons: list[str] = Field(default_factory=list)


class SliceEstimate(_M):
    """How an estimated entry was made (``edgekit profile --slices``): its points were timed on a
    1-block and a k-block slice of the file and extrapolated to the whole depth,
    ``t = t_1 + (n_layer - 1) * (t_k - t_1) / (k - 1)``."""

    method: Literal["block-slices"] = "block-slices"
    n_layer: int
    blocks_one: list[int]
    blocks_k: list[int]
    slice_bytes: list[int]  # file sizes of the two slices
    rel_unc_prefill: float  # extrapolation uncertainty added to the fit's own interval (relative)
    rel_unc_decode: float
    how: str  # where those widths come from
    seconds: float | None = None  # wall time of the whole estimate (slicing + two sweeps)


class BackgroundLoad(_M):
    """What shared the CPU during a sweep made with ``edgekit profile --background``."""

    workers: int | None = None  # busy-loop processes started by edgekit
    command: str | None = None  # or the user's own command
    others_cores: Figure | None = None  # CPU cores the others used during the sweep (/proc/stat)
    slowdown: Figure | None = None  # reference decode step, loaded / idle (measured in this sweep)


class ModelProfile(_M):
    model: ModelInfo
    threads: int | None = None
    kernels: str | None = None  # llama.cpp kernel configuration the probe chose (default / plain)
    threading: str | None = None  # thread policy in force: "auto: 2 of 2 usable (adaptive)", ...
    # reference decode step (n=1) at each thread count, measured: what --cores-available scales by
    thread_scaling: dict[int, Figure] | None = None
    background: BackgroundLoad | None = None  # set on a profile measured beside other load
    gpu_layers: int | None = None  # llama.cpp layers offloaded to the GPU (-1: all); absent: the default, 0
    n_ctx: int | None = None
    load_s: Figure | None = None
    prefill: list[PrefillPoint] = Field(default_factory=list)
    decode: list[DecodePoint] = Field(default_factory=list)
    peak_rss_mb: Figure | None = None
    peak_vram_mb: Figure | None = None
    energy: EnergyInfo | None = None
    drift: DriftReport | None = None
    # Closed-form models from a publication (reference profiles): free-form, documented there.
    published_model: dict | None = None
    # "unified": all n sequences share one KV buffer and each attends over every used cell
    # (edgekit's llama.cpp runtime); None/"per-sequence": each attends over its own cells only.
    kv_layout: str | None = None
    gaps: list[str] = Field(default_factory=list)  # labelled gaps: what could not be measured and why
    # True: the sweep stopped early (interrupted or failed); ``gaps`` names the missing points and
    # repetitions. Absent (None) means complete, so complete entries serialise as before.
    # A partial entry is kept beside the complete entry of the same model, never in its place.
    partial: bool | None = None
    # Set on an entry estimated from block slices (not a measurement of the whole model); absent on
    # measured entries. An estimate never replaces a measured entry; a measured sweep replaces it.
    estimate: SliceEstimate | None = None

    @property
    def is_partial(self) -> bool:
        return bool(self.partial)


class DeviceProfile(_M):
    schema_version: int = PROFILE_SCHEMA_VERSION
    kind: Literal["measured", "published"] = "measured"
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    edgekit_version: str | None = None
    device: DeviceInfo
    models: list[ModelProfile] = Field(default_factory=list)
    source: str | None = None  # citation for published profiles
    notes: list[str] = Field(default_factory=list)

    def measured_models(self) -> list[ModelProfile]:
        """Complete entries measured on the whole model (not estimated from slices)."""
        return [m for m in self.models if not m.is_partial and m.estimate is None]

    def complete_models(self) -> list[ModelProfile]:
        """The entries from sweeps that ran to the end (the ones a planner may use): measured entries and
        entries estimated from block slices (``estimate`` set; their fits say so)."""
        return [m for m in self.models if not m.is_partial]

    def partial_models(self) -> list[ModelProfile]:
        """Entries from sweeps that stopped early (``gaps`` names what is missing)."""
        return [m for m in self.models if m.is_partial]

    def model(self, model_id: str, allow_partial: bool = False) -> ModelProfile:
        """The complete entry of ``model_id`` (the latest if several). A partial entry is returned
        only with ``allow_partial`` and only when no complete one exists; otherwise a model that
        has only a partial entry is an error naming its gaps."""
        found = [m for m in self.models if m.model.id == model_id]
        complete = [m for m in found if not m.is_partial]
        if complete:
            return complete[-1]
        if found and allow_partial:
            return found[-1]
        if found:
            gaps = "; ".join(found[-1].gaps[:3]) + (" ..." if len(found[-1].gaps) > 3 else "")
            raise SchemaError(
                f"profile has only a partial entry for model {model_id!r} (the sweep stopped early: {gaps})",
                fix=f"complete it with `edgekit profile --model {model_id} --append --output <this profile>`",
            )
        raise SchemaError(
            f"profile has no model {model_id!r} (has: {', '.join(m.model.id for m in self.models) or 'none'})",
            fix=f"run `edgekit profile --model {model_id}` on this device",
        )

    def save(self, path: str | Path) -> Path:
        """Write atomically (temp file, then rename)."""
        return save_atomic(self, path, "profile", exclude_none=True)


def load_profile(path: str | Path) -> DeviceProfile:
    """Load a profile; complete entries come first (stable), so a reader that takes the first entry
    of a model gets the complete one. Partial entries stay in ``models``: check ``is_partial``."""
    prof = load_versioned(
        path,
        DeviceProfile,
        "profile",
        PROFILE_SCHEMA_VERSION,
        "edgekit profile",
        "pass a path from `ls profiles/` or run `edgekit profile`",
    )
    prof.models.sort(key=lambda m: m.is_partial)
    return prof
