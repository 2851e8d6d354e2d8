"""An OpenAI-compatible chat endpoint as an engine (llama.cpp server, vLLM, TGI, SGLang, hosted APIs).

Failing well (a robot waits on it): connect/read timeouts, bounded retries with jittered
exponential backoff (tenacity) on 429 (honouring Retry-After), 5xx and connection errors only, never
past the caller's deadline; a circuit breaker that fails fast after consecutive failures and
probes again after a cool-down; a moving p50/p95 of successful call latencies
(``engine.latency``) that the runtime uses to decide whether the cloud can still answer in time.

The API key comes from an environment variable (``EDGEKIT_CLOUD_API_KEY``, else
``OPENAI_API_KEY``) or the ``api_key`` argument. It is sent only in the Authorization header and
never appears in a repr, a log line, an error message or a Result.

Token counts per sample come from per-choice logprobs when the server returns them, or from
``usage`` when there is one choice; otherwise they are estimated as len(text)/4 and the sample
says so (``tokens_estimated``). A server that ignores ``n`` is asked once per missing sample.
A JSON schema is sent as ``response_format``; whether the server enforced it is checked after
generation (a sample that does not validate carries no answer).
"""

from __future__ import annotations

import email.utils
import os
import random
import time
from collections.abc import Iterator
from typing import Any

import httpx
import tenacity

from edgekit.engines.base import Cancel, Capabilities, Engine, EngineInfo, Event, Prompt, TokenPrompt
from edgekit.engines.resilience import CircuitBreaker, LatencyTracker
from edgekit.errors import BackendError, FetchError, UsageError
from edgekit.schemas.options import MAX_N_CAP, SamplingOptions
from edgekit.schemas.profile import ModelInfo

API_KEY_ENVS = ("EDGEKIT_CLOUD_API_KEY", "OPENAI_API_KEY")


class TransientError(FetchError):
    """429, 5xx or a connection failure: worth a retry (after ``retry_after_s`` when the server said)."""

    def __init__(self, message: str, fix: str | None = None, retry_after_s: float | None = None):
        super().__init__(message, fix)
        self.retry_after_s = retry_after_s


class CircuitOpen(FetchError):
    pass


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _estimate_tokens(text: str) -> int:
    return max(1, round(len(text) / 4)) if text else 0


