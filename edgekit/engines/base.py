"""The engine contract: one prompt-level streaming method, implemented by peers.

A local llama.cpp model, an OpenAI-compatible HTTP endpoint and (later) ONNX Runtime are
engines. Each takes chat messages and :class:`~edgekit.schemas.options.SamplingOptions` and
yields :class:`Event` s; templating, tokenisation, batching and KV-cache reuse stay private to
the engine. Everything above (aggregation, confidence, deadlines, locking, offload) lives in
:class:`edgekit.runtime.Runtime` and works for every engine (cf. simonw/llm's one ``execute``).

Optional abilities are *declared* in :class:`Capabilities`, never probed: the runtime refuses a
request an engine cannot honour (e.g. a grammar on an engine without ``grammar``) before any
work starts -- it never silently generates unconstrained.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Union

from edgekit.errors import UsageError
from edgekit.schemas.options import SamplingOptions
from edgekit.schemas.profile import ModelInfo

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}
Cancel = Callable[[], bool]  # polled once per decode step; True ends the batch
Grow = Callable[[], int]  # polled once per decode step: samples that should have started (Capabilities.grow)


@dataclass(frozen=True)
class TokenPrompt:
    """A prompt given as token ids (profiling); only engines with ``token_input`` take it."""

    ids: tuple[int, ...]


Prompt = Union[Sequence[Message], TokenPrompt]  # noqa: UP007 - a runtime alias: `X | Y` of a generic fails on 3.10


@dataclass(frozen=True)
class Capabilities:
    max_n: int = 1  # most samples one generate() may ask for
    batched_n: bool = False  # n samples decoded in one batch sharing the prompt's KV cache
    token_count: bool = False  # count_tokens() is exact
    token_input: bool = False  # accepts a TokenPrompt
    logprobs: bool = False  # token events carry the chosen token's logprob
    json_schema: bool = False  # options.json_schema is enforced
    grammar: bool = False  # options.grammar (GBNF) is enforced
    seed: bool = True  # options.seed makes sampling reproducible
    n_ctx: int | None = None  # context window, when the engine knows it
    # Rows decoded together across requests (continuous batching; a request takes n rows). Above 1,
    # generate() is thread-safe and the runtime stops serialising calls: concurrent requests share
    # decode steps, and the engine reports each request's wait for a free slot as Event.queue_s.
    concurrent: int = 1
    # generate() takes ``grow``: a callable polled once per decode step that returns how many of the n samples
    # should have started; samples beyond it wait and join later sharing the prompt's KV cells (adaptive stopping)
    grow: bool = False


@dataclass
class EngineInfo:
    name: str  # engine name in the registry: "llama.cpp", "openai", ...
    model: str  # model id / path / served name
    version: str = "?"
    build: str = "cpu"  # cpu / cuda / metal / vulkan / remote
    threads: int | None = None
    gpu_layers: int = 0
    n_ctx: int | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class Event:
    """One step of a generation.

    kind: ``"prefill"`` (prompt evaluated; ``prompt_tokens`` set), ``"token"`` (``seq``,
    ``token``, ``text`` piece, ``logprob``), ``"finish"`` (``seq``, whole ``text``, ``reason``
    stop | budget | cancelled, ``tokens``; engines that do not stream tokens may put the whole
    ``token_ids`` / ``logprobs`` lists here). An engine with ``Capabilities.concurrent > 1`` puts
    the time the request waited for a free slot in ``queue_s`` of its first event.
    """

    kind: str
    seq: int = -1
    token: int = -1
    text: str = ""
    logprob: float | None = None
    # token scores for confidence (llama.cpp with logprobs): the logprob renormalised over the tokens
    # the grammar allowed, and DeepConf's token confidence; both None for a token the grammar forced
    logprob_allowed: float | None = None
    conf: float | None = None
    scored: bool = False  # the two above were computed (False: the engine gives no token scores)
    reason: str | None = None
    tokens: int = 0
    prompt_tokens: int | None = None
    cached_tokens: int | None = None  # on "prefill": prompt tokens taken from a prefix cache, not prefilled
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    tokens_estimated: bool = False
    queue_s: float | None = None  # concurrent engines, on "prefill" (or an early "finish"): wait before admission


class Engine(ABC):
    """A loaded model behind one prompt-level streaming method."""

    name: ClassVar[str] = "engine"
    capabilities: Capabilities
    info: EngineInfo
    model_info: ModelInfo
    load_s: float = 0.0

    @abstractmethod
    def generate(self, prompt: Prompt, options: SamplingOptions, cancel: Cancel | None = None) -> Iterator[Event]:
        """Draw ``options.n`` samples of ``prompt``; yield events as they happen.

        Must leave nothing behind that changes the next call, raise EdgekitError subclasses for
        problems the user can fix, and end unfinished samples as ``cancelled`` when ``cancel()``
        turns true.
        """

    def count_tokens(self, prompt: Prompt, options: SamplingOptions) -> int:
        raise UsageError(f"engine {self.name} cannot count tokens", fix="use an engine with token counting (llama.cpp)")

    def check(self, options: SamplingOptions) -> None:
        """Refuse options this engine cannot honour (declared capabilities), before any work."""
        cap = self.capabilities
        if options.n > cap.max_n:
            raise UsageError(
                f"n={options.n} exceeds this engine's max_n={cap.max_n}",
                fix=f"pass --n {cap.max_n} or less (or load the model with a larger max_n)",
            )
        if options.json_schema is not None and not cap.json_schema:
            raise UsageError(
                f"engine {self.name} cannot enforce a JSON schema", fix="use the llama.cpp or openai engine"
            )
        if options.grammar is not None and not cap.grammar:
            raise UsageError(
                f"engine {self.name} cannot enforce a GBNF grammar",
                fix="use the llama.cpp engine, or express the format as a JSON schema",
            )

    @abstractmethod
    def close(self) -> None:
        """Free every native handle / connection. Idempotent."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def chat_messages(prompt, options) -> list[dict]:
    """A chat prompt's messages with the options' system message first (every engine templates these)."""
    messages = [dict(m) for m in prompt]
    if options.system:
        messages.insert(0, {"role": "system", "content": options.system})
    return messages


def plain_text(messages: list[dict]) -> str:
    """The messages' contents joined by newlines: the prompt of an engine asked not to apply a chat template."""
    return "\n".join(str(m["content"]) for m in messages)
