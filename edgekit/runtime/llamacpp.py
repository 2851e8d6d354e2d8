"""llama.cpp backend through llama-cpp-python's low-level API.

The performance core: the prompt is evaluated once (sequence 0), its KV cells are shared with
sequences 1..n-1 (``llama_memory_seq_cp`` on a unified KV cache), then every step decodes one
token for every live sequence in a single ``llama_decode``. Each sequence samples with its own
native llama.cpp sampler chain (top-k, top-p, min-p, temperature, seeded dist) -- no Python
softmax over the vocabulary. Finished sequences leave the batch. The chosen token's logprob is
read from the raw logits (one vectorised log-sum-exp per step over the live rows).
"""

from __future__ import annotations

import codecs
import ctypes
import os
import time
from typing import Iterator, Optional

import numpy as np

from edgekit.errors import BackendError, ContextOverflow, GGUFError, UsageError
from edgekit.runtime.backend import Backend, BackendInfo, Event, GenerationRequest

try:
    import llama_cpp as _ll
except ImportError as e:  # pragma: no cover - install problem
    raise BackendError("llama-cpp-python is not installed", fix='pip install "llama-cpp-python>=0.3.36,<0.4"') from e

_REQUIRED = [
    "llama_memory_clear", "llama_memory_seq_cp", "llama_get_memory", "llama_batch_init", "llama_decode",
    "llama_sampler_chain_init", "llama_sampler_sample", "llama_model_load_from_file", "llama_init_from_model",
    "llama_model_get_vocab", "llama_vocab_is_eog", "llama_get_logits_ith",
]
_missing = [f for f in _REQUIRED if not hasattr(_ll, f)]
if _missing:  # the KV-cache API was renamed twice; fail clearly rather than mid-decode
    raise BackendError(
        f"llama-cpp-python {getattr(_ll, '__version__', '?')} lacks {', '.join(_missing)}",
        fix='install a tested version: pip install "llama-cpp-python>=0.3.36,<0.4"',
    )

_backend_ready = False


def _init_backend():
    global _backend_ready
    if not _backend_ready:
        if not os.environ.get("EDGEKIT_DEBUG"):
            _ll.llama_log_set(_SILENT, ctypes.c_void_p(0))
        _ll.llama_backend_init()
        _backend_ready = True


@_ll.llama_log_callback
def _SILENT(level, text, user_data):  # noqa: N802 - ctypes callback
    return None


def default_threads() -> int:
    try:
        import psutil

        return max(1, psutil.cpu_count(logical=False) or os.cpu_count() or 1)
    except Exception:
        return max(1, os.cpu_count() or 1)


def build_kind() -> str:
    info = _ll.llama_print_system_info().decode(errors="replace").upper()
    for k in ("CUDA", "METAL", "VULKAN", "HIP", "SYCL"):
        if f"{k} :" in info or f"{k} =" in info or k in info.split(" | ")[0]:
            return k.lower()
    return "gpu" if _ll.llama_supports_gpu_offload() else "cpu"


