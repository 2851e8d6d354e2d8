"""A transparent engine wrapper that lets the daemon watch one call's events (token streaming).

``Runtime.generate`` runs the engine in the calling thread (holding the runtime's lock, unless
the engine batches concurrent calls itself) and keeps the engine's events to itself. The daemon
calls ``generate`` from a worker thread per request, so a *thread-local* listener set around that
call sees exactly that call's events: the
moment it holds the model (queue wait over: the call reaching a serialised engine, or a
continuous-batching engine's first event), every token as it is decoded (SSE streaming without
engine or runtime changes), and a place to refuse an over-long prompt under the lock. A
``Runtime.generate(on_event=...)`` hook would make this wrapper unnecessary.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from edgekit.engines.base import Cancel, Engine, Event, Prompt, TokenPrompt
from edgekit.errors import UsageError
from edgekit.schemas.options import SamplingOptions


class PromptTooLong(UsageError):
    prompt_too_long = True


class Listener(Protocol):
    max_prompt_tokens: int | None

    def on_start(self) -> None: ...

    def cancelled(self) -> bool: ...

    def on_event(self, ev: Event) -> None: ...


class TapEngine(Engine):
    """Delegates everything to ``inner``; calls the current thread's listener, if any."""

    def __init__(self, inner: Engine):
        self.inner = inner
        self.name = inner.name  # type: ignore[misc]
        self._local = threading.local()
        self.batches = 0  # generate calls that reached the engine (one batch of n samples each)
        self._count = threading.Lock()

    # facts, delegated
    @property
    def capabilities(self):  # type: ignore[override]
        return self.inner.capabilities

    @property
    def info(self):  # type: ignore[override]
        return self.inner.info

    @property
    def model_info(self):  # type: ignore[override]
        return self.inner.model_info

    @property
    def load_s(self) -> float:  # type: ignore[override]
        return self.inner.load_s

    def __getattr__(self, name: str) -> Any:  # engine-private abilities (prompt_ids, tokenize, ...)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def check(self, options: SamplingOptions) -> None:
        self.inner.check(options)

    def count_tokens(self, prompt: Prompt, options: SamplingOptions) -> int:
        return self.inner.count_tokens(prompt, options)

    @contextmanager
    def listening(self, listener: Listener) -> Iterator[None]:
        self._local.listener = listener
        try:
            yield
        finally:
            self._local.listener = None

    def generate(
        self, prompt: Prompt, options: SamplingOptions, cancel: Cancel | None = None, **grow
    ) -> Iterator[Event]:
        lis: Listener | None = getattr(self._local, "listener", None)
        if lis is None:
            return self.inner.generate(prompt, options, cancel, **grow)
        concurrent = self.inner.capabilities.concurrent > 1
        if not concurrent:  # serialised: reaching the engine means holding the model
            lis.on_start()
        if lis.cancelled():  # the client left while this request waited for the model: no work at all
            return iter([Event("finish", seq=i, reason="cancelled") for i in range(options.n)])
        cap = lis.max_prompt_tokens
        if cap is not None and not isinstance(prompt, TokenPrompt):
            size = sum(len(str(m.get("content", "")).encode()) for m in prompt) + len((options.system or "").encode())
            if size > cap and self.inner.capabilities.token_count:  # a token is at least one byte: count only then
                k = self.inner.count_tokens(prompt, options)
                if k > cap:
                    raise PromptTooLong(
                        f"the prompt has {k} tokens, above this server's cap of {cap}",
                        fix="shorten the prompt (or start the server with a larger --max-prompt-tokens)",
                    )
        events = self.inner.generate(prompt, options, cancel, **grow)
        with self._count:
            self.batches += 1
        return self._tap(events, lis, concurrent)

    @staticmethod
    def _tap(events: Iterator[Event], lis: Listener, concurrent: bool) -> Iterator[Event]:
        for ev in events:
            if concurrent:  # admitted by the engine's scheduler: no longer waiting
                concurrent = False
                lis.on_start()
            lis.on_event(ev)
            yield ev

    def batching_stats(self) -> dict | None:
        fn = getattr(self.inner, "batching_stats", None)
        return fn() if fn is not None else None

    def seed_step_costs(self, costs: dict[int, float]) -> bool:
        fn = getattr(self.inner, "seed_step_costs", None)
        return bool(fn(costs)) if fn is not None else False

    def close(self) -> None:
        self.inner.close()
