"""Runtime: a loaded model that answers many generate() calls (a daemon may hold one for days)."""

from __future__ import annotations

import statistics
import threading
import time
from typing import Callable, Optional, Sequence, Union

from edgekit.errors import UsageError
from edgekit.models.gguf import arch_is_known, check_gguf
from edgekit.models.store import Progress, resolve
from edgekit.runtime.aggregate import AGGREGATES, Extractor, get_extractor, majority_vote
from edgekit.runtime.backend import Backend, GenerationRequest
from edgekit.runtime.result import Confidence, Result, Sample, Timings
from edgekit.profile.schema import ModelInfo

Messages = Union[str, Sequence[dict]]
Verifier = Callable[[Sample], bool]
MAX_N_CAP = 64


def _quantile(xs: list[float], q: float) -> Optional[float]:
    if not xs:
        return None
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def validate_sampling(max_tokens: int, n: int, temperature: float, top_p: float, max_n: int):
    if not isinstance(max_tokens, int) or max_tokens <= 0:
        raise UsageError(f"token budget must be a positive integer, got {max_tokens!r}", fix="pass --max-tokens 1 or more")
    if not isinstance(n, int) or n <= 0:
        raise UsageError(f"n (samples) must be a positive integer, got {n!r}", fix="pass --n 1 or more")
    if n > max_n:
        raise UsageError(f"n={n} is above the cap of {max_n} parallel samples", fix=f"pass --n {max_n} or less (or raise max_n when creating the Runtime)")
    if temperature < 0:
        raise UsageError(f"temperature must be >= 0, got {temperature}", fix="pass --temperature 0 (greedy) or more")
    if not 0 < top_p <= 1:
        raise UsageError(f"top_p must be in (0, 1], got {top_p}", fix="pass --top-p between 0 and 1")


