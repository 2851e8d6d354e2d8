"""Accuracy table: what `edgekit eval` writes and `edgekit plan` reads (versioned JSON).

One table = one model (one file, one quantization) x one task x one prompt template x one
sampling temperature. It keeps the raw sample pool (per problem, per sample: extracted
answer, correct?, tokens, finished?) and the accuracy derived from it for every
(budget, k, aggregation) -- see :mod:`edgekit.evaluate.estimators`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from edgekit.errors import SchemaError
from edgekit.jsonio import load_versioned, save_atomic

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
    answer_format: Optional[str] = None  # None: free text; "answer" / "reason:<chars>": grammar-constrained (schemas.formats)
    task_sha256: Optional[str] = None  # hash over the evaluated problems' ids, prompts and targets (evaluate.tasks.Task.sha256)
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
        return save_atomic(self, path, "accuracy table", indent=1, exclude_none=True)


def load_table(path: str | Path) -> AccuracyTable:
    t = load_versioned(path, AccuracyTable, "accuracy table", ACCURACY_SCHEMA_VERSION, "edgekit eval",
                       "build one with `edgekit eval`")
    if not t.rows:
        raise SchemaError(f"accuracy table {path} is empty (no rows)", fix="rebuild it with `edgekit eval` on at least one problem")
    return t
