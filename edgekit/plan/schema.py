"""Plan file: what `edgekit plan` writes and `edgekit run/serve` read (versioned JSON).

Units: seconds, joules, GB = 10^9 bytes. ``chosen.budget`` is the generation's max_tokens.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgekit.errors import SchemaError
from edgekit.evaluate.table import Aggregation
from edgekit.figures import Figure

PLAN_SCHEMA_VERSION = 1

ExtractorKind = Literal["number", "choice", "yesno", "code"]


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Caps(_M):
    energy_j: Optional[float] = None
    memory_gb: Optional[float] = None


class ProfileRef(_M):
    path: Optional[str] = None
    device: str
    kind: Literal["measured", "published"]
    source: Optional[str] = None  # citation for published profiles


class ChosenConfig(_M):
    model_id: str
    model_sha256: Optional[str] = None
    quant: Optional[str] = None
    task: str
    prompt_template: str
    temperature: float
    top_p: float = 1.0
    budget: int  # max_tokens per sample
    n: int  # parallel samples
    aggregation: Aggregation
    extractor: Optional[ExtractorKind] = None
    backend: str = "llama.cpp"
    table_path: Optional[str] = None


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
    accuracy_source: str
    method: str  # how latency was predicted: "fitted from measured profile ...", "published (...)", ...


class FrontierPoint(_M):
    model_id: str
    quant: Optional[str] = None
    prompt_template: str
    temperature: float
    budget: int
    n: int
    aggregation: Aggregation
    accuracy: float
    latency_s: float  # at the plan's percentile
    latency_p50_s: float
    energy_j: Optional[float] = None
    memory_gb: Optional[float] = None
    meets_target: bool
    chosen: bool = False
    method: str


class PlanFile(_M):
    schema_version: int = PLAN_SCHEMA_VERSION
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    edgekit_version: Optional[str] = None
    target_s: float
    percentile: Literal[50, 95]
    caps: Caps = Field(default_factory=Caps)
    profile: ProfileRef
    tables: list[str] = Field(default_factory=list)
    chosen: ChosenConfig
    predicted: Predicted
    frontier: list[FrontierPoint] = Field(default_factory=list)
    based_on: list[str] = Field(default_factory=list)  # "published data ...", assumptions, cross-model estimates

    def save(self, path: str | Path) -> Path:
        """Write atomically (temp file, then rename). Nulls are kept (Figure.value may be null)."""
        p = Path(path)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(p.name + ".tmp")
            tmp.write_text(self.model_dump_json(indent=2))
            tmp.replace(p)
        except OSError as e:
            raise SchemaError(f"cannot write plan {p}: {e.strerror or e}", fix="choose a writable --output path") from e
        return p


def load_plan(path: str | Path) -> PlanFile:
    p = Path(path)
    if not p.exists():
        raise SchemaError(f"plan file {p} does not exist", fix="make one with `edgekit plan`")
    try:
        raw = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SchemaError(f"plan {p} is not valid JSON ({e})", fix="re-create it with `edgekit plan`") from e
    if isinstance(raw, dict) and raw.get("schema_version") not in (None, PLAN_SCHEMA_VERSION):
        raise SchemaError(
            f"plan {p} has schema_version {raw.get('schema_version')}, this edgekit reads {PLAN_SCHEMA_VERSION}",
            fix="re-create the plan with this edgekit version",
        )
    try:
        return PlanFile.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first.get("loc", ())) or "(root)"
        raise SchemaError(f"plan {p} is malformed: field {loc}: {first['msg']}",
                          fix="re-create it with `edgekit plan` or correct that field") from e
