"""A scripted engine for tests (cf. simonw/llm's fake backend): deterministic samples whose answer
and natural length are functions of (prompt, sample seed, temperature). It implements the same
contract as the real engines, including the budget rule: a sample whose natural length L is at
least max_tokens ends as "budget" after max_tokens tokens (its end-of-sequence never sampled).

Also an entry-point target: ``fake = fake_engine:FakeEngine`` in a dist-info's entry_points.txt.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from edgekit.engines import Capabilities, Engine, EngineInfo, Event
from edgekit.engines.base import Cancel, Prompt, TokenPrompt
from edgekit.schemas.options import SamplingOptions
from edgekit.schemas.profile import ModelInfo


def natural(prompt: str, stream: int, temperature: float) -> tuple[int, int]:
    """(answer, natural length in tokens before end-of-sequence) of one sample."""
    h = int(hashlib.sha256(f"{prompt}|{stream}|{temperature}".encode()).hexdigest(), 16)
    answer = 4 if temperature == 0 else [4, 4, 5, 6][h % 4]
    return answer, 5 + h % 40


class FakeEngine(Engine):
    name = "fake"

    def __init__(self, model: str = "fake-0", *, max_n: int = 16, fail_after_calls: int | None = None, **_: object):
        self.calls = 0
        self.fail_after_calls = fail_after_calls
        self.options_seen: list[SamplingOptions] = []
        self.closed = False
        self.info = EngineInfo(name=self.name, model=model, version="test", build="cpu")
        self.capabilities = Capabilities(max_n=max_n, batched_n=True, token_count=True, logprobs=True)
        self.model_info = ModelInfo(id=model)

    def count_tokens(self, prompt: Prompt, options: SamplingOptions) -> int:
        return sum(len(str(m["content"]).split()) for m in prompt)  # type: ignore[union-attr]

    def generate(self, prompt: Prompt, options: SamplingOptions, cancel: Cancel | None = None) -> Iterator[Event]:
        assert not self.closed, "generate after close"
        self.check(options)
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise KeyboardInterrupt("killed")
        self.calls += 1
        self.options_seen.append(options)
        assert not isinstance(prompt, TokenPrompt)
        text = prompt[-1]["content"]
        return self._events(text, options)

    def _events(self, text: str, o: SamplingOptions) -> Iterator[Event]:
        yield Event("prefill", prompt_tokens=len(text.split()))
        t = o.effective_temperature
        for i in range(o.n):
            answer, length = natural(text, (o.seed or 0) * 1000 + i, t)
            body = f"thinking...\nAnswer: {answer}"
            if length >= o.max_tokens:
                yield Event(
                    "finish",
                    seq=i,
                    text=body[: o.max_tokens],
                    reason="budget",
                    tokens=o.max_tokens,
                    logprobs=[-0.5] * o.max_tokens,
                )
            else:
                yield Event("finish", seq=i, text=body, reason="stop", tokens=length, logprobs=[-0.1] * length)

    def close(self) -> None:
        self.closed = True
