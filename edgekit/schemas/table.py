"""Accuracy table: what `edgekit eval` writes and `edgekit plan` reads (versioned JSON).

One table = one model (one file, one quantization) x one task x one prompt template x one
sampling temperature. It keeps the raw sample pool (per problem, per sample: extracted
answer, correct?, tokens, finished?) and the accuracy derived from it for every
(budget, k, aggregation) -- see :mod:`edgekit.evaluate.estimators`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from edgekit.errors import SchemaError
from edgekit.jsonio import load_versioned, save_atomic

ACCURACY_SCHEMA_VERSION = 1

Aggregation = Literal["greedy", "majority", "pass@k", "first_verified"]


def within_budget(tokens: int, finished: bool, budget: int) -> bool:
    """THE budget rule, shared by the accuracy tables and the runtime: does a sample that
    generated ``tokens`` tokens and then ``finished`` by itself (end-of-sequence) count at
    max_tokens = ``budget``?

    ``tokens`` never counts the end-of-sequence token, but the EOS is *sampled* and so needs a
    step of the budget: at runtime a sample with max_tokens=B stops after its B-th token as
    "budget" without sampling anything further (OpenAI's max_tokens semantics). So a sample of
    exactly B tokens followed by EOS is *not* within budget B -- it finished only because it
    was drawn with a larger budget. Hence ``finished and tokens < budget``.

    (A stop *string* completed by the B-th token does finish within B at runtime; samples in
    the tables never use stop strings -- ``edgekit eval`` draws with EOS only.)
    """
    return finished and tokens < budget


def budget_steps(tokens: int, finished: bool, budget: int) -> int:
    """Tokens a sample *samples* at max_tokens = ``budget``, its EOS included: ``tokens + 1``
    when it finishes within the budget, else ``budget`` (truncated after its B-th token); an
    unfinished record (truncated at the larger budget it was drawn with) counts
    ``min(tokens, budget)``. In one expression: ``min(tokens + finished, budget)``.

    This is the sequence's count of sampling steps in the batch: one per generated token plus
    the step that samples the EOS (the first from the prompt's logits, each later one after a
    batched decode). The accuracy table's ``expected_steps`` (max over k samples) and
    ``mean_tokens`` (mean per sample) are computed from it, matching the perf model, which
    counts the first generated token as a decode step. (``Result.timings.steps`` reports
    generated tokens, without the EOS step: it is at most 1 lower.)
    """
    return min(tokens + (1 if finished else 0), budget)


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class SampleRecord(_M):
    answer: str | None = None  # extracted answer (None: nothing extracted)
    correct: bool
    tokens: int  # generated tokens
    finished: bool  # stopped by itself (EOS/stop) within max_tokens
    mean_logprob: float | None = None  # mean chosen-token logprob (confidence input for offload planning)
    low_logprob: float | None = None  # 10 % quantile of the sample's token logprobs
    # confidence scores (edgekit.runtime.confidence; None in tables built before them): the answer span's
    # log-probability and least likely token, DeepConf lowest-group and tail confidence
    answer_logprob: float | None = None
    answer_min_logprob: float | None = None
    group_conf: float | None = None
    tail_conf: float | None = None


class ProblemRecord(_M):
    id: str
    target: str  # reference answer (or "tests" for code tasks)
    prompt_tokens: int
    samples: list[SampleRecord] = Field(default_factory=list)
    greedy: SampleRecord | None = None


class AccuracyRow(_M):
    budget: int  # token budget B (max_tokens per sample)
    k: int  # samples drawn (parallel n)
    aggregation: Aggregation
    accuracy: float  # 0..1
    # Sampling steps the batch runs, EOS step included: E[max over the k samples of budget_steps()].
    expected_steps: float
    mean_tokens: float  # E[budget_steps()] per sample: tokens it samples at B, its EOS included
    method: str = "exact"  # "exact" or "resampled:<R>"
    # A stopping rule replayed over the samples (edgekit.evaluate.replay): the vote stops early; then
    # live_steps[r-1] = mean steps run with r rows live (the latency model prices each step by its rows)
    stop_rule: str | None = None
    live_steps: list[float] | None = None
    steps_p95: float | None = None  # 95th percentile over problems of the steps the batch ran
    _replay: Any = PrivateAttr(default=None)  # per-problem arrays (in memory only)


class AccuracyTable(_M):
    schema_version: int = ACCURACY_SCHEMA_VERSION
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    edgekit_version: str | None = None
    task: str
    split: str | None = None  # e.g. "0:40" (which problems)
    model_id: str
    model_sha256: str | None = None
    quant: str | None = None
    backend: str = "llama.cpp"  # or "openai:<base_url>"
    prompt_template: str
    answer_format: str | None = (
        None  # None: free text; "answer" / "reason:<chars>": grammar-constrained (schemas.formats)
    )
    task_sha256: str | None = (
        None  # hash over the evaluated problems' ids, prompts and targets (evaluate.tasks.Task.sha256)
    )
    task_file_sha256: str | None = None  # the task file's hash, any template or split (Task.source_sha256): its version
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
    t = load_versioned(
        path, AccuracyTable, "accuracy table", ACCURACY_SCHEMA_VERSION, "edgekit eval", "build one with `edgekit eval`"
    )
    if not t.rows:
        raise SchemaError(
            f"accuracy table {path} is empty (no rows)", fix="rebuild it with `edgekit eval` on at least one problem"
        )
    return t