class Runtime:
    """Load once, generate many times.

    >>> rt = Runtime("qwen2.5-coder-0.5b-instruct")
    >>> r = rt.generate("How many legs do 3 spiders have?", n=8, max_tokens=128, seed=0)
    >>> r.answer, r.confidence.agreement, r.timings.total_s
    """

    def __init__(self, model: str = "qwen2.5-coder-0.5b-instruct", *, threads: Optional[int] = None, n_ctx: int = 8192,
                 max_n: int = 16, gpu_layers: int = 0, flash_attn: Optional[bool] = None, backend: Optional[Backend] = None,
                 progress: Optional[Progress] = None):
        if not 1 <= max_n <= MAX_N_CAP:
            raise UsageError(f"max_n must be in 1..{MAX_N_CAP}, got {max_n}", fix=f"pass max_n between 1 and {MAX_N_CAP}")
        self._lock = threading.Lock()  # one generate at a time on one context
        if backend is not None:
            self.backend = backend
            self.model_info = ModelInfo(id=model)
            self.model_id = model
            self.path = None
        else:
            resolved = resolve(model, progress=progress)
            info = check_gguf(resolved.path)
            self.path = resolved.path
            self.model_id = resolved.id
            self.gguf = info
            self.model_info = ModelInfo(
                id=resolved.id, sha256=resolved.sha256, arch=info.arch, quant=info.quant,
                n_params=resolved.entry.n_params if resolved.entry else None, size_bytes=info.tensor_bytes,
                n_layer=info.n_layer, n_embd=info.n_embd, n_head_kv=info.n_head_kv, n_embd_head=info.head_dim,
                kv_bytes_per_token=info.kv_bytes_per_token(), n_ctx_train=info.arch_key("context_length"),
            )
            from edgekit.runtime.llamacpp import LlamaCppBackend
            from edgekit.errors import GGUFError

            try:
                self.backend = LlamaCppBackend(str(resolved.path), n_ctx=n_ctx, threads=threads, max_n=max_n, gpu_layers=gpu_layers,
                                              flash_attn=flash_attn)
            except GGUFError as e:
                if not arch_is_known(info.arch):
                    raise GGUFError(
                        f"{resolved.path}: architecture {info.arch!r} is not supported by this llama.cpp build",
                        fix="use a supported model (`edgekit models list`) or upgrade llama-cpp-python within the tested range",
                    ) from e
                raise
        self.load_s = self.backend.load_s
        self.max_n = self.backend.info.max_n
        self.calls = 0

    # -- prompt ------------------------------------------------------------------------------
    def prompt_tokens(self, prompt: Messages, chat: bool = True, system: Optional[str] = None) -> list[int]:
        if isinstance(prompt, str):
            if not prompt.strip():
                raise UsageError("empty prompt", fix="pass a non-empty prompt")
            messages = [{"role": "user", "content": prompt}]
        else:
            messages = [dict(m) for m in prompt]
            if not messages or any("role" not in m or "content" not in m for m in messages):
                raise UsageError("chat messages need 'role' and 'content'", fix='pass [{"role": "user", "content": "..."}]')
        if system:
            messages.insert(0, {"role": "system", "content": system})
        if not chat:
            text = "\n".join(str(m["content"]) for m in messages)
            return self.backend.tokenize(text, add_special=True)
        text, has_special = self.backend.render_chat(messages)
        return self.backend.tokenize(text, add_special=not has_special)

    def count_tokens(self, prompt: Messages, chat: bool = True) -> int:
        return len(self.prompt_tokens(prompt, chat=chat))

    # -- generate ----------------------------------------------------------------------------
    def generate(self, prompt: Messages, *, max_tokens: int = 256, n: int = 1, temperature: float = 0.8,
                 top_p: float = 0.95, top_k: int = 40, min_p: float = 0.05, seed: Optional[int] = None,
                 stop: Optional[Sequence[str]] = None, aggregate: str = "majority",
                 extractor: Union[str, Extractor, None] = "number", verifier: Optional[Verifier] = None,
                 chat: bool = True, system: Optional[str] = None, logprobs: bool = True,
                 prompt_tokens: Optional[list[int]] = None, deadline_s: Optional[float] = None,
                 ignore_eos: bool = False) -> Result:
        """Draw n samples in one batch and aggregate them.

        aggregate: "majority" (vote over extracted answers), "first_verified" (the first sample
        to finish that ``verifier`` accepts; the rest of the batch is cancelled), "none".
        deadline_s: wall-clock seconds from the call's start after which the batch is cancelled
        (finished samples are kept; the result is flagged "deadline").
        """
        t_start = time.perf_counter()
        validate_sampling(max_tokens, n, temperature, top_p, self.max_n)
        if aggregate not in AGGREGATES:
            raise UsageError(f"unknown aggregate {aggregate!r}", fix=f"use one of {', '.join(AGGREGATES)}")
        if aggregate == "first_verified" and verifier is None:
            raise UsageError("aggregate='first_verified' needs a verifier", fix="pass verifier=callable(sample) -> bool")
        extract = get_extractor(extractor)
        stops = [s for s in (stop or []) if s]
        with self._lock:
            toks = prompt_tokens if prompt_tokens is not None else self.prompt_tokens(prompt, chat=chat, system=system)
            self.backend.check_fits(len(toks), n, max_tokens)
            state = {"verified": None, "deadline": False}

            def cancel() -> bool:
                if state["verified"] is not None:
                    return True
                if deadline_s is not None and time.perf_counter() - t_start > deadline_s:
                    state["deadline"] = True
                    return True
                return False

            req = GenerationRequest(prompt_tokens=list(toks), n=n, max_tokens=max_tokens, temperature=temperature,
                                    top_p=top_p, top_k=top_k, min_p=min_p, seed=seed, stop=stops, logprobs=logprobs,
                                    cancel=cancel, ignore_eos=ignore_eos)
            ids: list[list[int]] = [[] for _ in range(n)]
            lps: list[list[float]] = [[] for _ in range(n)]
            samples: list[Optional[Sample]] = [None] * n
            t_prefill_done = t_first = None
            for ev in self.backend.stream(req):
                if ev.kind == "token":
                    if t_first is None:
                        t_first = time.perf_counter()
                    ids[ev.seq].append(ev.token)
                    if ev.logprob is not None:
                        lps[ev.seq].append(ev.logprob)
                elif ev.kind == "finish":
                    if t_first is None:
                        t_first = time.perf_counter()
                    s = Sample(index=ev.seq, text=ev.text, tokens=ev.tokens, finish_reason=ev.reason,
                               token_ids=ids[ev.seq], logprobs=lps[ev.seq])
                    if ev.reason == "stop":  # truncated samples carry no answer (same rule as the accuracy tables)
                        s.answer = extract(s.text) if aggregate != "none" or extractor else None
                    if ev.reason != "cancelled":
                        if aggregate == "first_verified" and state["verified"] is None:
                            s.verified = bool(verifier(s))
                            if s.verified:
                                state["verified"] = ev.seq
                    samples[ev.seq] = s
                elif ev.kind == "prefill":
                    t_prefill_done = time.perf_counter()
            t_end = time.perf_counter()
            self.calls += 1
        done = [s for s in samples if s is not None]
        steps = max((s.tokens for s in done), default=0)
        gen = sum(s.tokens for s in done)
        t_first = t_first or t_end
        timings = Timings(
            load_s=self.load_s, prefill_s=t_first - t_start, decode_s=t_end - t_first, total_s=t_end - t_start,
            prompt_tokens=len(toks), generated_tokens=gen, steps=steps,
            prefill_tok_s=len(toks) / (t_prefill_done - t_start) if t_prefill_done and t_prefill_done > t_start else None,
            decode_tok_s=(gen - len(done)) / (t_end - t_first) if t_end > t_first and gen > len(done) else None,
        )
        res = self._aggregate(done, aggregate, seed)
        res.timings = timings
        res.n, res.max_tokens, res.temperature, res.seed = n, max_tokens, temperature, seed
        if state["deadline"]:
            res.flags.append("deadline")
        return res

    def _aggregate(self, samples: list[Sample], aggregate: str, seed: Optional[int]) -> Result:
        n = len(samples)
        conf = Confidence(n=n)
        answer = text = None
        chosen: list[Sample] = []
        if aggregate == "majority":
            winner, votes, tied = majority_vote([s.answer for s in samples if s.finish_reason != "cancelled"], seed)
            answer = winner
            conf.votes = votes
            conf.tied = tied if len(tied) > 1 else []
            chosen = [s for s in samples if winner is not None and s.answer == winner]
        elif aggregate == "first_verified":
            ok = [s for s in samples if s.verified]
            conf.verified = bool(ok)
            if ok:
                chosen = [ok[0]]
                answer = ok[0].answer if ok[0].answer is not None else ok[0].text
                conf.votes = 1
        else:  # none: the first sample
            if samples:
                chosen = [min(samples, key=lambda s: s.index)]
                answer = chosen[0].answer if chosen[0].answer is not None else chosen[0].text
                conf.votes = sum(1 for s in samples if s.answer is not None and s.answer == chosen[0].answer) if chosen[0].answer else 1
        if chosen:
            text = chosen[0].text
            toks = [lp for s in chosen for lp in s.logprobs]
            if toks:
                conf.mean_logprob = statistics.fmean(toks)
                conf.low_logprob = _quantile(toks, 0.10)
        conf.vote_share = conf.votes / n if n else None
        flags = []
        if samples and any(s.finish_reason == "budget" for s in samples):
            k = sum(s.finish_reason == "budget" for s in samples)
            flags.append(f"budget: {k}/{n} sample(s) hit max_tokens before finishing (no answer taken from them)")
        if aggregate == "first_verified" and not conf.verified:
            flags.append("unverified")
        return Result(model=self.model_id, answer=answer, text=text, aggregate=aggregate,
                      samples=sorted(samples, key=lambda s: s.index), confidence=conf, timings=Timings(),
                      n=n, max_tokens=0, temperature=0.0, flags=flags)

    def close(self):
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
