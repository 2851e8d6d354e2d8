"""Runtime: one engine, many generate() calls (a daemon may hold one for days).

The runtime is engine-independent: it validates :class:`SamplingOptions` against the engine's
declared capabilities, serialises calls on one lock (reporting the wait as ``queue_s``; every
other timing starts when the lock is held), enforces deadlines and cancel tokens, and turns the
engine's events into a :class:`Result` with an aggregated answer and a confidence score.

An engine that declares ``Capabilities.concurrent > 1`` (llama.cpp with ``max_seqs``: continuous
batching) is not serialised: calls from many threads go to the engine at once and share its
decode steps; ``queue_s`` is then the wait the engine reports (no free row / KV space yet).

Lifetime: ``close()`` cancels every generate in flight at its next decode step, waits for them,
then frees the engine; any call afterwards raises ``EdgekitError("runtime is closed")``.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Union

from edgekit import engines
from edgekit.engines.base import Engine, TokenPrompt
from edgekit.errors import UsageError
from edgekit.models.catalog import DEFAULT_MODEL
from edgekit.runtime.aggregate import Extractor, get_extractor, json_answer, majority_vote, quantile
from edgekit.runtime.confidence import p_true, query_scores, rescore
from edgekit.runtime.routing import Offload, route
from edgekit.schemas.options import CancelToken, SamplingOptions
from edgekit.schemas.profile import ModelInfo
from edgekit.schemas.result import Confidence, Result, Sample, Stopping, Timings
from edgekit.schemas.stopping import Tally

Messages = Union[str, Sequence[dict]]  # noqa: UP007 - a runtime alias: `X | Y` of a generic fails on 3.10
Verifier = Callable[[Sample], bool]


def as_messages(prompt: Messages) -> list[dict]:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise UsageError("empty prompt", fix="pass a non-empty prompt")
        return [{"role": "user", "content": prompt}]
    messages = [dict(m) for m in prompt]
    if not messages or any("role" not in m or "content" not in m for m in messages):
        raise UsageError("chat messages need 'role' and 'content'", fix='pass [{"role": "user", "content": "..."}]')
    return messages


class Runtime:
    """Load once, generate many times.

    >>> rt = Runtime("qwen2.5-coder-0.5b-instruct")            # or Runtime(engine_instance)
    >>> r = rt.generate("How many legs do 3 spiders have?", n=8, max_tokens=128, seed=0)
    >>> r.answer, r.confidence.agreement, r.timings.total_s
    """

    def __init__(
        self,
        model: str | Engine = DEFAULT_MODEL,
        *,
        engine: str = "llama.cpp",
        cloud: Engine | None = None,
        offload: Offload | str | None = None,
        **engine_options: Any,
    ):
        """``model``: a model id / path for ``engine`` (a registered engine name), or an Engine
        instance. ``engine_options`` go to the engine (llama.cpp: threads, n_ctx, max_n,
        gpu_layers, flash_attn, progress; openai: base_url, api_key_env, ...).

        ``cloud``: an engine to offload low-confidence queries to; ``offload``: "auto" (default
        with a cloud), "always", "never", or an :class:`Offload` (calibrated threshold, score).
        The runtime owns both engines and closes them."""
        self._lock = threading.Lock()
        self._idle = threading.Condition()  # concurrent engines: calls in flight, for close()
        self._in_flight = 0
        self._closing = False
        self._closed = False
        if isinstance(model, Engine):
            if engine_options:
                raise UsageError(
                    f"options {', '.join(engine_options)} apply when Runtime loads the engine",
                    fix="pass them to the engine's constructor instead",
                )
            self.engine = model
        else:
            self.engine = engines.create(engine, model, **{k: v for k, v in engine_options.items() if v is not None})
        self.calls = 0
        self.offload: Offload | None = None
        self._cloud_rt: Runtime | None = None
        if isinstance(offload, Offload):
            self.offload = offload
        elif cloud is not None:
            self.offload = Offload(cloud=cloud, mode=offload or "auto")  # type: ignore[arg-type]
        elif offload not in (None, "never"):
            raise UsageError(
                f"offload={offload!r} needs a cloud engine", fix="pass cloud=OpenAIEngine(...) or offload='never'"
            )
        if self.offload is not None:
            self._cloud_rt = Runtime(self.offload.cloud)

    # -- facts -------------------------------------------------------------------------------
    @property
    def model_info(self) -> ModelInfo:
        return self.engine.model_info

    @property
    def model_id(self) -> str:
        return self.engine.model_info.id

    @property
    def load_s(self) -> float:
        return self.engine.load_s

    @property
    def max_n(self) -> int:
        return self.engine.capabilities.max_n

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed or self._closing:
            raise UsageError(
                "runtime is closed", fix="create a new Runtime; do not use one after close() or its with-block"
            )

    # -- prompt ------------------------------------------------------------------------------
    def prompt_tokens(self, prompt: Messages, chat: bool = True, system: str | None = None) -> list[int]:
        """Token ids of the rendered prompt (engines with token counting)."""
        self._check_open()
        opts = SamplingOptions.build(chat=chat, system=system)
        if not self.engine.capabilities.token_input:
            raise UsageError(f"engine {self.engine.name} does not expose token ids", fix="use the llama.cpp engine")
        with self._lock:
            self._check_open()
            return self.engine.prompt_ids(as_messages(prompt), opts)  # type: ignore[attr-defined]

    def count_tokens(self, prompt: Messages, chat: bool = True) -> int:
        self._check_open()
        with self._lock:
            self._check_open()
            return self.engine.count_tokens(as_messages(prompt), SamplingOptions.build(chat=chat))

    # -- generate ----------------------------------------------------------------------------
    def generate(
        self,
        prompt: Messages | None = None,
        options: SamplingOptions | None = None,
        *,
        cancel: CancelToken | None = None,
        verifier: Verifier | None = None,
        extractor: str | Extractor | None | object = ...,
        prompt_tokens: list[int] | None = None,
        **overrides: Any,
    ) -> Result:
        """Draw n samples in one batch and aggregate them.

        ``options`` (or keyword overrides of its fields: ``n=8, max_tokens=128, seed=0, ...``)
        say how; see :class:`SamplingOptions`. aggregate: "majority" (vote over extracted
        answers), "first_verified" (the first sample to finish within max_tokens that ``verifier``
        accepts -- a truncated sample is never verified; the rest of the batch is cancelled), "none".
        ``deadline_s``: seconds from this call after which unfinished samples are cancelled (flag
        "deadline"). ``cancel``: a :class:`CancelToken`.
        """
        t_call = time.perf_counter()
        self._check_open()
        custom_extract = None
        if extractor is not ...:
            if callable(extractor):
                custom_extract = extractor
            else:
                overrides["extractor"] = extractor
        opts = options if options is not None else SamplingOptions()
        if overrides:
            opts = opts.replace(**overrides)
        if opts.aggregate == "first_verified" and verifier is None:
            raise UsageError(
                "aggregate='first_verified' needs a verifier", fix="pass verifier=callable(sample) -> bool"
            )
        self.engine.check(opts)
        if opts.self_check and not hasattr(self.engine, "next_logprobs"):
            raise UsageError(
                f"engine {self.engine.name} gives no next-token log-probabilities for the P(True) self-check",
                fix="use the llama.cpp engine, or drop self_check / --self-check",
            )
        if opts.rule.kind == "adaptive" and not self.engine.capabilities.grow:
            raise UsageError(
                f"engine {self.engine.name} cannot add samples to a running batch (stop rule {opts.stop_rule})",
                fix="use the llama.cpp engine, or --stop-rule decided / beta:<c>",
            )
        if prompt_tokens is not None:
            if not self.engine.capabilities.token_input:
                raise UsageError(f"engine {self.engine.name} does not take token ids", fix="pass a text prompt")
            src: Any = TokenPrompt(tuple(prompt_tokens))
        elif prompt is None:
            raise UsageError("no prompt", fix="pass a prompt")
        else:
            src = as_messages(prompt)
        if opts.json_schema is not None:
            extract: Extractor = lambda text: json_answer(text, opts.json_schema)[0]
        else:
            extract = custom_extract or get_extractor(opts.extractor)

        def run_local(o: SamplingOptions, t0: float = t_call) -> Result:
            if self.engine.capabilities.concurrent > 1:  # the engine batches concurrent calls itself
                with self._idle:
                    self._check_open()
                    self._in_flight += 1
                try:
                    res = self._generate(
                        src, o, t0, time.perf_counter(), cancel, verifier, extract, custom_extract is not None
                    )
                finally:
                    with self._idle:
                        self._in_flight -= 1
                        self.calls += 1
                        self._idle.notify_all()
                return res
            with self._lock:
                t_start = time.perf_counter()
                self._check_open()
                res = self._generate(src, o, t0, t_start, cancel, verifier, extract, custom_extract is not None)
                self.calls += 1
            return res

        if self.offload is not None and self._cloud_rt is not None and not isinstance(src, TokenPrompt):
            res = route(self, src, opts, lambda o: run_local(o, time.perf_counter()), self._cloud_rt)
        else:
            res = run_local(opts)
        if opts.json_schema is not None and res.answer is not None and res.value is None:
            # a value only from a sample's answer (the canonical JSON json_answer validated); aggregate none /
            # first_verified fall back to a sample's raw text (truncated, say): no value from that (flagged)
            if any(s.answer == res.answer for s in res.samples):
                res.value = json.loads(res.answer)
        return res

    def _generate(
        self,
        src: Any,
        opts: SamplingOptions,
        t_call: float,
        t_start: float,
        token: CancelToken | None,
        verifier: Verifier | None,
        extract: Extractor,
        custom: bool,
    ) -> Result:
        n = opts.n
        state: dict[str, Any] = {"verified": None, "deadline": False, "stopped": False}
        tally = Tally(opts.rule, n) if opts.rule.stops else None

        def cancel() -> bool:
            if state["verified"] is not None or state["stopped"] or self._closing:
                return True
            if token is not None and token.cancelled:
                return True
            if opts.deadline_s is not None and time.perf_counter() - t_call > opts.deadline_s:
                state["deadline"] = True
                return True
            return False

        run_opts = opts
        if opts.deadline_s is not None:  # what is left of the deadline after the queue
            run_opts = opts.model_copy(update={"deadline_s": max(1e-3, opts.deadline_s - (t_start - t_call))})
        ids: list[list[int]] = [[] for _ in range(n)]
        lps: list[list[float]] = [[] for _ in range(n)]
        # token scores for confidence (engines that give them): renormalised logprob, token confidence, piece length
        tsc: list[list[tuple]] = [[] for _ in range(n)]
        samples: list[Sample | None] = [None] * n
        t_prefill_done = t_first = None
        n_prompt = len(src.ids) if isinstance(src, TokenPrompt) else None
        n_cached = 0
        answering = opts.aggregate != "none" or custom or opts.extractor is not None or opts.json_schema is not None
        grow = {"grow": lambda: tally.started} if tally is not None and opts.rule.kind == "adaptive" else {}
        for ev in self.engine.generate(src, run_opts, cancel, **grow):
            if ev.queue_s is not None and t_prefill_done is None and t_first is None:  # waited inside the engine
                t_start += ev.queue_s
            if ev.kind == "token":
                if t_first is None:
                    t_first = time.perf_counter()
                ids[ev.seq].append(ev.token)
                if ev.logprob is not None:
                    lps[ev.seq].append(ev.logprob)
                if ev.scored:
                    tsc[ev.seq].append((ev.logprob_allowed, ev.conf, len(ev.text)))
            elif ev.kind == "finish":
                if t_first is None:
                    t_first = time.perf_counter()
                s = Sample(
                    index=ev.seq,
                    text=ev.text,
                    tokens=ev.tokens,
                    finish_reason=ev.reason,
                    token_ids=ev.token_ids if ev.token_ids is not None else ids[ev.seq],
                    logprobs=ev.logprobs if ev.logprobs is not None else lps[ev.seq],
                    tokens_estimated=ev.tokens_estimated,
                )
                # Only a sample that finished within max_tokens counts: a truncated one carries no
                # answer and is never verified (the tables' rule, edgekit.schemas.table.within_budget).
                if ev.reason == "stop" and answering:
                    s.answer = extract(s.text)
                if tsc[ev.seq] and len(tsc[ev.seq]) == len(s.token_ids):
                    s._token_scores = tsc[ev.seq]
                    s.scores = rescore(s, s.answer, opts)
                if ev.reason == "stop" and opts.aggregate == "first_verified" and state["verified"] is None:
                    s.verified = bool(verifier(s))  # type: ignore[misc]
                    if s.verified:
                        state["verified"] = ev.seq
                samples[ev.seq] = s
                if tally is not None and ev.reason != "cancelled":
                    tally.add(s.answer)
                    if tally.should_stop():
                        state["stopped"] = True  # the engine cancels the other rows at its next step
                    elif tally.should_grow():
                        tally.grow()  # the engine starts the other rows at its next step
            elif ev.kind == "prefill":
                t_prefill_done = time.perf_counter()
                if ev.prompt_tokens is not None:
                    n_prompt = ev.prompt_tokens
                    n_cached = ev.cached_tokens or 0
        t_end = time.perf_counter()
        done = [s for s in samples if s is not None]
        gen = sum(s.tokens for s in done)
        t_first = t_first or t_end
        n_prompt = n_prompt or 0
        timings = Timings(
            load_s=self.load_s,
            queue_s=t_start - t_call,
            prefill_s=t_first - t_start,
            decode_s=t_end - t_first,
            total_s=t_end - t_start,
            prompt_tokens=n_prompt,
            cached_prompt_tokens=n_cached,
            generated_tokens=gen,
            steps=max((s.tokens for s in done), default=0),
            prefill_tok_s=(n_prompt - n_cached) / (t_prefill_done - t_start)
            if t_prefill_done and t_prefill_done > t_start and n_prompt > n_cached
            else None,
            decode_tok_s=(gen - len(done)) / (t_end - t_first) if t_end > t_first and gen > len(done) else None,
            kernels=(self.engine.info.extra or {}).get("kernels"),
            threads=getattr(getattr(self.engine, "tuner", None), "threads", None),
        )
        res = self._aggregate(done, opts)
        if opts.self_check and res.answer is not None and not isinstance(src, TokenPrompt) and not state["deadline"]:
            t0 = time.perf_counter()
            res.confidence.p_true = p_true(self.engine, src, res.answer, opts)
            timings.self_check_s = time.perf_counter() - t0
            timings.total_s += timings.self_check_s
        res.timings = timings
        if tally is not None:
            res.stopping = Stopping(
                rule=str(opts.rule),
                stopped=bool(state["stopped"]) and (len(done) < n or any(s.finish_reason == "cancelled" for s in done)),
                counted=tally.finished,
                started=tally.started,
                grown=tally.started > opts.rule.first_rows(n),
            )
            res.confidence.n = tally.finished  # the vote is over the samples that finished
            res.confidence.vote_share = res.confidence.votes / tally.finished if tally.finished else None
        res.engine = self.engine.name
        if state["deadline"]:
            res.flags.append("deadline")
        if token is not None and token.cancelled:
            res.flags.append(f"cancelled: {token.reason}")
        if self._closing:
            res.flags.append("closed: the runtime was closed during this call")
        if opts.json_schema is not None:
            bad = sum(1 for s in done if s.finish_reason == "stop" and s.answer is None)
            if bad:
                res.flags.append(
                    f"schema: {bad}/{len(done)} finished sample(s) did not validate (no answer taken from them)"
                )
        return res

    def _aggregate(self, samples: list[Sample], opts: SamplingOptions) -> Result:
        n = len(samples)
        conf = Confidence(n=n)
        answer = None
        chosen: list[Sample] = []
        if opts.aggregate == "majority":
            winner, votes, tied = majority_vote(
                [s.answer for s in samples if s.finish_reason != "cancelled"], opts.seed
            )
            answer = winner
            conf.votes = votes
            conf.tied = tied if len(tied) > 1 else []
            chosen = [s for s in samples if winner is not None and s.answer == winner]
        elif opts.aggregate == "first_verified":
            ok = [s for s in samples if s.verified]
            conf.verified = bool(ok)
            if ok:
                chosen = [ok[0]]
                answer = ok[0].answer if ok[0].answer is not None else ok[0].text
                conf.votes = 1
        elif samples:  # none: the first sample
            chosen = [min(samples, key=lambda s: s.index)]
            answer = chosen[0].answer if chosen[0].answer is not None else chosen[0].text
            conf.votes = (
                sum(1 for s in samples if s.answer is not None and s.answer == chosen[0].answer)
                if chosen[0].answer
                else 1
            )
        text = chosen[0].text if chosen else None
        toks = [lp for s in chosen for lp in s.logprobs]
        if toks:
            conf.mean_logprob = statistics.fmean(toks)
            conf.low_logprob = quantile(toks, 0.10)
        conf.vote_share = conf.votes / n if n else None
        counted = [s for s in samples if s.finish_reason != "cancelled"]
        for k, v in query_scores(chosen, counted).items():
            setattr(conf, k, v)
        flags = []
        if any(s.finish_reason == "budget" for s in samples):
            k = sum(s.finish_reason == "budget" for s in samples)
            flags.append(f"budget: {k}/{n} sample(s) hit max_tokens before finishing (no answer taken from them)")
        if opts.aggregate == "first_verified" and not conf.verified:
            flags.append("unverified")
        return Result(
            model=self.model_id,
            answer=answer,
            text=text,
            aggregate=opts.aggregate,
            samples=sorted(samples, key=lambda s: s.index),
            confidence=conf,
            timings=Timings(),
            n=opts.n,
            max_tokens=opts.max_tokens,
            temperature=opts.effective_temperature,
            seed=opts.seed,
            flags=flags,
            options=opts,
        )

    # -- lifetime ----------------------------------------------------------------------------
    def close(self) -> None:
        """Cancel a generate in flight (at its next step), wait for it, free the engine. Idempotent."""
        if self._closed:
            return
        self._closing = True
        with self._idle:  # concurrent engines: every call in flight ends at its next step
            while self._in_flight:
                self._idle.wait()
        with self._lock:
            if not self._closed:
                self.engine.close()
                self._closed = True
        if self._cloud_rt is not None:
            self._cloud_rt.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
