"""The llama.cpp engine (llama-cpp-python's low-level API).

Private to this engine: chat templating (the GGUF's Jinja template), tokenisation, and the
performance core -- the prompt is evaluated once (sequence 0), its KV cells are shared with
sequences 1..n-1 (``llama_memory_seq_cp`` on a unified KV cache), then one ``llama_decode`` per
step decodes a token for every live sequence. Each sequence samples with its own native chain
(grammar, top-k, top-p, min-p, temperature, seeded dist); finished sequences leave the batch.
The chosen token's logprob is read from the raw logits (one vectorised log-sum-exp per step).

Every native handle (model, context, batch) is owned by one ``contextlib.ExitStack``
(cf. ``llama_cpp.Llama._stack``). llama.cpp's log goes to the ``edgekit.llama_cpp`` logger at
DEBUG. Ctrl-C during load aborts the load through llama.cpp's progress callback and surfaces as
``KeyboardInterrupt`` (never swallowed inside a C callback).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import time
from collections.abc import Iterator

from edgekit.engines import llamacpp_core as core
from edgekit.engines import llamacpp_probe as probe
from edgekit.engines import llamacpp_sched as sched
from edgekit.engines.base import (
    Cancel,
    Capabilities,
    Engine,
    EngineInfo,
    Event,
    Grow,
    Prompt,
    TokenPrompt,
    chat_messages,
    plain_text,
)
from edgekit.engines.grammar import grammar_for
from edgekit.engines.llamacpp_prefix import PREFIX_MIN, PREFIX_SLOTS, common_prefix
from edgekit.errors import BackendError, ContextOverflow, GGUFError, UsageError
from edgekit.host import peers
from edgekit.host import threads as host_threads
from edgekit.host.cpu import usable_cpus
from edgekit.host.load import ThreadTuner
from edgekit.models.gguf import arch_is_known, check_gguf
from edgekit.models.store import Progress, model_info, resolve
from edgekit.schemas.options import MAX_N_CAP, SamplingOptions

_ll = core.ll
log = logging.getLogger("edgekit.llama_cpp")
_LEVELS = {1: logging.ERROR, 2: logging.WARNING, 3: logging.INFO, 4: logging.DEBUG, 5: logging.DEBUG}
_state = {"ready": False, "interrupted": False}


@_ll.llama_log_callback
def log_to_logging(level, text, user_data):  # ctypes callback
    try:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s", text.decode("utf-8", errors="replace").rstrip("\n"))
    except KeyboardInterrupt:  # raised by the SIGINT handler while inside C: remember, never swallow
        _state["interrupted"] = True
    except Exception:  # a logging failure must not break inference
        pass


@ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_float, ctypes.c_void_p)
def _load_progress(progress, user_data):  # ctypes callback; False aborts the load
    try:
        return not _state["interrupted"]
    except KeyboardInterrupt:
        _state["interrupted"] = True
        return False


def _raise_if_interrupted() -> None:
    if _state["interrupted"]:
        _state["interrupted"] = False
        raise KeyboardInterrupt


def _init_backend() -> None:
    if not _state["ready"]:
        _ll.llama_log_set(log_to_logging, ctypes.c_void_p(0))
        _ll.llama_backend_init()
        _state["ready"] = True
    if os.environ.get("EDGEKIT_DEBUG") and not log.handlers and not logging.getLogger().handlers:
        logging.basicConfig(level=logging.DEBUG)


def default_threads() -> int:
    """Threads for llama.cpp: the CPUs this process may use (affinity, cgroup quota, physical cores)."""
    return usable_cpus().count


class LlamaCppEngine(Engine):
    """A GGUF model in llama.cpp: n samples per request decoded in one batch."""

    name = "llama.cpp"

    def __init__(
        self,
        model: str = "qwen2.5-coder-0.5b-instruct",
        *,
        threads: int | None = None,
        n_ctx: int = 8192,
        max_n: int = 16,
        gpu_layers: int = 0,
        flash_attn: bool | None = None,
        n_batch: int = 512,
        progress: Progress | None = None,
        verify: str | None = None,
        max_seqs: int | None = None,
        prefill_chunk: int = 128,
        prefix_cache: int | None = None,
        prefix_min: int = PREFIX_MIN,
    ):
        """``model``: catalogue id, .gguf path or hf:owner/repo/file. ``verify``: "auto" (a cheap
        size/mtime/manifest check on every load, a full sha256 when it trips) or "full".

        ``max_seqs`` > 1 turns on continuous batching (the daemon's mode): ``generate()`` becomes
        thread-safe, and concurrent requests share one ``llama_decode`` per step, max(max_seqs,
        max_n) rows in all (a request takes n), the context's KV cells shared by all of them;
        ``prefill_chunk`` caps the prompt tokens prefilled per step beside the running rows.
        Unset (the library and CLI default), one request holds the whole context at a time.

        ``prefix_cache``: KV cells kept for recent prompts' prefixes (continuous batching: up to
        ``PREFIX_SLOTS`` prompts, default a quarter of the context, at most 4096; one request at a
        time: the last prompt, default on); 0 turns it off. A new prompt sharing at least
        ``prefix_min`` leading tokens with a kept one prefills only the rest."""
        if not isinstance(max_n, int) or not 1 <= max_n <= MAX_N_CAP:
            raise UsageError(
                f"max_n must be in 1..{MAX_N_CAP}, got {max_n!r}", fix=f"pass max_n between 1 and {MAX_N_CAP}"
            )
        if not isinstance(n_ctx, int) or n_ctx < 16:
            raise UsageError(f"context size must be an integer >= 16, got {n_ctx!r}", fix="pass --ctx 2048 or more")
        if max_seqs is not None and (not isinstance(max_seqs, int) or not 1 <= max_seqs <= 256):
            raise UsageError(f"max_seqs must be in 1..256, got {max_seqs!r}", fix="pass --max-seqs 8")
        rows = max(max_seqs, max_n) if max_seqs is not None and max_seqs > 1 else 0
        if prefix_cache is not None and (not isinstance(prefix_cache, int) or prefix_cache < 0):
            raise UsageError(
                f"prefix cache size must be a whole number of tokens >= 0, got {prefix_cache!r}",
                fix="pass 0 to turn the prefix cache off, or a size such as 2048",
            )
        if not isinstance(prefix_min, int) or prefix_min < 1:
            raise UsageError(f"prefix_min must be an integer >= 1, got {prefix_min!r}", fix=f"pass {PREFIX_MIN}")
        if prefix_cache is None:
            prefix_cache = min(n_ctx // 4, 4096) if rows else 1
        slots = PREFIX_SLOTS if rows and prefix_cache else 0
        self._sched: sched.Scheduler | None = None
        self._stack = contextlib.ExitStack()
        self._closed = False
        resolved = resolve(model, progress=progress, verify=verify)
        info = check_gguf(resolved.path)
        self.path = resolved.path
        self.gguf = info
        self.model_info = model_info(resolved, info)
        host_threads.requested_policy()  # a bad EDGEKIT_THREADING is refused here, in one line
        usable = usable_cpus()
        host_threads.check_threads(threads, usable.count)
        fixed = threads
        adaptive = threads is None and host_threads.policy()["policy"] != "spin"
        threads = threads or usable.count
        _init_backend()
        self.kernels = probe.choose_for(str(resolved.path), threads=threads, gpu_layers=gpu_layers, info=info)
        self.peers = peers.live_peers()
        peers.warn_if_shared(self.peers, adaptive)
        t0 = time.perf_counter()
        try:
            self._load(str(resolved.path), n_ctx, threads, max(max_n, rows), n_batch, gpu_layers, flash_attn, slots)
            self._core.reuse_min = prefix_min if prefix_cache and not rows else 0
            ctx = self._core._ctx
            self.tuner = ThreadTuner(
                usable.count,
                lambda t: _ll.llama_set_n_threads(ctx, t, t),
                fixed=None if adaptive else (fixed or threads),
                cpus=usable.affinity,
            )
            t_warm = time.perf_counter()
            self._core.warm_up(grammar=bool(rows))  # the first request then costs what later ones do (daemon: grammar)
            self.warmup_s = time.perf_counter() - t_warm
            self.tuner.check(force=True)  # first look at the load, over the warm-up's window
            self._core.tuner = self.tuner
            reg = peers.register(f"llama.cpp {resolved.id}")
            self._stack.callback(peers.unregister, reg)
            if rows:
                self._sched = sched.Scheduler(
                    self._core,
                    rows=rows,
                    prefill_chunk=prefill_chunk,
                    prefix_tokens=prefix_cache,
                    prefix_slots=slots,
                    prefix_min=prefix_min,
                )
                self._stack.callback(self._sched.close)  # runs first: the worker stops before the context is freed
        except GGUFError as e:
            self.close()
            if not arch_is_known(info.arch):
                raise GGUFError(
                    f"{resolved.path}: architecture {info.arch!r} is not supported by this llama.cpp build",
                    fix="use a supported model (`edgekit models list`) or upgrade llama-cpp-python "
                    "within the tested range",
                ) from e
            raise
        except BaseException:
            self.close()
            raise
        self.load_s = time.perf_counter() - t0
        self.info = EngineInfo(
            name=self.name,
            model=resolved.id,
            version=getattr(_ll, "__version__", "?"),
            build=core.build_kind(),
            threads=threads,
            gpu_layers=gpu_layers,
            n_ctx=self._core.n_ctx,
            extra={"kernels": self.kernels.config, "threading": self.threading()},
        )
        self.capabilities = Capabilities(
            max_n=max_n,
            batched_n=True,
            token_count=True,
            token_input=True,
            logprobs=True,
            json_schema=True,
            grammar=True,
            n_ctx=self._core.n_ctx,
            concurrent=rows or 1,
            grow=True,
        )

    def _load(
        self,
        path: str,
        n_ctx: int,
        threads: int,
        max_n: int,
        n_batch: int,
        gpu_layers: int,
        flash_attn: bool | None,
        extra_seqs: int = 0,
    ) -> None:
        mp = _ll.llama_model_default_params()
        mp.n_gpu_layers = gpu_layers
        mp.use_extra_bufts = self.kernels.use_extra_bufts  # what the probe found safe (and fastest) here
        mp.progress_callback = _load_progress
        model = _ll.llama_model_load_from_file(path.encode(), mp)
        _raise_if_interrupted()
        if not model:
            raise GGUFError(
                f"llama.cpp could not load {path} (unsupported architecture or corrupt tensors)",
                fix="use a model llama.cpp supports (`edgekit models list`); EDGEKIT_DEBUG=1 shows llama.cpp's log",
            )
        self._stack.callback(_ll.llama_model_free, model)
        cp = _ll.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = n_ctx, n_batch, n_batch, max_n + extra_seqs
        cp.n_threads = cp.n_threads_batch = threads
        cp.kv_unified = True  # the prompt's KV cells are shared by all n sequences
        # Measured on a 2-core x86 CPU: FA off decodes 10-25 % faster there. FA on makes each row of
        # an n>1 batch bit-identical to the same sample decoded alone; FA off leaves rows equal to
        # n=1 within the quantised model's rounding noise (tests/test_runtime_claims.py).
        if flash_attn is None:
            flash_attn = None if _ll.llama_supports_gpu_offload() and gpu_layers else False
        if flash_attn is not None:
            cp.flash_attn_type = 1 if flash_attn else 0
        ctx = _ll.llama_init_from_model(model, cp)
        _raise_if_interrupted()
        if not ctx:
            raise BackendError(
                f"llama.cpp could not create a context of {n_ctx} tokens", fix="lower --ctx or free memory"
            )
        self._stack.callback(_ll.llama_free, ctx)
        self._core = core.BatchDecoder(model, ctx, max_n=max_n, n_batch=n_batch, interrupted=_raise_if_interrupted)
        self._stack.callback(self._core.free)

    # -- text (private abilities of this engine; profiling uses tokenize) ----------------------
    def _live(self) -> core.BatchDecoder:
        if self._closed:
            raise UsageError("engine is closed", fix="create a new Runtime/engine; do not use one after close()")
        return self._core

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return self._live().tokenize(text, add_special)

    def detokenize(self, tokens: list[int]) -> str:
        return self._live().detokenize(tokens)

    def chat_template(self) -> str | None:
        return self._live().meta("tokenizer.chat_template")

    def render_chat(self, messages: list[dict]) -> tuple[str, bool]:
        return self._live().render_chat(messages)

    def prompt_ids(self, prompt: Prompt, options: SamplingOptions) -> list[int]:
        if isinstance(prompt, TokenPrompt):
            return list(prompt.ids)
        messages = chat_messages(prompt, options)
        if not options.chat:
            return self.tokenize(plain_text(messages), add_special=True)
        text, has_special = self.render_chat(messages)
        return self.tokenize(text, add_special=not has_special)

    def count_tokens(self, prompt: Prompt, options: SamplingOptions) -> int:
        return len(self.prompt_ids(prompt, options))

    def check_fits(self, n_prompt: int, n: int, max_tokens: int) -> None:
        need, n_ctx = n_prompt + n * max_tokens, self._live().n_ctx
        if need > n_ctx:
            raise ContextOverflow(
                f"prompt ({n_prompt} tokens) + {n} samples x {max_tokens}-token budget = {need} tokens "
                f"exceeds the context of {n_ctx}",
                fix=f"lower --max-tokens or --n, shorten the prompt, or raise the context (ctx >= {need})",
            )

    # -- generation ------------------------------------------------------------------------
    def generate(
        self, prompt: Prompt, options: SamplingOptions, cancel: Cancel | None = None, grow: Grow | None = None
    ) -> Iterator[Event]:
        dec = self._live()
        self.check(options)
        ids = self.prompt_ids(prompt, options)
        if not ids:
            raise UsageError("empty prompt", fix="pass a non-empty prompt")
        self.check_fits(len(ids), options.n, options.max_tokens)
        grammar = grammar_for(options)  # fails closed: a schema without a grammar is refused here
        if self._sched is None:
            return dec.stream(ids, options, grammar, cancel, grow)
        samplers: list = []
        try:  # built here, in the caller's thread: a grammar llama.cpp rejects fails this call only
            for seed in core.sample_seeds(options.seed, options.n):
                samplers.append(dec._sampler(options, seed, grammar))
        except BaseException:
            for smp in samplers:
                smp.free()
            raise
        return self._sched.submit(ids, options, samplers, cancel, grow)

    def pin_threads(self, k: int | None) -> None:
        """Hold llama.cpp's thread count at ``k`` (profiling's thread scaling); None: back to normal."""
        self.tuner.pin(k)

    def threading(self) -> dict:
        """The thread policy in force: {threads, adaptive, how, wait, why, usable, peers}."""
        pol = host_threads.policy()
        return {
            "threads": self.tuner.threads,
            "adaptive": self.tuner.fixed is None,
            "how": self.tuner.describe(),
            "wait": pol["wait"],
            "why": pol["why"],
            "usable": self.tuner.usable,
            "peers": len(self.peers),
        }

    def pin_prefix(self, system: str, options: SamplingOptions) -> int:
        """Keep the KV cells of the tokens every request with system message ``system`` starts with
        (rendered as ``options`` say: the common prefix of two renders with different user
        messages) in the prefix cache for good; their count. Continuous batching only."""
        self._live()
        if self._sched is None:
            raise UsageError("pinning a prefix needs continuous batching", fix="load the engine with max_seqs > 1")
        opts = options.replace(system=system)
        a = self.prompt_ids([{"role": "user", "content": "A"}], opts)
        b = self.prompt_ids([{"role": "user", "content": "B"}], opts)
        n = common_prefix(a, b)
        if n < 1:
            raise UsageError("the system prompt renders to no shared prefix", fix="check the system prompt text")
        return self._sched.pin(a[:n])

    def cached_prefix(self, prompt: Prompt, options: SamplingOptions) -> int:
        """Prompt tokens a request admitted now would take from the prefix cache (0 when off)."""
        if self._sched is None:
            return 0
        return self._sched.cached_prefix(self.prompt_ids(prompt, options))

    def seed_step_costs(self, costs: dict[int, float]) -> bool:
        """Prior seconds per scheduler step of r rows (e.g. the plan's profile) for the deadline-aware
        batch cap, until the scheduler has measured them; False without continuous batching."""
        if self._sched is None:
            return False
        self._sched.cost.seed(costs)
        return True

    def batching_stats(self) -> dict | None:
        """Continuous batching counters (steps, shared steps, rows, waiting, ...); None when off."""
        return None if self._sched is None else self._sched.snapshot()

    def score(self, prompt_ids: list[int], continuation_ids: list[int]) -> list[float]:
        """Log-probabilities (raw model distribution, as token events carry) of each token of
        ``continuation_ids`` after ``prompt_ids``, teacher-forced on one sequence, one decode per
        token -- the n=1 path. A batch row's logprobs replayed here agree within float noise."""
        return self.score_detail(prompt_ids, continuation_ids).logprobs

    def score_detail(self, prompt_ids: list[int], continuation_ids: list[int]) -> core.Scored:
        """:meth:`score` plus, per position, the argmax token and the top-1 minus top-2 logit gap."""
        dec = self._live()
        if not prompt_ids or not continuation_ids:
            raise UsageError("score needs a non-empty prompt and continuation", fix="pass token ids for both")
        self.check_fits(len(prompt_ids), 1, len(continuation_ids))
        if self._sched is not None:  # the context is the scheduler's: score between requests, on its thread
            return self._sched.exclusive(lambda: dec.score(list(prompt_ids), list(continuation_ids)))
        return dec.score(list(prompt_ids), list(continuation_ids))

    def next_logprobs(self, prompt_ids: list[int], ids: list[int]) -> list[float]:
        """Log-probabilities of each of ``ids`` as the next token after ``prompt_ids`` (one prefill)."""
        dec = self._live()
        if not prompt_ids or not ids:
            raise UsageError("next_logprobs needs a non-empty prompt and candidate ids", fix="pass token ids for both")
        self.check_fits(len(prompt_ids), 1, 1)
        if self._sched is not None:
            return self._sched.exclusive(lambda: dec.next_logprobs(list(prompt_ids), list(ids)))
        return dec.next_logprobs(list(prompt_ids), list(ids))

    def token_logprobs(self, tokens: list[int], *, n_ctx: int, top_k: int = 0, at_ids=None):
        """Log-probabilities of a text's tokens in llama-perplexity windows of ``n_ctx`` (second half
        of each window scored), with the top-k of each distribution and, optionally, the
        log-probabilities of given ids: :func:`edgekit.engines.llamacpp_logits.window_logprobs`."""
        from edgekit.engines.llamacpp_logits import window_logprobs  # only quality measurement

        dec = self._live()

        def run():
            dec.clear_work()  # sequence 0 is the window's; the kept prompt is gone after it
            try:
                return window_logprobs(
                    dec._ctx,
                    dec._vocab,
                    tokens,
                    n_ctx=n_ctx,
                    top_k=top_k,
                    at_ids=at_ids,
                    interrupted=_raise_if_interrupted,
                )
            finally:
                dec.clear_work()

        return run() if self._sched is None else self._sched.exclusive(run)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._stack.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
