"""OpenAI request bodies, their mapping onto :class:`SamplingOptions`, and OpenAI's error format.

Every value that reaches the model goes through ``SamplingOptions`` (the single source of
defaults and bounds); this module only renames OpenAI's fields and adds the daemon's caps. Any
problem becomes an :class:`ApiError` (4xx) in OpenAI's format ``{"error": {"message", "type",
"param", "code"}}`` naming the field, never a 500.

Extension: an ``edgekit`` object in the body (the SDK's ``extra_body={"edgekit": {...}}``) takes
``deadline_s``, ``aggregate``, ``extractor``, ``top_k``, ``min_p``, ``ignore_eos`` and ``stop_rule``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgekit.errors import ContextOverflow, DeadlineUnmeetable, EdgekitError, UsageError
from edgekit.schemas.options import SamplingOptions, options_error

JSON_OBJECT_SCHEMA: dict = {"type": "object"}  # response_format json_object: any JSON object


class ApiError(Exception):
    """An HTTP error in OpenAI's format."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", protected_namespaces=())


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict]
    name: str | None = None


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", protected_namespaces=())
    name: str | None = None
    schema_: dict | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    include_usage: bool | None = None


class EdgekitExt(_Strict):
    deadline_s: float | None = None
    aggregate: Literal["majority", "none"] | None = None
    # named extractors only: a client-supplied regex would run on every sample (ReDoS)
    extractor: Literal["number", "choice", "yesno", "code", "text", "json"] | None = None
    top_k: int | None = Field(None, ge=0, le=2**31 - 1)
    min_p: float | None = None
    ignore_eos: bool | None = None
    stop_rule: str | None = None  # none | decided | beta:<c> | adaptive:<n0>,<n_max>[,<c>]


class _Common(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", protected_namespaces=())
    model: str
    max_tokens: int | None = None
    n: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict | None = None
    edgekit: EdgekitExt | None = None


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: ResponseFormat | None = None
    tools: Any | None = None
    tool_choice: Any | None = None
    functions: Any | None = None
    function_call: Any | None = None


class CompletionRequest(_Common):
    prompt: str | list[str]
    logprobs: int | None = None
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None


def _param(loc: tuple) -> str | None:
    if not loc:
        return None
    out = str(loc[0])
    if out in ("messages", "edgekit", "response_format") and len(loc) > 1:
        for part in loc[1:3]:
            out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def parse(cls: type[BaseModel], body: Any) -> Any:
    """Validate a decoded JSON body; the first problem becomes a 400 naming the field."""
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}", code="invalid_body")
    try:
        return cls.model_validate(body)
    except ValidationError as e:
        err = e.errors(include_url=False, include_input=False)[0]
        param = _param(tuple(err.get("loc", ())))
        kind = err.get("type", "")
        if kind == "missing":
            msg = f"missing required parameter {param!r}"
        else:
            msg = f"invalid {param}: {err.get('msg', 'invalid value')}"
        raise ApiError(
            400, msg[:300], param=param, code="missing_required_parameter" if kind == "missing" else "invalid_value"
        ) from None


def messages_of(req: ChatRequest) -> list[dict]:
    out = []
    for i, m in enumerate(req.messages):
        if isinstance(m.content, str):
            text = m.content
        else:
            parts = []
            for j, part in enumerate(m.content):
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise ApiError(
                        400,
                        f"only text content parts are supported, got {str(kind)[:40]!r}",
                        param=f"messages[{i}].content[{j}]",
                        code="unsupported_content",
                    )
                parts.append(part["text"])
            text = "".join(parts)
        out.append({"role": "system" if m.role == "developer" else m.role, "content": text})
    if not any(m["role"] == "user" for m in out):
        raise ApiError(400, "messages need at least one user message", param="messages", code="invalid_value")
    return out


def prompt_of(req: CompletionRequest) -> str:
    p = req.prompt
    if isinstance(p, list):
        if len(p) != 1:
            raise ApiError(
                400, f"one prompt per request is supported, got {len(p)}", param="prompt", code="unsupported_value"
            )
        p = p[0]
    if not p.strip():
        raise ApiError(400, "the prompt is empty", param="prompt", code="invalid_value")
    return p


def _refuse_unsupported(req: _Common) -> None:
    for name in ("frequency_penalty", "presence_penalty"):
        v = getattr(req, name)
        if v not in (None, 0, 0.0):
            raise ApiError(
                400,
                f"{name} is not supported (the samplers are top-k/top-p/min-p/temperature)",
                param=name,
                code="unsupported_parameter",
            )
    if req.logit_bias:
        raise ApiError(400, "logit_bias is not supported", param="logit_bias", code="unsupported_parameter")
    if isinstance(req, ChatRequest):
        for name in ("tools", "functions", "function_call"):
            if getattr(req, name) not in (None, [], "none"):
                raise ApiError(
                    400, f"{name} is not supported by edgekit serve", param=name, code="unsupported_parameter"
                )
        if req.tool_choice not in (None, "none", "auto"):
            raise ApiError(
                400, "tool_choice is not supported by edgekit serve", param="tool_choice", code="unsupported_parameter"
            )
        if req.top_logprobs:
            raise ApiError(
                400,
                "top_logprobs is not supported: edgekit returns the chosen token's logprob only "
                "(pass logprobs=true without top_logprobs)",
                param="top_logprobs",
                code="unsupported_parameter",
            )
    else:
        if req.logprobs:
            raise ApiError(
                400,
                "logprobs > 0 (top alternatives) is not supported: pass logprobs=0 for the chosen tokens' logprobs",
                param="logprobs",
                code="unsupported_parameter",
            )
        if req.echo:
            raise ApiError(400, "echo is not supported", param="echo", code="unsupported_parameter")
        if req.suffix:
            raise ApiError(400, "suffix is not supported", param="suffix", code="unsupported_parameter")
        if req.best_of not in (None, 1) and req.best_of != req.n:
            raise ApiError(
                400,
                "best_of is not supported (use n: all samples are returned)",
                param="best_of",
                code="unsupported_parameter",
            )


