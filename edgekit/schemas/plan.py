"""Plan file: what `edgekit plan` writes and `edgekit run/serve` read (versioned JSON).

Units: seconds, joules, GB = 10^9 bytes. ``chosen.budget`` is the generation's max_tokens.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edgekit.figures import Figure
from edgekit.jsonio import load_versioned, save_atomic
from edgekit.schemas.offload import OffloadCalibration
from edgekit.schemas.options import SamplingOptions
from edgekit.schemas.table import Aggregation

PLAN_SCHEMA_VERSION = 2  # 2: chosen.prompt and chosen.options (the plan carries its own prompt and sampling)

ExtractorKind = Literal["number", "choice", "yesno", "code"]


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Caps(_M):
    energy_j: float | None = None
    memory_gb: float | None = None


class ProfileRef(_M):
    path: str | None = None
    device: str
    kind: Literal["measured", "published"]
    source: str | None = None  # citation for published profiles


class ChosenConfig(_M):
    model_id: str
    model_sha256: str | None = None
    quant: str | None = None
    task: str
    prompt_template: str
    answer_format: str | None = None  # grammar-constrained answers (schemas.formats); None: free text
    temperature: float
    top_p: float = 1.0
    budget: int  # max_tokens per sample
    n: int  # parallel samples
    aggregation: Aggregation
    stop_rule: str | None = None  # the vote stops early (edgekit.schemas.stopping); None: every sample runs
    extractor: ExtractorKind | None = None
    backend: str = "llama.cpp"
    table_path: str | None = None
    prompt: str = "{question}"  # the rendered prompt template; {question} is the user's query
    # a quantized variant (edgekit quantize): its id, the sha256 of its card file, and the file to run
    variant_id: str | None = None
    variant_card_sha256: str | None = None
    model_path: str | None = None
    options: SamplingOptions  # exactly how `edgekit run --plan` samples and aggregates


class Predicted(_M):
    latency_s: Figure  # point prediction (p50); note holds the interval
    latency_lo_s: float
    latency_hi_s: float  # used as p95
    latency_at_percentile_s: float  # the figure compared with the target
    interval_how: str
    prefill_s: float
    decode_s: float
    energy_j: Figure
    memory_gb: Figure
    accuracy: float  # from the accuracy table row (eval set)
    accuracy_lo: float | None = None  # 95 % interval (accuracy_interval_how)
    accuracy_hi: float | None = None
    accuracy_interval_how: str | None = None
    accuracy_source: str
    method: str  # how latency was predicted: "fitted from measured profile ...", "published (...)", ...
    # what the choice rests on besides measurements: "latency: cross-model estimate", "accuracy: prior"
    rests_on: list[str] = Field(default_factory=list)
    # with offload planned jointly (local + cloud mixture), on the tables' problems
    system_accuracy: float | None = None
    system_accuracy_lo: float | None = None
    system_accuracy_hi: float | None = None
    offload_rate: float | None = None
    # a stopping rule: the latency over the table's problems, each priced from its replayed steps and rows live
    # (mean_s, p50_s, p95_s, how) -- the spread the mean hides: a problem that does not settle runs to the budget
    replayed_latency: dict | None = None
    expected_latency_s: float | None = None  # local + offload rate x cloud latency
    mixture_p95_s: float | None = None
    # the table accuracy is the largest of many noisy estimates: optimistic (plan.compare.optimism)
    accuracy_selected_from: int | None = None  # feasible configurations it was the best of
    accuracy_optimism: float | None = None  # estimated: bootstrap of the maximum over them
    accuracy_optimism_how: str | None = None
    # a held-out measurement of the chosen configuration (a verify run), shown next to the table figure
    heldout_accuracy: float | None = None
    heldout_accuracy_lo: float | None = None
    heldout_accuracy_hi: float | None = None
    heldout_how: str | None = None
    # the table accuracy against its blind baseline: the same answers scored against other problems' targets
    # (evaluate.chance); None where there is none (a verifier task, an accuracy prior)
    blind_accuracy: float | None = None
    blind_p_value: float | None = None  # permutation test: a shuffle of the answers scores as well
    above_chance: bool | None = None
    blind_how: str | None = None


class Competitor(_M):
    """The chosen configuration against a feasible competitor: accuracy difference chosen - competitor, and saving."""

    config: str  # the competitor, in words
    model_id: str
    prompt_template: str
    budget: int
    n: int
    aggregation: Aggregation
    stop_rule: str | None = None  # the vote stops early (edgekit.schemas.stopping); None: every sample runs
    temperature: float
    accuracy: float  # the competitor's table accuracy
    latency_s: float  # at the plan's percentile
    diff: float  # chosen - competitor (fraction)
    diff_lo: float  # 95 % interval of diff
    diff_hi: float
    paired: bool  # paired over shared problems (else Newcombe's unpaired interval)
    n_shared: int = 0
    verdict: Literal["win", "tie", "loss"]  # of the chosen configuration
    latency_saving_s: float  # competitor's latency minus the chosen's: > 0, the chosen is faster
    saving_material: bool  # the faster one's prediction interval lies wholly below the other's
    how: str
    above_chance: bool | None = None  # the competitor's table accuracy against its blind baseline (evaluate.chance)


class FrontierPoint(_M):
    model_id: str
    quant: str | None = None
    prompt_template: str
    temperature: float
    budget: int
    n: int
    aggregation: Aggregation
    stop_rule: str | None = None  # the vote stops early (edgekit.schemas.stopping); None: every sample runs
    accuracy: float
    accuracy_lo: float | None = None
    accuracy_hi: float | None = None
    accuracy_method: Literal["measured", "estimated"] = "measured"  # estimated: a variant's prior
    latency_s: float  # at the plan's percentile
    latency_p50_s: float
    energy_j: float | None = None
    memory_gb: float | None = None
    meets_target: bool
    chosen: bool = False
    method: str


class CloudRef(_M):
    base_url: str | None = None
    model: str | None = None
    latency_s: float | None = None  # measured p95 of the cloud endpoint (planning and deadline decisions)
    accuracy_table: str | None = None


class PlannerInputs(_M):
    """What `edgekit serve --replan` needs, beyond profile / tables / target / caps, to re-run the planner."""

    prefer: Literal["cheaper", "most-accurate"] = "cheaper"
    sequences_leave: bool = False
    replanned: str | None = None  # set by a live re-plan: when, why and the correction factors used
    perf_scale: list[float] | None = None  # [prefill, decode]: the predictions assume a device this much slower


class PlanFile(_M):
    schema_version: int = PLAN_SCHEMA_VERSION
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    edgekit_version: str | None = None
    target_s: float
    percentile: Literal[50, 95]
    caps: Caps = Field(default_factory=Caps)
    profile: ProfileRef
    tables: list[str] = Field(default_factory=list)
    chosen: ChosenConfig
    predicted: Predicted
    frontier: list[FrontierPoint] = Field(default_factory=list)
    based_on: list[str] = Field(default_factory=list)  # "published data ...", assumptions, cross-model estimates
    cloud: CloudRef | None = None  # where low-confidence queries go
    offload: OffloadCalibration | None = None  # the calibrated threshold (edgekit calibrate)
    planner: PlannerInputs | None = None  # absent in plans written before live re-planning
    selection: str | None = None  # why the chosen configuration is not the most accurate one
    competitors: list[Competitor] = Field(default_factory=list)  # the chosen one against feasible competitors
    # `edgekit deploy`'s held-out check: measured vs predicted accuracy and latency, with intervals and flags
    verify: dict[str, Any] | None = None

    def planned_model(self) -> str:
        """The model this plan runs: a quantized variant runs from its file, a catalogue model by its id."""
        return self.chosen.model_path or self.chosen.model_id

    def options_with(self, explicit: dict[str, Any], model: str | None = None) -> tuple[SamplingOptions, list[str]]:
        """The plan's options with the explicit ones applied over them, and what was overridden (in words)."""
        base = self.chosen.options
        overrides = [f"{k}={v!r} (plan: {getattr(base, k)!r})" for k, v in explicit.items() if getattr(base, k) != v]
        if model is not None and model not in (self.chosen.model_id, self.planned_model()):
            overrides.insert(0, f"model={model} (plan: {self.chosen.model_id})")
        return base.replace(**explicit) if explicit else base, overrides

    def save(self, path: str | Path) -> Path:
        """Write atomically (temp file, then rename). Nulls are kept (Figure.value may be null)."""
        return save_atomic(self, path, "plan")


def load_plan(path: str | Path) -> PlanFile:
    return load_versioned(path, PlanFile, "plan", PLAN_SCHEMA_VERSION, "edgekit plan", "make one with `edgekit plan`")
