"""The token-level batched decoder behind :class:`edgekit.engines.llamacpp.LlamaCppEngine`.

Private to the llama.cpp engine: nothing outside ``edgekit.engines.llamacpp`` imports it.
"""

from __future__ import annotations

import codecs
import ctypes
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from edgekit.engines.base import Cancel, Event
from edgekit.errors import BackendError
from edgekit.host.threads import apply_before_load
from edgekit.schemas.options import SamplingOptions

apply_before_load()  # OpenMP reads its wait policy once, when llama.cpp's library loads: before the import
try:
    import llama_cpp as ll
except ImportError as e:  # pragma: no cover - install problem
    raise BackendError("llama-cpp-python is not installed", fix='pip install "llama-cpp-python>=0.3.36,<0.4"') from e

_REQUIRED = [
    "llama_memory_clear",
    "llama_memory_seq_cp",
    "llama_memory_seq_rm",
    "llama_get_memory",
    "llama_batch_init",
    "llama_decode",
    "llama_sampler_chain_init",
    "llama_sampler_sample",
    "llama_model_load_from_file",
    "llama_init_from_model",
    "llama_model_get_vocab",
    "llama_vocab_is_eog",
    "llama_get_logits_ith",
    "llama_sampler_init_grammar",
    "llama_sampler_apply",
    "llama_sampler_accept",
    "llama_get_logits",
]
_missing = [f for f in _REQUIRED if not hasattr(ll, f)]
if _missing:  # the KV-cache API was renamed twice; fail clearly rather than mid-decode
    raise BackendError(
        f"llama-cpp-python {getattr(ll, '__version__', '?')} lacks {', '.join(_missing)}",
        fix='install a tested version: pip install "llama-cpp-python>=0.3.36,<0.4"',
    )

from edgekit.engines.llamacpp_sample import BlockSampler, RowSampler  # noqa: E402 - after the version check


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    x, y = np.asarray(a[:n]), np.asarray(b[:n])
    diff = np.flatnonzero(x != y)
    return int(diff[0]) if len(diff) else n


def build_kind() -> str:
    info = ll.llama_print_system_info().decode(errors="replace").upper()
    for k in ("CUDA", "METAL", "VULKAN", "HIP", "SYCL"):
        if f"{k} :" in info or f"{k} =" in info or k in info.split(" | ")[0]:
            return k.lower()
    return "gpu" if ll.llama_supports_gpu_offload() else "cpu"


def sample_seeds(seed: int | None, n: int) -> list[int]:
    """Independent 32-bit seeds for n samples: numpy SeedSequence spawn, so seed s and s+1 share
    no sample stream (``seed + i`` would shift n-1 streams by one)."""
    if seed is None:
        return [ll.LLAMA_DEFAULT_SEED] * n  # llama.cpp draws a random seed per sampler
    return [int(c.generate_state(1, np.uint32)[0]) for c in np.random.SeedSequence(seed).spawn(n)]


@dataclass
class Scored:
    """Per continuation token: logprob (raw logits), argmax token id, top-1 minus top-2 logit."""

    logprobs: list[float]
    argmax: list[int]
    gaps: list[float]