# SamplingOptions field -> the request parameter to name in an error
_PARAMS = {
    "deadline_s": "edgekit.deadline_s",
    "json_schema": "response_format",
    "aggregate": "edgekit.aggregate",
    "extractor": "edgekit.extractor",
    "top_k": "edgekit.top_k",
    "min_p": "edgekit.min_p",
    "ignore_eos": "edgekit.ignore_eos",
    "stop_rule": "edgekit.stop_rule",
}


def explicit_options(req: _Common, *, max_n: int, max_tokens_cap: int) -> tuple[dict[str, Any], dict[str, str]]:
    """(SamplingOptions fields the request set explicitly, field -> request parameter name)."""
    _refuse_unsupported(req)
    params: dict[str, str] = dict(_PARAMS)
    kw: dict[str, Any] = {}
    mt_name = "max_tokens"
    mt = req.max_tokens
    if isinstance(req, ChatRequest) and req.max_completion_tokens is not None:
        mt, mt_name = req.max_completion_tokens, "max_completion_tokens"
    params["max_tokens"] = mt_name
    if mt is not None:
        if mt > max_tokens_cap:
            raise ApiError(
                400, f"{mt_name}={mt} exceeds this server's cap of {max_tokens_cap}", param=mt_name, code="over_cap"
            )
        kw["max_tokens"] = mt
    if req.n is not None:
        if req.n > max_n:
            raise ApiError(
                400, f"n={req.n} exceeds this server's cap of {max_n} samples per request", param="n", code="over_cap"
            )
        kw["n"] = req.n
    for name in ("temperature", "top_p", "seed"):
        if getattr(req, name) is not None:
            kw[name] = getattr(req, name)
    if req.stop is not None:
        kw["stop"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
    if isinstance(req, ChatRequest) and req.response_format is not None and req.response_format.type != "text":
        rf = req.response_format
        if rf.type == "json_object":
            kw["json_schema"] = dict(JSON_OBJECT_SCHEMA)
        else:
            if rf.json_schema is None or rf.json_schema.schema_ is None:
                raise ApiError(
                    400,
                    "response_format json_schema needs json_schema.schema",
                    param="response_format",
                    code="invalid_value",
                )
            kw["json_schema"] = check_schema(rf.json_schema.schema_)
        kw["extractor"] = "json"
    if req.edgekit is not None:
        kw.update(req.edgekit.model_dump(exclude_none=True))
    return kw, params


def check_schema(schema: dict) -> dict:
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        raise ApiError(
            400, f"invalid JSON schema: {e.message[:200]}", param="response_format", code="invalid_value"
        ) from None
    except (RecursionError, TypeError, ValueError, LookupError) as e:
        raise ApiError(
            400, f"invalid JSON schema: {type(e).__name__}", param="response_format", code="invalid_value"
        ) from None
    return schema


def build_options(base: SamplingOptions, changes: dict[str, Any], params: dict[str, str]) -> SamplingOptions:
    """``base`` with ``changes`` applied, validated by SamplingOptions; errors name the request parameter."""
    data = base.model_dump(exclude_unset=True)
    data.update(changes)
    try:
        return SamplingOptions(**data)
    except ValidationError as e:
        err = e.errors()[0]
        field = str(err["loc"][0]) if err.get("loc") else None
        flags = {k: params.get(k, k) for k in SamplingOptions.model_fields}
        ue = options_error(e, flags=flags)
        raise ApiError(
            400, ue.one_line()[:300], param=params.get(field, field) if field else None, code="invalid_value"
        ) from None
    except (TypeError, ValueError, RecursionError) as e:
        raise ApiError(400, f"invalid options: {type(e).__name__}", code="invalid_value") from None


def runtime_error(e: EdgekitError, chat: bool, opts: SamplingOptions | None) -> ApiError:
    """A UsageError/ContextOverflow from the runtime or engine, as a 400 naming the likely field; any
    other EdgekitError (the backend failed) is the server's problem: 500."""
    msg = e.one_line()
    prompt_param = "messages" if chat else "prompt"
    if isinstance(e, ContextOverflow) or getattr(e, "prompt_too_long", False):
        return ApiError(400, msg, param=prompt_param, code="context_length_exceeded")
    if isinstance(e, DeadlineUnmeetable):  # refused by the scheduler before it ran: load, not a fault
        return ApiError(
            503,
            msg[:400],
            type="server_error",
            code="deadline_unmeetable",
            headers={"Retry-After": str(max(1, math.ceil(e.retry_after_s)))},
        )
    if not isinstance(e, UsageError):
        return ApiError(500, f"the model failed: {msg[:300]}", type="server_error", code=type(e).__name__)
    low = msg.lower()
    param = None
    if "json schema" in low or "grammar" in low:
        param = "response_format"
    elif low.startswith("n=") or "max_n" in low:
        param = "n"
    elif "prompt" in low:
        param = prompt_param
    return ApiError(400, msg[:400], param=param, code="invalid_value")
