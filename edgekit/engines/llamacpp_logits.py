"""Windowed next-token log-probabilities of a fixed text, from llama.cpp's raw logits.

Private to the llama.cpp engine (reached through :meth:`LlamaCppEngine.token_logprobs`); the
quality workflow (``edgekit.quantize.quality``) builds perplexity and KL divergence on it.

Windows follow ``llama-perplexity``: the token ids are cut into consecutive, non-overlapping
windows of ``n_ctx`` tokens (a remainder shorter than a window is dropped); when the vocabulary
adds a BOS token, the first token of every window is replaced by BOS; each window is evaluated
from an empty KV cache, and only its second half is scored -- the logits at positions
``n_ctx//2 .. n_ctx-2`` predict tokens ``n_ctx//2+1 .. n_ctx-1`` -- so every scored token has at
least ``n_ctx//2`` tokens of context. ``n_ctx - 1 - n_ctx//2`` tokens are scored per window.

A window goes to ``llama_decode`` in chunks of the context's ``n_batch`` (one call when
``n_batch >= n_ctx``), logits requested only for the scored half. Each chunk's logits block is
reduced in numpy at once (log-sum-exp, argmax, top-k by ``argpartition``, gathers): no Python
loop over the vocabulary or over positions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from edgekit.errors import BackendError, UsageError

try:
    import llama_cpp as ll
except ImportError as e:  # pragma: no cover - install problem
    raise BackendError("llama-cpp-python is not installed", fix='pip install "llama-cpp-python>=0.3.36,<0.4"') from e


@dataclass
class TokenLogprobs:
    """Per scored token (row i predicts ``tokens[targets[i]]`` from the tokens before it in its window)."""

    targets: np.ndarray  # int64 (n,): index into the token ids of each scored token
    logprob: np.ndarray  # float32 (n,): log-probability of the actual token
    argmax: np.ndarray  # int32 (n,): the model's most likely token there
    top_ids: np.ndarray  # int32 (n, k): the k most likely tokens, most likely first (k = top_k, may be 0)
    top_logprobs: np.ndarray  # float32 (n, k): their log-probabilities
    at_logprobs: np.ndarray | None  # float32 (n, m): log-probabilities of the ids asked for in ``at_ids``
    n_vocab: int
    n_ctx: int
    add_bos: bool
    windows: int


def scored_targets(n_tokens: int, n_ctx: int) -> np.ndarray:
    """Indices of the tokens scored by :func:`window_logprobs` for ``n_tokens`` ids in windows of ``n_ctx``."""
    first = n_ctx // 2
    per = np.arange(first + 1, n_ctx, dtype=np.int64)
    return (np.arange(n_tokens // n_ctx, dtype=np.int64)[:, None] * n_ctx + per[None, :]).reshape(-1)


def window_logprobs(
    ctx,
    vocab,
    tokens: Sequence[int],
    *,
    n_ctx: int,
    top_k: int = 0,
    at_ids: np.ndarray | None = None,
    interrupted: Callable[[], None] = lambda: None,
) -> TokenLogprobs:
    """Score ``tokens`` in windows of ``n_ctx`` on sequence 0 of ``ctx`` (see the module docstring).

    ``top_k``: also return the k most likely tokens per scored position. ``at_ids`` (n_scored x m
    token ids): also return the log-probabilities of those ids, row by row (a variant read on
    the reference's top-k support). The KV cache is cleared before and after.
    """
    toks = np.asarray(tokens, dtype=np.int64)
    nv = int(ll.llama_vocab_n_tokens(vocab))
    ctx_cap, n_batch = int(ll.llama_n_ctx(ctx)), int(ll.llama_n_batch(ctx))
    if not isinstance(n_ctx, int) or n_ctx < 8:
        raise UsageError(f"window length must be an integer >= 8, got {n_ctx!r}", fix="pass --n-ctx 512")
    if n_ctx > ctx_cap:
        raise UsageError(
            f"window of {n_ctx} tokens exceeds the loaded context of {ctx_cap}",
            fix=f"load the model with a context of at least {n_ctx} tokens, or lower --n-ctx",
        )
    if len(toks) < n_ctx:
        raise UsageError(
            f"text has {len(toks)} tokens, fewer than one window of {n_ctx}",
            fix="use a longer text or a smaller --n-ctx",
        )
    if toks.size and (toks.min() < 0 or toks.max() >= nv):
        raise UsageError(f"token ids outside this model's vocabulary of {nv}", fix="tokenize the text with this model")
    if not 0 <= top_k <= nv:
        raise UsageError(f"top_k must be in 0..{nv}, got {top_k}", fix="pass --top-k 64")
    targets = scored_targets(len(toks), n_ctx)
    n = len(targets)
    if at_ids is not None:
        at_ids = np.asarray(at_ids, dtype=np.int64)
        if at_ids.ndim != 2 or at_ids.shape[0] != n:
            raise UsageError(
                f"at_ids must have one row per scored token ({n}), got shape {at_ids.shape}",
                fix="pass ids computed for the same text and window length",
            )
        if at_ids.size and (at_ids.min() < 0 or at_ids.max() >= nv):
            raise UsageError(
                f"at_ids hold token ids outside this model's vocabulary of {nv}",
                fix="use a reference made with a model of the same tokenizer",
            )
    add_bos = bool(ll.llama_vocab_get_add_bos(vocab))
    bos = int(ll.llama_vocab_bos(vocab))
    first = n_ctx // 2
    out_lp = np.empty(n, np.float32)
    out_arg = np.empty(n, np.int32)
    out_tid = np.empty((n, top_k), np.int32)
    out_tlp = np.empty((n, top_k), np.float32)
    out_at = None if at_ids is None else np.empty(at_ids.shape, np.float32)

    mem = ll.llama_get_memory(ctx)
    cap = min(n_batch, n_ctx)
    batch = ll.llama_batch_init(cap, 0, 1)
    try:
        b_tok = np.ctypeslib.as_array(batch.token, shape=(cap,))
        b_pos = np.ctypeslib.as_array(batch.pos, shape=(cap,))
        b_nseq = np.ctypeslib.as_array(batch.n_seq_id, shape=(cap,))
        b_want = np.ctypeslib.as_array(batch.logits, shape=(cap,))
        b_nseq[:] = 1
        for i in range(cap):
            batch.seq_id[i][0] = 0
        row = 0  # next output row
        for w in range(len(toks) // n_ctx):
            win = toks[w * n_ctx : (w + 1) * n_ctx].copy()
            if add_bos and bos >= 0:
                win[0] = bos
            ll.llama_memory_seq_rm(mem, 0, -1, -1)  # only sequence 0: a prefix cache's stay
            for start in range(0, n_ctx, cap):
                k = min(cap, n_ctx - start)
                pos = np.arange(start, start + k)
                b_tok[:k] = win[start : start + k]
                b_pos[:k] = pos
                want = (pos >= first) & (pos <= n_ctx - 2)
                b_want[:k] = want
                n_out = int(want.sum())
                batch.n_tokens = k
                rc = ll.llama_decode(ctx, batch)
                interrupted()
                if rc != 0:
                    raise BackendError(
                        f"llama_decode failed (code {rc}) on a window chunk of {k} tokens",
                        fix="lower --n-ctx, or free memory",
                    )
                if not n_out:
                    continue
                block = np.ctypeslib.as_array(ll.llama_get_logits(ctx), shape=(n_out, nv))
                sl = slice(row, row + n_out)
                tgt = toks[targets[sl]]
                m = block.max(axis=1)
                lse = m.astype(np.float64) + np.log(np.exp(block - m[:, None]).sum(axis=1, dtype=np.float64))
                r = np.arange(n_out)
                out_lp[sl] = block[r, tgt] - lse
                out_arg[sl] = block.argmax(axis=1)
                if top_k:
                    part = np.argpartition(block, nv - top_k, axis=1)[:, nv - top_k :]
                    vals = np.take_along_axis(block, part, axis=1)
                    order = np.argsort(-vals, axis=1, kind="stable")
                    out_tid[sl] = np.take_along_axis(part, order, axis=1)
                    out_tlp[sl] = np.take_along_axis(vals, order, axis=1) - lse[:, None]
                if out_at is not None:
                    out_at[sl] = np.take_along_axis(block, at_ids[sl], axis=1) - lse[:, None]
                row += n_out
    finally:
        ll.llama_batch_free(batch)
        ll.llama_memory_seq_rm(mem, 0, -1, -1)  # only sequence 0: a prefix cache's stay
    if row != n:  # pragma: no cover - a bookkeeping bug, never a user error
        raise BackendError(f"scored {row} positions, expected {n}", fix="report this bug")
    return TokenLogprobs(
        targets=targets,
        logprob=out_lp,
        argmax=out_arg,
        top_ids=out_tid,
        top_logprobs=out_tlp,
        at_logprobs=out_at,
        n_vocab=nv,
        n_ctx=n_ctx,
        add_bos=add_bos,
        windows=len(toks) // n_ctx,
    )
