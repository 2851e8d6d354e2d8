"""SamplingOptions: the single source of sampling defaults and validation.

The CLI flags, ``Runtime.generate``, the plan file and the daemon's HTTP body all build one of
these, so a default or a bound is written exactly once. Decisions recorded here:

- **n = 1 is greedy everywhere.** ``temperature`` left unset means 0 (greedy) for one sample and
  0.8 for several (self-consistency needs diversity); an explicit temperature always wins.
- NaN and infinity are refused for every float.
- Bad values raise :class:`~edgekit.errors.UsageError` naming the field (and the CLI flag) and
  the fix, via :meth:`SamplingOptions.build`.
"""

from __future__ import annotations

import math
import re
import threading
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgekit.errors import UsageError
from edgekit.schemas.stopping import FORMS as STOP_FORMS
from edgekit.schemas.stopping import StopRule, parse_stop_rule

MAX_N_CAP = 64  # most parallel samples one request may ask for, any engine
MAX_TOKENS_CAP = 32768
SEED_MAX = 2**63 - 1
GREEDY_N1 = 0.0
DEFAULT_TEMPERATURE_N_GT_1 = 0.8
EXTRACTORS = ("number", "choice", "yesno", "code", "text", "json")
Aggregate = Literal["majority", "first_verified", "none"]

# field -> (CLI flag, what a valid value looks like) for one-line errors
_FLAGS: dict[str, tuple[str, str]] = {
    "max_tokens": ("--max-tokens", f"an integer in 1..{MAX_TOKENS_CAP}"),
    "n": ("--n", f"an integer in 1..{MAX_N_CAP}"),
    "temperature": ("--temperature", "a number in 0..10 (0 = greedy)"),
    "top_p": ("--top-p", "a number in (0, 1]"),
    "top_k": ("--top-k", "an integer >= 0 (0 = off)"),
    "min_p": ("--min-p", "a number in [0, 1]"),
    "seed": ("--seed", f"an integer in 0..{SEED_MAX}"),
    "stop": ("--stop", "non-empty strings, at most 16"),
    "aggregate": ("--aggregate", "majority | first_verified | none"),
    "extractor": ("--extractor", " | ".join(EXTRACTORS) + " | regex:<pattern>"),
    "deadline_s": ("--deadline", "seconds > 0"),
    "json_schema": ("--json-schema", "a JSON schema object"),
    "grammar": ("--grammar", "a GBNF grammar with a root rule"),
    "stop_rule": ("--stop-rule", STOP_FORMS),
}
_SCHEMA_AND_GRAMMAR = "json_schema and grammar: pass one, not both"
_STOP_NEEDS_VOTE = "a stopping rule stops a vote: it needs aggregate 'majority'"
_ADAPTIVE_N = "an adaptive stopping rule draws at most n_max samples: n must equal its n_max"
_CONFLICT_FIX = {
    _SCHEMA_AND_GRAMMAR: "pass --json-schema or --grammar, not both",
    _STOP_NEEDS_VOTE: "pass --aggregate majority, or drop --stop-rule",
    _ADAPTIVE_N: "leave --n out (adaptive:<n0>,<n_max> sets it) or pass --n equal to n_max",
}