class Row:
    """One sample's text state while it decodes: UTF-8 pieces, stop strings, budget, last token.

    Shared by :class:`BatchDecoder` (one request) and the continuous-batching scheduler (rows of
    many requests in one batch): ``index`` is the sample's number in its request, ``seq`` its
    llama.cpp sequence id."""

    __slots__ = ("index", "seq", "o", "dec", "text", "count", "last", "max_stop", "bidx")

    def __init__(self, index: int, seq: int, o: SamplingOptions):
        self.index, self.seq, self.o = index, seq, o
        self.dec = codecs.getincrementaldecoder("utf-8")("replace")
        self.text, self.count, self.last = "", 0, -1
        self.bidx = -1  # this row's logits row (output index) in the last decode
        self.max_stop = max((len(x) for x in o.stop), default=0)

    def accept(self, t: int, logprob: float | None, d: BatchDecoder, out: list, scores=None) -> bool:
        """Take sampled token ``t``: append its events to ``out``; False when the sample finished."""
        o = self.o
        if not o.ignore_eos and ll.llama_vocab_is_eog(d._vocab, t):
            self.text += self.dec.decode(b"", final=True)
            out.append(Event("finish", seq=self.index, text=self.text, reason="stop", tokens=self.count))
            return False
        self.count += 1
        self.last = t
        piece = self.dec.decode(d.piece(t))
        self.text += piece
        ev = Event("token", seq=self.index, token=t, text=piece, logprob=logprob)
        if scores is not None:
            ev.logprob_allowed, ev.conf = scores
            ev.scored = True
        out.append(ev)
        if self.max_stop:
            # only the new piece (and the stop-length tail before it) can complete a stop string; cut at its
            # FIRST occurrence there: a piece like "\n\n" holds the stop "\n" twice, and cutting at the last
            # one would leave the first in the text
            start = max(0, len(self.text) - len(piece) - self.max_stop + 1)
            at = [i for i in (self.text.find(x, start) for x in o.stop) if i >= 0]
            if at:
                cut = min(at)
                out.append(Event("finish", seq=self.index, text=self.text[:cut], reason="stop", tokens=self.count))
                return False
        if self.count >= o.max_tokens:
            self.text += self.dec.decode(b"", final=True)
            out.append(Event("finish", seq=self.index, text=self.text, reason="budget", tokens=self.count))
            return False
        return True

    def cancelled(self, **kw) -> Event:
        return Event("finish", seq=self.index, text=self.text, reason="cancelled", tokens=self.count, **kw)


