"""Accuracy table: what `edgekit eval` writes and `edgekit plan` reads (versioned JSON).

One table = one model (one file, one quantization) x one task x one prompt template x one
sampling temperature. It keeps the raw sample pool (per problem, per sample: extracted
answer, correct?, tokens, finished?) and the accuracy derived from it for every
(budget, k, aggregation) -- see :mod:`edgekit.evaluate.estimators`.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgekit.errors import SchemaError

ACCURACY_SCHEMA_VERSION = 1

Aggregation = Literal["greedy", "majority", "pass@k", "first_verified"]


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class SampleRecord(_M):
    answer: Optional[str] = None  # extracted answer (None: nothing extracted)
    correct: bool
    tokens: int  # generated tokens
    finished: bool  # stopped by itself (EOS/stop) within max_tokens


class ProblemRecord(_M):
    id: str
    target: str  # reference answer (or "tests" for code tasks)
    prompt_tokens: int
    samples: list[SampleRecord] = Field(default_factory=list)
    greedy: Optional[SampleRecord] = None


class AccuracyRow(_M):
    budget: int  # token budget B (max_tokens per sample)
    k: int  # samples drawn (parallel n)
    aggregation: Aggregation
    accuracy: float  # 0..1
    # Decode steps the batch runs: E[max over the k samples of min(tokens, B)].
    expected_steps: float
    mean_tokens: float  # E[min(tokens, B)] per sample
    method: str = "exact"  # "exact" or "resampled:<R>"


class AccuracyTable(_M):
    schema_version: int = ACCURACY_SCHEMA_VERSION
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    edgekit_version: Optional[str] = None
    task: str
    split: Optional[str] = None  # e.g. "0:40" (which problems)
    model_id: str
    model_sha256: Optional[str] = None
    quant: Optional[str] = None
    backend: str = "llama.cpp"  # or "openai:<base_url>"
    prompt_template: str
    temperature: float
    top_p: float = 1.0
    n_samples: int  # N drawn per problem
    seed: int
    max_tokens: int
    n_problems: int
    prompt_tokens_mean: float
    has_verifier: bool = False
    rows: list[AccuracyRow] = Field(default_factory=list)
    problems: list[ProblemRecord] = Field(default_factory=list)

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(p.name + ".tmp")
            tmp.write_text(self.model_dump_json(indent=1, exclude_none=True))
            tmp.replace(p)
        except OSError as e:
            raise SchemaError(f"cannot write accuracy table {p}: {e.strerror or e}", fix="choose a writable --output path") from e
        return p


def load_table(path: str | Path) -> AccuracyTable:
    p = Path(path)
    if not p.exists():
        raise SchemaError(f"accuracy table {p} does not exist", fix="build one with `edgekit eval`")
    try:
        raw = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SchemaError(f"accuracy table {p} is not valid JSON ({e})", fix="rebuild it with `edgekit eval`") from e
    if isinstance(raw, dict) and raw.get("schema_version") not in (None, ACCURACY_SCHEMA_VERSION):
        raise SchemaError(
            f"accuracy table {p} has schema_version {raw.get('schema_version')}, this edgekit reads {ACCURACY_SCHEMA_VERSION}",
            fix="rebuild it with this edgekit version",
        )
    try:
        t = AccuracyTable.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first.get("loc", ())) or "(root)"
        raise SchemaError(f"accuracy table {p} is malformed: field {loc}: {first['msg']}", fix="rebuild it with `edgekit eval`") from e
    if not t.rows:
        raise SchemaError(f"accuracy table {p} is empty (no rows)", fix="rebuild it with `edgekit eval` on at least one problem")
    return t