class LlamaCppBackend(Backend):
    def __init__(self, path: str, *, n_ctx: int = 8192, threads: Optional[int] = None, max_n: int = 16,
                 n_batch: int = 512, gpu_layers: int = 0, flash_attn: Optional[bool] = None):
        _init_backend()
        self._model = self._ctx = None
        self._batch = None
        self.path = str(path)
        threads = threads or default_threads()
        t0 = time.perf_counter()
        mp = _ll.llama_model_default_params()
        mp.n_gpu_layers = gpu_layers
        model = _ll.llama_model_load_from_file(self.path.encode(), mp)
        if not model:
            raise GGUFError(
                f"llama.cpp could not load {self.path} (unsupported architecture or corrupt tensors)",
                fix="use a model llama.cpp supports (`edgekit models list`); EDGEKIT_DEBUG=1 shows llama.cpp's log",
            )
        self._model = model
        cp = _ll.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = n_batch
        cp.n_ubatch = n_batch
        cp.n_seq_max = max_n
        cp.n_threads = threads
        cp.n_threads_batch = threads
        cp.kv_unified = True  # the prompt's KV cells are shared by all n sequences
        if flash_attn is None:  # measured on a 2-core x86 CPU: FA off decodes 10-25 % faster there
            flash_attn = None if _ll.llama_supports_gpu_offload() and gpu_layers else False
        if flash_attn is not None:
            cp.flash_attn_type = 1 if flash_attn else 0
        ctx = _ll.llama_init_from_model(model, cp)
        if not ctx:
            self.close()
            raise BackendError(f"llama.cpp could not create a context of {n_ctx} tokens", fix="lower --ctx or free memory")
        self._ctx = ctx
        self.load_s = time.perf_counter() - t0
        self._vocab = _ll.llama_model_get_vocab(model)
        self._n_vocab = _ll.llama_vocab_n_tokens(self._vocab)
        self._mem = _ll.llama_get_memory(ctx)
        self.n_batch = n_batch
        self._cap = max(n_batch, max_n)
        self._batch = _ll.llama_batch_init(self._cap, 0, 1)
        b = self._batch
        self._tok = np.ctypeslib.as_array(b.token, shape=(self._cap,))
        self._pos = np.ctypeslib.as_array(b.pos, shape=(self._cap,))
        self._nseq = np.ctypeslib.as_array(b.n_seq_id, shape=(self._cap,))
        self._want = np.ctypeslib.as_array(b.logits, shape=(self._cap,))
        self._nseq[:] = 1
        self._piece_buf = ctypes.create_string_buffer(256)
        self.info = BackendInfo(
            name="llama.cpp", version=getattr(_ll, "__version__", "?"), n_ctx=_ll.llama_n_ctx(ctx), max_n=max_n,
            threads=threads, build=build_kind(), gpu_layers=gpu_layers,
        )

    # -- text ------------------------------------------------------------------------------
    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 16
        buf = (_ll.llama_token * cap)()
        n = _ll.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, True)
        if n < 0:
            cap = -n
            buf = (_ll.llama_token * cap)()
            n = _ll.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, True)
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        n = _ll.llama_token_to_piece(self._vocab, token, self._piece_buf, 256, 0, False)
        if n < 0:
            big = ctypes.create_string_buffer(-n)
            n = _ll.llama_token_to_piece(self._vocab, token, big, -n, 0, False)
            return big.raw[:n]
        return self._piece_buf.raw[:n]

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", errors="replace")

    def meta(self, key: str) -> Optional[str]:
        buf = ctypes.create_string_buffer(1 << 16)
        n = _ll.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            _ll.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    def chat_template(self) -> Optional[str]:
        return self.meta("tokenizer.chat_template")

    def _token_text(self, tok: int) -> str:
        if tok < 0:
            return ""
        return _ll.llama_vocab_get_text(self._vocab, tok).decode("utf-8", errors="replace")

    def render_chat(self, messages: list[dict]) -> tuple[str, bool]:
        tmpl = self.chat_template()
        if not tmpl:  # base model: no template in the GGUF, the messages are the raw prompt
            if len(messages) == 1 and messages[0].get("role") == "user":
                return str(messages[0]["content"]), False
            lines = [f"{m['role']}: {m['content']}" for m in messages]
            return "\n".join(lines) + "\nassistant:", False
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        fmt = Jinja2ChatFormatter(
            template=tmpl,
            eos_token=self._token_text(_ll.llama_vocab_eos(self._vocab)),
            bos_token=self._token_text(_ll.llama_vocab_bos(self._vocab)),
        )
        r = fmt(messages=messages)
        return r.prompt, bool(getattr(r, "added_special", False))

    # -- generation ------------------------------------------------------------------------
    def _sampler(self, req: GenerationRequest, i: int):
        params = _ll.llama_sampler_chain_default_params()
        params.no_perf = True
        chain = _ll.llama_sampler_chain_init(params)
        add = lambda s: _ll.llama_sampler_chain_add(chain, s)  # noqa: E731
        if req.temperature <= 0:
            add(_ll.llama_sampler_init_greedy())
            return chain
        if req.top_k > 0:
            add(_ll.llama_sampler_init_top_k(req.top_k))
        if req.top_p < 1.0:
            add(_ll.llama_sampler_init_top_p(req.top_p, 1))
        if req.min_p > 0:
            add(_ll.llama_sampler_init_min_p(req.min_p, 1))
        add(_ll.llama_sampler_init_temp(req.temperature))
        seed = (req.seed + i) & 0xFFFFFFFF if req.seed is not None else _ll.LLAMA_DEFAULT_SEED
        add(_ll.llama_sampler_init_dist(seed))
        return chain

    def _decode(self, k: int):
        self._batch.n_tokens = k
        rc = _ll.llama_decode(self._ctx, self._batch)
        if rc != 0:
            raise BackendError(f"llama_decode failed (code {rc}) on a batch of {k} tokens", fix="lower n or --max-tokens, or raise --ctx")

    def check_fits(self, n_prompt: int, n: int, max_tokens: int):
        need = n_prompt + n * max_tokens
        if need > self.info.n_ctx:
            raise ContextOverflow(
                f"prompt ({n_prompt} tokens) + {n} samples x {max_tokens}-token budget = {need} tokens exceeds the context of {self.info.n_ctx}",
                fix=f"lower --max-tokens or --n, shorten the prompt, or raise the context (ctx >= {need})",
            )

    def stream(self, req: GenerationRequest) -> Iterator[Event]:
        n, P = req.n, len(req.prompt_tokens)
        if P == 0:
            raise UsageError("empty prompt", fix="pass a non-empty prompt")
        if n > self.info.max_n:
            raise UsageError(f"n={n} exceeds this runtime's max_n={self.info.max_n}", fix=f"use --n <= {self.info.max_n} or a Runtime with a larger max_n")
        self.check_fits(P, n, req.max_tokens)
        ll, ctx, vocab, mem = _ll, self._ctx, self._vocab, self._mem
        ll.llama_memory_clear(mem, True)
        samplers = [self._sampler(req, i) for i in range(n)]
        seq_id = self._batch.seq_id
        try:
            # 1. prompt, once, on sequence 0; logits for its last token only
            for start in range(0, P, self.n_batch):
                chunk = req.prompt_tokens[start : start + self.n_batch]
                k = len(chunk)
                self._tok[:k] = chunk
                self._pos[:k] = np.arange(start, start + k)
                self._want[:k] = 0
                for i in range(k):
                    seq_id[i][0] = 0
                if start + k == P:
                    self._want[k - 1] = 1
                self._decode(k)
            for s in range(1, n):  # share the prompt's cells (unified KV: no copy of data)
                ll.llama_memory_seq_cp(mem, 0, s, -1, -1)
            yield Event("prefill")
            live = list(range(n))
            idx = {s: -1 for s in live}  # logits row per sequence: first the prompt's last (only) output row
            decoders = [codecs.getincrementaldecoder("utf-8")("replace") for _ in range(n)]
            texts = [""] * n
            counts = [0] * n
            max_stop = max((len(s) for s in req.stop), default=0)
            while live:
                # 2. sample one token for every live sequence from the last decode's logits
                toks = {}
                for s in live:
                    toks[s] = ll.llama_sampler_sample(samplers[s], ctx, idx[s])
                lps = self._logprobs(live, idx, toks) if req.logprobs else {}
                still = []
                for s in live:
                    t = toks[s]
                    if not req.ignore_eos and ll.llama_vocab_is_eog(vocab, t):
                        texts[s] += decoders[s].decode(b"", final=True)
                        yield Event("finish", seq=s, text=texts[s], reason="stop", tokens=counts[s])
                        continue
                    counts[s] += 1
                    piece = decoders[s].decode(self.piece(t))
                    texts[s] += piece
                    yield Event("token", seq=s, token=t, text=piece, logprob=lps.get(s))
                    if max_stop:
                        tail = texts[s][-(max_stop + len(piece) + 1):]
                        hit = [x for x in req.stop if x in tail]
                        if hit:
                            cut = min(texts[s].rfind(x) for x in hit)
                            yield Event("finish", seq=s, text=texts[s][:cut], reason="stop", tokens=counts[s])
                            continue
                    if counts[s] >= req.max_tokens:
                        texts[s] += decoders[s].decode(b"", final=True)
                        yield Event("finish", seq=s, text=texts[s], reason="budget", tokens=counts[s])
                        continue
                    still.append(s)
                live = still
                if not live:
                    break
                if req.cancel is not None and req.cancel():
                    for s in live:
                        yield Event("finish", seq=s, text=texts[s], reason="cancelled", tokens=counts[s])
                    break
                # 3. one decode for all live sequences
                for j, s in enumerate(live):
                    self._tok[j] = toks[s]
                    self._pos[j] = P + counts[s] - 1
                    seq_id[j][0] = s
                    self._want[j] = 1
                self._decode(len(live))
                idx = {s: j for j, s in enumerate(live)}  # batch row j holds live sequence j's logits
        finally:
            for smp in samplers:
                ll.llama_sampler_free(smp)
            ll.llama_memory_clear(mem, True)

    def _logprobs(self, live, idx, toks) -> dict:
        """Chosen-token log-probabilities under the raw model distribution, one vectorised
        log-sum-exp over the live rows of this step's logits."""
        nv = self._n_vocab
        if len(set(idx.values())) == 1:  # first step: every sequence reads the prompt's last row
            row = np.ctypeslib.as_array(_ll.llama_get_logits_ith(self._ctx, next(iter(idx.values()))), shape=(nv,))
            m = row.max()
            lse = m + np.log(np.exp(row - m).sum())
            return {s: float(row[toks[s]] - lse) for s in live}
        k = len(live)
        block = np.ctypeslib.as_array(_ll.llama_get_logits(self._ctx), shape=(k, nv))
        m = block.max(axis=1, keepdims=True)
        lse = (m + np.log(np.exp(block - m).sum(axis=1, keepdims=True)))[:, 0]
        return {s: float(block[idx[s], toks[s]] - lse[idx[s]]) for s in live}

    def close(self) -> None:
        if getattr(self, "_batch", None) is not None:
            _ll.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "_ctx", None):
            _ll.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            _ll.llama_model_free(self._model)
            self._model = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