class SamplingOptions(BaseModel):
    """How to sample and aggregate one query. Every front door builds one of these."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, protected_namespaces=(), validate_assignment=True)

    max_tokens: int = Field(256, ge=1, le=MAX_TOKENS_CAP, description="token budget per sample")
    n: int = Field(1, ge=1, le=MAX_N_CAP, description="parallel samples, decoded in one batch")
    temperature: float | None = Field(None, ge=0, le=10, description="unset: 0 (greedy) for n=1, 0.8 for n>1")
    top_p: float = Field(0.95, gt=0, le=1)
    top_k: int = Field(40, ge=0)
    min_p: float = Field(0.05, ge=0, le=1)
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="per-sample streams are spawned from it")
    stop: list[str] = Field(default_factory=list, max_length=16)
    logprobs: bool = True
    aggregate: Aggregate = "majority"
    extractor: str | None = "number"
    system: str | None = None
    chat: bool = True  # apply the model's chat template
    deadline_s: float | None = Field(None, gt=0, description="cancel unfinished samples after this many seconds")
    json_schema: dict[str, Any] | None = None  # constrain every sample to this JSON schema
    grammar: str | None = None  # or to this GBNF grammar (llama.cpp engines)
    ignore_eos: bool = False  # profiling: decode through end-of-generation tokens
    # stop the vote early (edgekit.schemas.stopping): none | decided | beta:<c> | adaptive:<n0>,<n_max>[,<c>]
    stop_rule: str | None = None
    # confidence scores (edgekit.runtime.confidence; DeepConf's defaults): token confidence over the
    # top conf_top_k tokens (0: off), lowest mean over windows of conf_window tokens, mean of the last conf_tail
    conf_top_k: int = Field(20, ge=0, le=1000)
    conf_window: int = Field(2048, ge=1)
    conf_tail: int = Field(2048, ge=1)
    # P(True) self-check: one extra prefill asking the model whether its answer is correct (timed)
    self_check: bool = False

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: list[str]) -> list[str]:
        if any(not isinstance(s, str) or not s for s in v):
            raise ValueError("stop sequences must be non-empty strings")
        return v

    @field_validator("extractor")
    @classmethod
    def _extractor(cls, v: str | None) -> str | None:
        if v is None or v in EXTRACTORS:
            return v
        if v.startswith("regex:"):
            try:
                re.compile(v[len("regex:") :])
            except re.error as e:
                raise ValueError(f"bad regular expression: {e}") from None
            return v
        raise ValueError(f"unknown extractor {v!r}")

    @field_validator("grammar")
    @classmethod
    def _grammar(cls, v: str | None) -> str | None:
        if v is not None and not re.search(r"^\s*root\s*::=", v, re.M):
            raise ValueError("a GBNF grammar needs a 'root ::= ...' rule")
        return v

    @field_validator("stop_rule")
    @classmethod
    def _stop_rule(cls, v: str | None) -> str | None:
        if v is None:
            return None
        r = parse_stop_rule(v)
        return None if r.kind == "none" else str(r)

    @model_validator(mode="before")
    @classmethod
    def _adaptive_n(cls, data: Any) -> Any:
        """``adaptive:<n0>,<n_max>`` sets n to n_max when n is not given."""
        if isinstance(data, dict) and data.get("n") is None and isinstance(data.get("stop_rule"), str):
            try:
                r = parse_stop_rule(data["stop_rule"])
            except ValueError:
                return data  # the field validator names the problem
            if r.kind == "adaptive":
                data = {**data, "n": r.n_max}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> SamplingOptions:
        if self.json_schema is not None and self.grammar is not None:
            raise ValueError(_SCHEMA_AND_GRAMMAR)
        if self.stop_rule is not None:
            if self.aggregate != "majority":
                raise ValueError(_STOP_NEEDS_VOTE)
            if self.rule.kind == "adaptive" and self.n != self.rule.n_max:
                raise ValueError(_ADAPTIVE_N)
        return self

    # -- derived -----------------------------------------------------------------------------
    @property
    def effective_temperature(self) -> float:
        if self.temperature is not None:
            return self.temperature
        return GREEDY_N1 if self.n == 1 else DEFAULT_TEMPERATURE_N_GT_1

    @property
    def rule(self) -> StopRule:
        """The parsed stopping rule (kind "none" when unset)."""
        return parse_stop_rule(self.stop_rule)

    @property
    def constrained(self) -> bool:
        return self.json_schema is not None or self.grammar is not None

    def replace(self, **changes: Any) -> SamplingOptions:
        """A validated copy with ``changes`` applied (bad values raise UsageError)."""
        data = self.model_dump(exclude_unset=True)
        data.update(changes)
        return SamplingOptions.build(**data)

    @classmethod
    def build(cls, **values: Any) -> SamplingOptions:
        """Validate ``values``; the first problem becomes a one-line UsageError naming the fix."""
        try:
            return cls(**values)
        except ValidationError as e:
            raise options_error(e) from None


def options_error(e: ValidationError, flags: dict[str, str] | None = None) -> UsageError:
    """One line for the first error of a pydantic ValidationError on SamplingOptions."""
    err = e.errors()[0]
    if not err.get("loc"):  # a model-level rule: two options that cannot go together
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        return UsageError(
            f"conflicting options: {msg}", fix=_CONFLICT_FIX.get(msg, "drop one of the conflicting options")
        )
    field = str(err["loc"][0])
    flag, hint = _FLAGS.get(field, (f"--{field.replace('_', '-')}", "a valid value"))
    if flags and field in flags:
        flag = flags[field]
    got = err.get("input")
    ctx = err.get("ctx") or {}
    short = {
        "greater_than_equal": "must be >= {ge}",
        "less_than_equal": "must be <= {le}",
        "greater_than": "must be > {gt}",
        "less_than": "must be < {lt}",
        "finite_number": "must be a finite number",
        "int_parsing": "must be an integer",
        "int_from_float": "must be an integer",
        "float_parsing": "must be a number",
        "bool_parsing": "must be true or false",
        "too_long": "has too many entries (at most {max_length})",
        "literal_error": "must be {expected}",
    }
    kind = err.get("type", "")
    msg = short[kind].format(**ctx) if kind in short else str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        return UsageError(f"unknown option {field!r}", fix="use one of " + ", ".join(SamplingOptions.model_fields))
    shown = repr(got) if not isinstance(got, dict) or len(repr(got)) < 80 else "{...}"
    if isinstance(got, float) and not math.isfinite(got):
        msg = "must be a finite number"
    return UsageError(f"invalid {field} ({flag}): {msg}, got {shown}", fix=f"pass {flag} as {hint}")


class CancelToken:
    """Cancel a running generate from any thread (a robot's action server preempting a query).

    ``token.cancel()`` ends the batch at the next decode step; finished samples are kept and
    unfinished ones end as ``cancelled``.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None

    def cancel(self, reason: str = "cancelled") -> None:
        self.reason = self.reason or reason
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def __call__(self) -> bool:
        return self._event.is_set()