def _scrub(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


class OpenAIEngine(Engine):
    name = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        api_key_env: str | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 600.0,
        transport: httpx.BaseTransport | None = None,
        max_retries: int = 2,
        failures_to_open: int = 3,
        cooldown_s: float = 30.0,
        latency_prior_s: float | None = None,
        max_n: int | None = None,
        progress: Any = None,
        threads: int | None = None,
        n_ctx: int | None = None,
    ):
        # max_n, progress, threads, n_ctx: local-engine options, accepted so front doors can pass them uniformly
        if not base_url:
            raise UsageError("the openai engine needs a base URL", fix="pass --base-url http://host:port/v1")
        if not str(base_url).startswith(("http://", "https://")):
            raise UsageError(f"base URL {base_url!r} is not http(s)", fix="pass --base-url http://host:port/v1")
        self.base_url = str(base_url).rstrip("/")
        root = self.base_url if self.base_url.endswith("/v1") else self.base_url + "/v1"
        self.url = root + "/chat/completions"
        self.model = model
        envs = (api_key_env,) if api_key_env else API_KEY_ENVS
        self._key = api_key or next((os.environ[e] for e in envs if os.environ.get(e)), None)
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        self._timeout = httpx.Timeout(read_timeout_s, connect=connect_timeout_s)
        self._client = httpx.Client(timeout=self._timeout, headers=headers, transport=transport)
        self._logprobs = True  # per-choice token counts; dropped if the server rejects it
        self.max_retries = max_retries
        self.breaker = CircuitBreaker(failures_to_open, cooldown_s)
        self.latency = LatencyTracker(prior_s=latency_prior_s)
        self.info = EngineInfo(
            name=self.name, model=model, version="openai-compatible", build="remote", extra={"base_url": self.base_url}
        )
        self.capabilities = Capabilities(max_n=MAX_N_CAP, logprobs=True, json_schema=True)  # the rest: defaults
        self.model_info = ModelInfo(id=model)
        self.load_s = 0.0

    def __repr__(self) -> str:  # never the key
        return f"OpenAIEngine(model={self.model!r}, base_url={self.base_url!r})"

    @property
    def label(self) -> str:
        return f"openai:{self.base_url}"

    def _post(self, body: dict, timeout_s: float | None) -> dict:
        timeout = (
            self._timeout
            if timeout_s is None
            else httpx.Timeout(max(0.05, timeout_s), connect=min(5.0, max(0.05, timeout_s)))
        )
        try:
            r = self._client.post(self.url, json=body, timeout=timeout)
        except httpx.ConnectError as e:
            raise TransientError(
                f"cannot connect to {self.url}: {_scrub(str(e), self._key)}", fix="start the server or check --base-url"
            ) from None
        except httpx.TimeoutException:
            raise FetchError(
                f"{self.url} did not answer in time", fix="raise the timeout or lower --max-tokens"
            ) from None
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as e:  # dropped / half-closed connection
            raise TransientError(
                f"connection to {self.url} broke: {_scrub(str(e), self._key) or type(e).__name__}",
                fix="check the server and the network",
            ) from None
        except httpx.HTTPError as e:
            raise FetchError(
                f"request to {self.url} failed: {_scrub(str(e), self._key)}", fix="check --base-url and the server log"
            ) from None
        if r.status_code == 429 or r.status_code >= 500 and "response_format" not in r.text:
            raise TransientError(
                f"{self.url} answered HTTP {r.status_code}: {_scrub(' '.join(r.text.split())[:120], self._key)}",
                fix="retry later; the server is overloaded or failing",
                retry_after_s=_retry_after(r.headers.get("retry-after")),
            )
        if r.status_code in (400, 422) and body.get("logprobs"):  # server rejects logprobs: ask without
            self._logprobs = False
            return self._post({k: v for k, v in body.items() if k != "logprobs"}, timeout_s)
        rf = body.get("response_format") or {}
        if r.status_code >= 400 and rf.get("type") == "json_schema" and "response_format" in r.text:
            # a server without OpenAI's json_schema type (llama-cpp-python's): its json_object + schema
            alt = dict(body, response_format={"type": "json_object", "schema": rf["json_schema"]["schema"]})
            return self._post(alt, timeout_s)
        if r.status_code >= 400:
            detail = _scrub(" ".join(r.text.split())[:200], self._key)
            fix = (
                "check the API key (EDGEKIT_CLOUD_API_KEY)"
                if r.status_code in (401, 403)
                else "check --model and the server log"
            )
            raise FetchError(f"{self.url} answered HTTP {r.status_code}: {detail}", fix=fix)
        try:
            data = r.json()
            data["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise BackendError(
                f"{self.url} returned no completion choices", fix="point --base-url at an OpenAI-compatible server"
            ) from None
        return data

    @staticmethod
    def _events(data: dict, first_seq: int) -> list[Event]:
        choices = data["choices"]
        usage = data.get("usage") or {}
        out = []
        for j, ch in enumerate(choices):
            text = (ch.get("message") or {}).get("content") or ""
            lp = (ch.get("logprobs") or {}).get("content")
            logprobs = None
            if isinstance(lp, list):
                logprobs = [float(x.get("logprob", 0.0)) for x in lp if isinstance(x, dict)]
                tokens, est = len(lp), False
            elif len(choices) == 1 and isinstance(usage.get("completion_tokens"), int):
                tokens, est = usage["completion_tokens"], False
            else:
                tokens, est = _estimate_tokens(text), True
            reason = "budget" if ch.get("finish_reason") == "length" else "stop"
            out.append(
                Event(
                    "finish",
                    seq=first_seq + j,
                    text=text,
                    reason=reason,
                    tokens=tokens,
                    logprobs=logprobs,
                    tokens_estimated=est,
                )
            )
        return out

    def generate(self, prompt: Prompt, options: SamplingOptions, cancel: Cancel | None = None) -> Iterator[Event]:
        self.check(options)
        if isinstance(prompt, TokenPrompt):
            raise UsageError("the openai engine takes chat messages, not token ids", fix="pass messages or a string")
        messages = [dict(m) for m in prompt]
        if options.system:
            messages.insert(0, {"role": "system", "content": options.system})
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": options.max_tokens,
            "n": options.n,
            "temperature": options.effective_temperature,
            "top_p": options.top_p,
        }
        if self._logprobs and options.logprobs:
            body["logprobs"] = True
        if options.seed is not None:
            body["seed"] = options.seed
        if options.stop:
            body["stop"] = options.stop
        if options.json_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "edgekit", "schema": options.json_schema, "strict": True},
            }
        return self._run(body, options, cancel)

    def _call(self, body: dict, left) -> dict:
        """One logical request: breaker check, retries with jittered backoff, latency recorded."""
        if not self.breaker.allow():
            raise CircuitOpen(
                f"{self.url} is failing ({self.breaker.failures} consecutive failures): circuit open",
                fix=f"wait {self.breaker.retry_in_s():.0f} s for the next probe, or check the server",
            )

        def wait(state: tenacity.RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            after = getattr(exc, "retry_after_s", None)
            backoff = random.uniform(0, min(2.0, 0.2 * 2**state.attempt_number))  # full jitter
            w = min(after, 10.0) if after is not None else backoff
            remaining = left()
            return w if remaining is None else max(0.0, min(w, remaining - 0.05))

        def stop(state: tenacity.RetryCallState) -> bool:
            remaining = left()
            return state.attempt_number > self.max_retries or (remaining is not None and remaining <= 0.1)

        t0 = time.perf_counter()
        try:
            for attempt in tenacity.Retrying(
                stop=stop, wait=wait, reraise=True, retry=tenacity.retry_if_exception_type(TransientError)
            ):
                with attempt:
                    remaining = left()
                    if remaining is not None and remaining <= 0:
                        raise FetchError(f"{self.url}: no time left before the deadline", fix="raise the deadline")
                    data = self._post(body, remaining)
        except (FetchError, BackendError):
            self.breaker.record_failure()
            raise
        self.breaker.record_success()
        self.latency.add(time.perf_counter() - t0)
        return data

    def _run(self, body: dict, options: SamplingOptions, cancel: Cancel | None) -> Iterator[Event]:
        t0 = time.perf_counter()

        def left() -> float | None:
            return None if options.deadline_s is None else options.deadline_s - (time.perf_counter() - t0)

        data = self._call(body, left)
        usage = data.get("usage") or {}
        pt = usage.get("prompt_tokens")
        yield Event("prefill", prompt_tokens=pt if isinstance(pt, int) else None)
        events = self._events(data, 0)[: options.n]
        yield from events
        seq = len(events)
        while seq < options.n:  # the server ignored n: one call per missing sample
            if (cancel is not None and cancel()) or (left() is not None and left() <= 0):
                for s in range(seq, options.n):
                    yield Event("finish", seq=s, text="", reason="cancelled", tokens=0)
                return
            one = {k: v for k, v in body.items() if k != "logprobs" or self._logprobs}
            one["n"] = 1
            if options.seed is not None:
                one["seed"] = (options.seed + 7919 * seq) % (2**31)
            ev = self._events(self._call(one, left), seq)[:1]
            yield from ev
            seq += 1

    def close(self) -> None:
        self._client.close()