class BatchDecoder:
    def __init__(self, model, ctx, *, max_n: int, n_batch: int, interrupted: Callable[[], None]):
        self._model, self._ctx = model, ctx
        self._interrupted = interrupted
        self._vocab = ll.llama_model_get_vocab(model)
        self._n_vocab = ll.llama_vocab_n_tokens(self._vocab)
        self._mem = ll.llama_get_memory(ctx)
        self.n_ctx = ll.llama_n_ctx(ctx)
        self.n_batch = n_batch
        self.max_n = max_n
        self._cap = max(n_batch, max_n)
        self._batch = ll.llama_batch_init(self._cap, 0, 1)
        b = self._batch
        self._tok = np.ctypeslib.as_array(b.token, shape=(self._cap,))
        self._pos = np.ctypeslib.as_array(b.pos, shape=(self._cap,))
        self._nseq = np.ctypeslib.as_array(b.n_seq_id, shape=(self._cap,))
        self._want = np.ctypeslib.as_array(b.logits, shape=(self._cap,))
        self._nseq[:] = 1
        self._piece_buf = ctypes.create_string_buffer(256)
        self.sampling = BlockSampler(self._n_vocab, self._vocab)
        self._chat_fmt = None  # the GGUF's chat template, compiled on first use (jinja2, ~30 ms)
        self.tuner = None  # edgekit.host.load.ThreadTuner: re-sizes the thread pool between decodes
        self.prefill_tokens = 0  # prompt tokens decoded by stream() since load (a test counts them)
        self.regrow_tokens = 0  # prompt-last tokens decoded again for samples that joined late (adaptive)
        self.reuse_min = 0  # single-request path: reuse the last prompt's cells when >= this many match (0: off)
        self.reused_tokens = 0  # prompt tokens not prefilled thanks to that (since load)
        self.last_reused = 0  # ... by the last prefill
        self._kept: list[int] = []  # the prompt whose cells sequence 0 holds

    def free(self) -> None:
        if self._batch is not None:
            ll.llama_batch_free(self._batch)
            self._batch = None

    # -- text ------------------------------------------------------------------------------
    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 16
        buf = (ll.llama_token * cap)()
        n = ll.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, True)
        if n < 0:
            cap = -n
            buf = (ll.llama_token * cap)()
            n = ll.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, True)
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        n = ll.llama_token_to_piece(self._vocab, token, self._piece_buf, 256, 0, False)
        if n < 0:
            big = ctypes.create_string_buffer(-n)
            n = ll.llama_token_to_piece(self._vocab, token, big, -n, 0, False)
            return big.raw[:n]
        return self._piece_buf.raw[:n]

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", errors="replace")

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1 << 16)
        n = ll.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            ll.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    def _token_text(self, tok: int) -> str:
        return "" if tok < 0 else ll.llama_vocab_get_text(self._vocab, tok).decode("utf-8", errors="replace")

    def render_chat(self, messages: list[dict]) -> tuple[str, bool]:
        """(prompt text, whether it already holds the BOS/special prefix)."""
        tmpl = self.meta("tokenizer.chat_template")
        if not tmpl:  # base model: no template in the GGUF, the messages are the raw prompt
            if len(messages) == 1 and messages[0].get("role") == "user":
                return str(messages[0]["content"]), False
            return "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:", False
        fmt = self._chat_fmt
        if fmt is None:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter  # jinja2 only when templating

            fmt = self._chat_fmt = Jinja2ChatFormatter(
                template=tmpl,
                eos_token=self._token_text(ll.llama_vocab_eos(self._vocab)),
                bos_token=self._token_text(ll.llama_vocab_bos(self._vocab)),
            )
        r = fmt(messages=messages)
        return r.prompt, bool(getattr(r, "added_special", False))

    # -- generation ------------------------------------------------------------------------
    def _sampler(self, o: SamplingOptions, seed: int, grammar: str | None) -> RowSampler:
        return RowSampler(self._vocab, o, seed, grammar)

    def _decode(self, k: int) -> None:
        if self.tuner is not None:
            self.tuner.check()
        self._batch.n_tokens = k
        rc = ll.llama_decode(self._ctx, self._batch)
        self._interrupted()
        if rc != 0:
            raise BackendError(
                f"llama_decode failed (code {rc}) on a batch of {k} tokens",
                fix="lower n or --max-tokens, or raise --ctx",
            )

    def warm_up(self, grammar: bool = False) -> None:
        """One throw-away decode right after loading (llama.cpp's own tools do the same): it pages
        the mapped weights in and starts the thread pool, so the first request costs what later
        ones do. Measured here (Qwen2.5-Coder-0.5B, 2-core EPYC): without it the first short
        request took 0.34-0.87 s against 0.32 s for the next ones. The cost lands in load time.
        ``grammar``: also build the grammar pre-filter's token classes (0.5 s for Qwen2.5's
        vocabulary), so the first constrained request does not pay for them."""
        if grammar:
            self.sampling.prefix_classes()
        bos = ll.llama_vocab_bos(self._vocab)
        eos = ll.llama_vocab_eos(self._vocab)
        toks = [t for t in (bos, eos) if t >= 0] or [0]
        self._prefill(toks, None)
        ll.llama_synchronize(self._ctx)
        ll.llama_memory_clear(self._mem, True)
        self._kept = []

    def _prefill(self, prompt: list[int], cancel: Cancel | None, seq: int = 0, first: int = 0) -> bool:
        """Decode ``prompt[first:]`` (positions ``first``..) on sequence ``seq`` in n_batch chunks,
        logits for its last token only. ``cancel`` (a deadline) is polled between chunks; False
        when it ended the prefill."""
        P, seq_id = len(prompt), self._batch.seq_id
        for start in range(first, P, self.n_batch):
            if start > first and cancel is not None and cancel():
                return False
            chunk = prompt[start : start + self.n_batch]
            k = len(chunk)
            self._tok[:k] = chunk
            self._pos[:k] = np.arange(start, start + k)
            self._want[:k] = 0
            for i in range(k):
                seq_id[i][0] = seq
            if start + k == P:
                self._want[k - 1] = 1
            self._decode(k)
        return True

    def prefill_on(self, ids: list[int], seq: int) -> None:
        """Decode ``ids`` from position 0 on sequence ``seq`` (the prefix cache's entries)."""
        self._prefill(ids, None, seq=seq)

    def _drop_seqs(self, first: int) -> None:
        """Sequence 0's cells from position ``first`` on and every cell of sequences 1 .. max_n-1 go."""
        ll.llama_memory_seq_rm(self._mem, 0, first, -1)
        for s in range(1, self.max_n):
            ll.llama_memory_seq_rm(self._mem, s, -1, -1)

    def clear_work(self) -> None:
        """Empty the request sequences (0 .. max_n-1) and forget the kept prompt; sequences above
        (the scheduler's prefix cache) keep their cells."""
        self._drop_seqs(0)
        self._kept = []

    def _prefill_reusing(self, prompt: list[int], cancel: Cancel | None) -> bool:
        """:meth:`_prefill` on sequence 0, reusing the cells of the prompt kept from the last call
        where the two share at least ``reuse_min`` tokens (``reuse_min`` 0: never); the last token
        is always decoded (its logits start the samples)."""
        keep = 0
        if self.reuse_min and self._kept:
            keep = min(common_prefix(self._kept, prompt), len(prompt) - 1)
            keep = keep if keep >= self.reuse_min else 0
        if keep:
            self._drop_seqs(keep)
        else:
            ll.llama_memory_clear(self._mem, True)
        self._kept = []
        self.reused_tokens += keep
        self.last_reused = keep
        if not self._prefill(prompt, cancel, first=keep):
            ll.llama_memory_clear(self._mem, True)
            return False
        self._kept = list(prompt)
        return True

    def _keep_prompt(self, P: int) -> None:
        """After a request: sequence 0 keeps the prompt's cells (the next prompt may share them),
        every generated cell and the other sequences go."""
        if self.reuse_min and self._kept:
            self._drop_seqs(P)
        else:
            ll.llama_memory_clear(self._mem, True)
            self._kept = []

    def stream(
        self,
        prompt: list[int],
        o: SamplingOptions,
        grammar: str | None,
        cancel: Cancel | None,
        grow: Callable[[], int] | None = None,
    ) -> Iterator[Event]:
        n, P = o.n, len(prompt)
        mem, seq_id = self._mem, self._batch.seq_id
        samplers: list = []
        ok = False
        try:
            for seed in sample_seeds(o.seed, n):
                samplers.append(self._sampler(o, seed, grammar))
            # 1. prompt, once, on sequence 0 (from the kept prompt's cells where they match); logits for its last token
            if not self._prefill_reusing(prompt, cancel):
                for s in range(n):
                    yield Event("finish", seq=s, text="", reason="cancelled", tokens=0)
                return
            for s in range(1, n):  # share the prompt's cells (unified KV: no copy of data)
                ll.llama_memory_seq_cp(mem, 0, s, -1, -1)
            yield Event("prefill", prompt_tokens=P, cached_tokens=self.last_reused)
            self.prefill_tokens += P
            yield from self._steps(prompt, n, o, samplers, cancel, grow, seq_id)
            ok = True
        finally:
            for smp in samplers:
                smp.free()
            if ok:
                self._keep_prompt(P)
            else:  # failed or abandoned midway: nothing kept
                ll.llama_memory_clear(mem, True)
                self._kept = []

    def sample(self, rows: list, samplers: list, n_out: int, want_lp: bool) -> list:
        """(token, logprob or None, token scores or None) for every row from the last decode's
        ``n_out`` logits rows; ``row.bidx`` is the row's logits row, ``samplers[i]`` row i's
        :class:`RowSampler`. With logprobs, the scores are (log-probability over the tokens the
        grammar allowed, DeepConf token confidence over ``row.o.conf_top_k`` tokens, None when 0)."""
        smp = self.sampling
        smp.new_step()
        block = smp.block(self._ctx, n_out)
        m = block.max(axis=1)
        lse = smp.lse(block, m) if want_lp else None
        out = []
        sc: list = []
        for r, rs in zip(rows, samplers):
            b = r.bidx
            row = block[b]
            want = lse is not None and r.o.logprobs
            t = smp.pick(rs, row, float(m[b]), (float(lse[b]), r.o.conf_top_k, sc) if want else None)
            out.append((t, float(row[t] - lse[b]) if lse is not None else None, sc.pop() if want else None))
        return out

    def _steps(self, prompt, n, o: SamplingOptions, samplers, cancel, grow, seq_id) -> Iterator[Event]:
        P = len(prompt)
        rows = [Row(s, s, o) for s in range(n)]
        for r in rows:
            r.bidx = 0  # first step: every sequence reads the prompt's last (only) logits row
        started = n if grow is None else max(1, min(n, grow()))
        live, n_out = rows[:started], 1
        out: list[Event] = []
        tok, pos, want = self._tok, self._pos, self._want
        while live:
            # 2. sample one token for every live sequence from the last decode's logits
            picks = self.sample(live, [samplers[r.index] for r in live], n_out, o.logprobs)
            still = [r for r, (t, lp, sc) in zip(live, picks) if r.accept(t, lp, self, out, sc)]
            yield from out
            out.clear()
            live = still
            if not live and started >= n:
                break
            if cancel is not None and cancel():
                for r in live + rows[started:]:
                    yield r.cancelled()
                break
            more = rows[started : max(started, min(n, grow()))] if grow is not None else []
            if not live and not more:
                if started < n:  # nothing running and nothing asked for: the rest never start
                    for r in rows[started:]:
                        yield r.cancelled()
                break
            # 3. one decode for all live sequences; batch row j holds live sequence j's logits
            for j, r in enumerate(live):
                tok[j] = r.last
                pos[j] = P + r.count - 1
                seq_id[j][0] = r.seq
                want[j] = 1
                r.bidx = j
            j = len(live)
            for r in more:  # samples joining late: their sequence holds the prompt's cells (copied at prefill);
                # its last cell is decoded again, alone, for the logits their first token is sampled from
                ll.llama_memory_seq_rm(self._mem, r.seq, P - 1, -1)
                tok[j], pos[j], want[j] = prompt[-1], P - 1, 1
                seq_id[j][0] = r.seq
                r.bidx = j
                j += 1
            self.regrow_tokens += len(more)
            started += len(more)
            live = live + more
            n_out = j
            self._decode(n_out)

    # -- teacher-forced scoring (one sequence) ----------------------------------------------
    def next_logprobs(self, prompt: list[int], ids: list[int]) -> list[float]:
        """Log-probabilities (raw logits) of each of ``ids`` as the token after ``prompt``: one
        prefill on one sequence (P(True) self-check)."""
        nv = self._n_vocab
        ok = False
        try:  # the question's prefix is the answered prompt's: its cells are reused where kept
            if not self._prefill_reusing(prompt, None):
                raise BackendError("the self-check prefill was interrupted", fix="retry")
            row = np.ctypeslib.as_array(ll.llama_get_logits_ith(self._ctx, -1), shape=(nv,)).astype(np.float64)
            ok = True
        finally:
            if ok:
                self._keep_prompt(len(prompt))
            else:
                self.clear_work()
        m = row.max()
        lse = m + np.log(np.exp(row - m).sum())
        return [float(row[i] - lse) for i in ids]

    def score(self, prompt: list[int], continuation: list[int]) -> Scored:
        """Replay ``continuation`` after ``prompt`` on one sequence, one token per decode (the
        n=1 generation path, forced instead of sampled): per continuation token, its logprob
        under the raw logits, the argmax token and the top-1 minus top-2 logit gap there."""
        seq_id = self._batch.seq_id
        P, nv = len(prompt), self._n_vocab
        out = Scored([], [], [])

        def read() -> np.ndarray:
            return np.ctypeslib.as_array(ll.llama_get_logits_ith(self._ctx, -1), shape=(nv,))

        def record(row: np.ndarray, tok: int) -> None:
            m = row.max()
            lse = m + np.log(np.exp(row - m).sum())
            top2 = np.partition(row, nv - 2)[nv - 2 :]
            out.logprobs.append(float(row[tok] - lse))
            out.argmax.append(int(row.argmax()))
            out.gaps.append(float(top2.max() - top2.min()))

        self.clear_work()
        try:
            self._prefill(prompt, None)
            for j, tok in enumerate(continuation):
                record(read(), tok)
                if j + 1 == len(continuation):
                    break
                self._tok[0], self._pos[0], self._want[0] = tok, P + j, 1
                seq_id[0][0] = 0
                self._decode(1)
        finally:
            self.clear_work()
        return out
