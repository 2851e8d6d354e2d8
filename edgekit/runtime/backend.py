"""The backend contract: what an inference engine must provide to edgekit.

One streaming method does the work (cf. simonw/llm): :meth:`Backend.stream` takes a
:class:`GenerationRequest` (prompt tokens, n parallel samples, budget, sampling settings) and
yields :class:`Event` s as the batch decodes. Everything else -- templating, aggregation,
confidence, timings, offload -- lives above it, so a second backend (ONNX Runtime) only has to
implement this file's abstract methods.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional


@dataclass
class GenerationRequest:
    prompt_tokens: list[int]
    n: int = 1
    max_tokens: int = 256
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    seed: Optional[int] = None
    stop: list[str] = field(default_factory=list)
    logprobs: bool = True
    ignore_eos: bool = False  # profiling: keep decoding through end-of-generation tokens
    # Polled once per decode step; returning True ends the batch (remaining: "cancelled").
    cancel: Optional[Callable[[], bool]] = None


@dataclass
class Event:
    """kind: "prefill" (prompt evaluated; first tokens next), "token", "finish"."""

    kind: str
    seq: int = -1
    token: int = -1
    text: str = ""  # token: the new text piece; finish: the sample's whole final text
    logprob: Optional[float] = None
    reason: Optional[str] = None  # finish: "stop" | "budget" | "cancelled"
    tokens: int = 0  # finish: generated tokens


@dataclass
class BackendInfo:
    name: str  # "llama.cpp"
    version: str
    n_ctx: int
    max_n: int  # most parallel sequences one request may ask for
    threads: int
    build: str = "cpu"  # cpu / cuda / metal / vulkan
    gpu_layers: int = 0
    extra: dict = field(default_factory=dict)


class Backend(ABC):
    info: BackendInfo
    load_s: float = 0.0

    @abstractmethod
    def tokenize(self, text: str, add_special: bool = True) -> list[int]: ...

    @abstractmethod
    def detokenize(self, tokens: list[int]) -> str: ...

    @abstractmethod
    def chat_template(self) -> Optional[str]: ...

    @abstractmethod
    def render_chat(self, messages: list[dict]) -> tuple[str, bool]:
        """Return (prompt text, whether the text already holds the BOS/special prefix)."""

    @abstractmethod
    def stream(self, req: GenerationRequest) -> Iterator[Event]:
        """Decode req.n samples of the prompt in one batch; yield events. Must leave no state
        behind that affects the next call (KV cache cleared, samplers freed)."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
