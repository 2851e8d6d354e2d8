"""Sample from an OpenAI-compatible server (llama.cpp server, vLLM, ...) for `edgekit eval`.

``OpenAIChatSampler.generate`` mirrors the part of ``Runtime.generate`` the eval runner uses:
a result with ``.samples`` (``.text``, ``.tokens``, ``.finish_reason`` "stop"|"budget") and
``.timings.prompt_tokens``. Per-sample token counts come from per-choice logprobs when the
server returns them, or from ``usage`` when there is one choice; otherwise they are estimated
as len(text)/4 and the table's backend field says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from edgekit.errors import BackendError, FetchError


@dataclass
class Sample:
    text: str
    tokens: int
    finish_reason: str  # "stop" | "budget"
    tokens_estimated: bool = False


@dataclass
class Timings:
    prompt_tokens: int = 0


@dataclass
class Result:
    samples: list[Sample] = field(default_factory=list)
    timings: Timings = field(default_factory=Timings)


def _estimate_tokens(text: str) -> int:
    return max(1, round(len(text) / 4)) if text else 0


class OpenAIChatSampler:
    def __init__(self, base_url: str, model: str, api_key: Optional[str] = None, timeout_s: float = 600.0, transport=None):
        import httpx

        self.base_url = base_url.rstrip("/")
        root = self.base_url if self.base_url.endswith("/v1") else self.base_url + "/v1"
        self.url = root + "/chat/completions"
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=timeout_s, headers=headers, transport=transport)
        self._logprobs = True  # per-choice token counts; dropped if the server rejects it
        self.tokens_estimated = False  # sticky: any sample so far had an estimated count
        self.backend = f"openai:{self.base_url}"

    @property
    def backend_label(self) -> str:
        return self.backend + (" (tokens estimated)" if self.tokens_estimated else "")

    def _post(self, body: dict) -> dict:
        import httpx

        try:
            r = self._client.post(self.url, json=body)
        except httpx.ConnectError as e:
            raise FetchError(f"cannot connect to {self.url}: {e}", fix="start the server or check --base-url") from e
        except httpx.TimeoutException as e:
            raise FetchError(f"{self.url} did not answer in time", fix="raise the timeout or use a smaller --max-tokens") from e
        except httpx.HTTPError as e:
            raise FetchError(f"request to {self.url} failed: {e}", fix="check --base-url and the server log") from e
        if r.status_code in (400, 422) and body.get("logprobs"):  # server rejects logprobs: ask without
            self._logprobs = False
            return self._post({k: v for k, v in body.items() if k != "logprobs"})
        if r.status_code >= 400:
            detail = " ".join(r.text.split())[:200]
            fix = "check --api-key" if r.status_code in (401, 403) else "check --model and the server log"
            raise FetchError(f"{self.url} answered HTTP {r.status_code}: {detail}", fix=fix)
        try:
            data = r.json()
            data["choices"][0]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise BackendError(f"{self.url} returned no completion choices", fix="point --base-url at an OpenAI-compatible server") from e
        return data

    def _samples(self, data: dict) -> list[Sample]:
        choices = data["choices"]
        usage = data.get("usage") or {}
        out = []
        for ch in choices:
            text = (ch.get("message") or {}).get("content") or ""
            lp = (ch.get("logprobs") or {}).get("content")
            if isinstance(lp, list):
                tokens, est = len(lp), False
            elif len(choices) == 1 and isinstance(usage.get("completion_tokens"), int):
                tokens, est = usage["completion_tokens"], False
            else:
                tokens, est = _estimate_tokens(text), True
            reason = "budget" if ch.get("finish_reason") == "length" else "stop"
            out.append(Sample(text, tokens, reason, est))
        return out

    def generate(self, messages, max_tokens: int = 256, n: int = 1, temperature: float = 0.8,
                 top_p: float = 0.95, seed: Optional[int] = None, stop=None) -> Result:
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "n": n,
                "temperature": temperature, "top_p": top_p}
        if self._logprobs:
            body["logprobs"] = True
        if seed is not None:
            body["seed"] = seed
        if stop:
            body["stop"] = stop
        data = self._post(body)
        samples = self._samples(data)[:n]
        prompt_tokens = (data.get("usage") or {}).get("prompt_tokens")
        i = len(samples)
        while len(samples) < n:  # the server ignored n: one call per missing sample
            one = {k: v for k, v in body.items() if k != "logprobs" or self._logprobs}
            one["n"] = 1
            if seed is not None:
                one["seed"] = seed + i
            samples += self._samples(self._post(one))[:1]
            i += 1
        if any(s.tokens_estimated for s in samples):
            self.tokens_estimated = True
        if not isinstance(prompt_tokens, int):
            prompt_tokens = _estimate_tokens(" ".join(str(m.get("content", "")) for m in messages))
        return Result(samples, Timings(prompt_tokens))

    def close(self) -> None:
        self._client.close()
