"""Per-row sampling over one decode's logits block, for the llama.cpp engine's batch loop.

Private to the llama.cpp engine (:mod:`edgekit.engines.llamacpp_core` and the scheduler use it).

Each sample (row) owns a :class:`RowSampler`: llama.cpp's native chain (top-k, top-p, min-p,
temperature, seeded dist; or greedy) and, when constrained, a separate native grammar sampler.
:class:`BlockSampler` picks every row's token from the logits block of the last ``llama_decode``
and gives the same token llama.cpp's chain would give over the full vocabulary -- with the
grammar first in the chain, as edgekit built it before -- from much less work:

- **Greedy**: ``argmax`` of the raw row (llama.cpp's greedy keeps the first maximum, as numpy
  does). Constrained: the argmax is checked alone against the grammar (a one-token candidate
  array through the grammar sampler); if it is rejected, the tokens within a band below the row
  maximum are checked, and the first valid maximum is taken; the whole vocabulary is checked only
  when no token of the band is valid. The first valid maximum is the greedy token of the
  grammar-first chain, so the output is the same token, always.
- **Sampling (T > 0)**: the chain runs on a candidate array: the (valid) tokens whose logit is
  within a band below the row maximum, in token-id order, the order of the full array. The band
  is used only when it provably holds everything the full-vocabulary chain would keep
  (:func:`band_decides`): with top-k, k (valid) tokens above the band's floor; otherwise the top-p
  cut (with the mass below the band bounded) or the min-p floor must fall inside the band. Then
  top-k, top-p, min-p, temperature and dist see the same tokens in the same order and draw the
  same token from the same random state; otherwise the next band, and at last the full vocabulary
  (the grammar applied to all of it first, as before). Seeded runs are therefore token-for-token
  those of the full chain (up to exact logit ties at the top-k boundary, which llama.cpp's
  partial sort breaks in an unspecified order), not merely equal in distribution.

The grammar is thus applied only to the few tokens near the top of the distribution, and to the
whole vocabulary only when none of them decides the step (llama.cpp's ``common_sampler`` checks
the sampled token alone and resamples on rejection, which for a truncated chain -- top-k, top-p,
min-p -- is *not* the grammar-first distribution: a valid token drawn from the unconstrained
nucleus is kept with the unconstrained nucleus's probability).

Log-probabilities (raw distribution, what the confidence score reads) need one log-sum-exp per
logits row: computed once per row, with ggml's vectorised softmax kernel where the loaded
llama.cpp has it, else numpy (:mod:`edgekit.engines.llamacpp_lse`).

Token scores for confidence (:meth:`BlockSampler.token_scores`, before the grammar accepts the
token): the chosen token's log-probability *renormalised over what the grammar allowed* and
DeepConf's token confidence (minus the mean log-probability of the k most likely allowed tokens).
A token the grammar forced (one allowed token) scores None: it carries no doubt. The allowed set
is found in a band of ``ln(V) + 7`` nats below the chosen token, so the tokens left out hold at
most ``e^-7`` of the allowed mass (the log-sum-exp is off by at most 0.001 nats) -- or, cheaper,
in the 16 nats under the row's top when that band already holds at least k allowed tokens and the
row's log-sum-exp shows the tokens outside it cannot hold ``e^-7`` of the allowed mass even if all
of them were allowed (then the top k allowed tokens are the same, and the same bound holds).
"""

from __future__ import annotations

import ctypes
import math
import time

import numpy as np

from edgekit.errors import BackendError, UsageError
from edgekit.host.threads import apply_before_load
from edgekit.schemas.options import SamplingOptions

apply_before_load()  # before llama.cpp's library loads (see llamacpp_core)
try:
    import llama_cpp as ll
except ImportError as e:  # pragma: no cover - install problem
    raise BackendError("llama-cpp-python is not installed", fix='pip install "llama-cpp-python>=0.3.36,<0.4"') from e
from edgekit.engines.llamacpp_lse import RowLse  # noqa: E402 - after the check
from edgekit.engines.llamacpp_prefilter import MIN_IDS, PrefixClasses, prefilterable  # noqa: E402 - after the check

TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
BANDS = (8.0, 16.0)  # logit distances below the row maximum tried before the whole vocabulary
NEAR = BANDS[-1]  # one pass per row finds the ids this close to the maximum; the bands are cut from it
_TOPK_BANDS = (8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0)  # token confidence: bands tried for the top k
_RENORM_EXTRA = 7.0  # band below the chosen token for the grammar's renormalisation: ln(V) + this
COUNTS = ("argmax", "band", "full", "grammar_checks", "grammar_full", "grammar_prefiltered")
_EPS = 1e-4  # margin on top-p's cumulative-mass test (llama.cpp sums in float32)


class RowSampler:
    """One sample's native samplers: the chain (no grammar in it) and the grammar, if any."""

    __slots__ = ("chain", "grammar", "greedy", "top_k", "top_p", "min_p", "key", "prefilter")

    def __init__(self, vocab, o: SamplingOptions, seed: int, grammar: str | None):
        self.grammar = None
        self.prefilter = prefilterable(grammar)  # its verdicts over many tokens may be pre-filtered by prefix
        self.key = (grammar, 0)  # the grammar and a hash of the tokens it accepted: equal keys, equal state
        if grammar is not None:
            self.grammar = ll.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
            if not self.grammar:
                self.grammar = None
                raise UsageError(
                    "llama.cpp rejected the grammar (it does not parse)",
                    fix="check the GBNF grammar / JSON schema; EDGEKIT_DEBUG=1 shows llama.cpp's reason",
                )
        params = ll.llama_sampler_chain_default_params()
        params.no_perf = True
        self.chain = ll.llama_sampler_chain_init(params)
        t = o.effective_temperature
        self.greedy = t <= 0
        self.top_k, self.top_p, self.min_p = o.top_k, o.top_p, o.min_p
        add = lambda s: ll.llama_sampler_chain_add(self.chain, s)
        if self.greedy:
            add(ll.llama_sampler_init_greedy())
            return
        if o.top_k > 0:
            add(ll.llama_sampler_init_top_k(o.top_k))
        if o.top_p < 1.0:
            add(ll.llama_sampler_init_top_p(o.top_p, 1))
        if o.min_p > 0:
            add(ll.llama_sampler_init_min_p(o.min_p, 1))
        add(ll.llama_sampler_init_temp(t))
        add(ll.llama_sampler_init_dist(seed))

    def free(self) -> None:
        if self.chain:
            ll.llama_sampler_free(self.chain)
            self.chain = None
        if self.grammar:
            ll.llama_sampler_free(self.grammar)
            self.grammar = None


def band_decides(lv: np.ndarray, floor: float, unknown: int, top_k: int, top_p: float, min_p: float) -> bool:
    """True when the chain top-k -> top-p -> min-p keeps the same tokens from ``lv`` (the logits
    of every candidate at or above ``floor``) as from the full candidate set, which adds at most
    ``unknown`` tokens below ``floor`` (that count only where top-k leaves room for them)."""
    n = len(lv)
    if n == 0:
        return False
    if top_k > 0:
        if n >= top_k:
            return True  # the top k are all above the floor
        unknown = min(unknown, top_k - n)
    if unknown <= 0:
        return True
    top = float(lv.max())
    floor_cut = min_p > 0 and floor <= top + math.log(min_p)  # min-p drops every token below the floor
    if top_p >= 1.0:
        return floor_cut
    if floor_cut and int(np.count_nonzero(lv >= top + math.log(min_p))) <= 1:
        return True  # min-p keeps the top token alone, and top-p keeps at least it (no sort needed)
    srt = np.sort(lv.astype(np.float64))[::-1]
    cum = np.cumsum(np.exp(srt - top))
    z_lo = cum[-1]
    z_hi = z_lo + unknown * math.exp(floor - top)
    keep_lo = int(np.searchsorted(cum, top_p * z_lo * (1 - _EPS))) + 1  # the fewest top-p may keep
    hi = int(np.searchsorted(cum, top_p * z_hi * (1 + _EPS)))
    if hi < n and keep_lo == hi + 1:
        return True  # top-p keeps the same prefix whatever the mass below the floor
    if floor_cut:  # min-p cuts no later than top-p can: the kept tokens are the min-p prefix
        kept_by_min_p = int(np.count_nonzero(srt >= top + math.log(min_p)))
        return kept_by_min_p <= keep_lo
    return False


def topk_mean(row: np.ndarray, top: float, k: int, near: np.ndarray | None = None) -> float:
    """Mean of the ``k`` largest values of ``row`` (maximum ``top``): a band below the maximum
    first (a comparison and a small partition, not a partition of the whole vocabulary).
    ``near``: the ids within ``NEAR`` of the maximum, when the caller has them (no pass then)."""
    ids = np.empty(0, np.int64)
    if near is not None and len(near) >= k:
        ids = near
    else:
        for d in _TOPK_BANDS:
            if near is not None and d <= NEAR:
                continue  # no more than ``near`` holds
            ids = np.flatnonzero(row >= top - d)
            if len(ids) >= k:
                break
    v = row[ids] if len(ids) >= k else row
    if len(v) > k:
        v = np.partition(v, len(v) - k)[-k:]
    return float(v.astype(np.float64).mean())


class BlockSampler:
    """Buffers and counters for picking tokens from a decode's logits (one per context)."""

    def __init__(self, n_vocab: int, vocab=None):
        self.nv = n_vocab
        self._vocab = vocab  # for the grammar pre-filter's classes (built on first use); None: no pre-filter
        self._pre: PrefixClasses | None = None
        self.prefilter_build_s = 0.0
        self._cand = np.empty(n_vocab, TOKEN_DATA)
        self._cand_ptr = self._cand.ctypes.data_as(ll.llama_token_data_p)
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self._arr = ll.llama_token_data_array()
        self._arr_ref = ctypes.byref(self._arr)
        self._lse = RowLse(n_vocab)
        self.counts = dict.fromkeys(COUNTS, 0)
        self._seen: dict = {}  # (grammar, state) -> its valid ids over the whole vocabulary, this step
        self._views: dict = {}  # (logits address, rows) -> the numpy view of that block

    def new_step(self) -> None:
        self._seen.clear()

    # -- the logits block ------------------------------------------------------------------
    def block(self, ctx, rows: int) -> np.ndarray:
        """The first ``rows`` output rows of the last decode's logits (a view, no copy)."""
        ptr = ll.llama_get_logits(ctx)
        key = (ctypes.cast(ptr, ctypes.c_void_p).value, rows)
        view = self._views.get(key)  # building a view costs ~60 us a step: kept while llama.cpp keeps its buffer
        if view is None:
            if len(self._views) > 64:
                self._views.clear()
            view = self._views[key] = np.ctypeslib.as_array(ptr, shape=(rows, self.nv))
        return view

    def lse(self, block: np.ndarray, m: np.ndarray) -> np.ndarray:
        """Per-row log-sum-exp, float32 (:class:`edgekit.engines.llamacpp_lse.RowLse`)."""
        return self._lse(block, m)

    # -- native samplers on candidate arrays -----------------------------------------------
    def _load(self, ids: np.ndarray, row: np.ndarray) -> None:
        k = len(ids)
        c = self._cand[:k]
        c["id"] = ids
        c["logit"] = row[ids]
        c["p"] = 0.0
        a = self._arr
        a.data, a.size, a.selected, a.sorted = self._cand_ptr, k, -1, False

    def _valid(self, grammar, ids: np.ndarray, row: np.ndarray) -> np.ndarray:
        """The ids of ``ids`` the grammar accepts next (one native apply over them)."""
        self._load(ids, row)
        ll.llama_sampler_apply(grammar, self._arr_ref)
        self.counts["grammar_checks"] += 1
        c = self._cand[: self._arr.size]
        return c["id"][c["logit"] != -np.inf].copy()

    def _valid_many(self, rs: RowSampler, ids: np.ndarray, row: np.ndarray) -> np.ndarray:
        """:meth:`_valid` for ``rs``'s grammar, with a large ``ids`` first cut down by the exact
        prefix pre-filter (:mod:`edgekit.engines.llamacpp_prefilter`): the same verdict."""
        pre = self.prefix_classes() if len(ids) >= MIN_IDS and rs.prefilter else None
        if pre is not None:
            ids = pre.candidates(lambda p: self._valid(rs.grammar, p, row), ids)
            self.counts["grammar_prefiltered"] += 1
        return self._valid(rs.grammar, ids, row)

    def _valid_vocab(self, rs: RowSampler, row: np.ndarray) -> np.ndarray:
        """The grammar's valid tokens over the whole vocabulary, once per grammar state and step
        (rows in the same state share them; the verdict does not depend on the row's logits)."""
        v = self._seen.get(rs.key)
        if v is None:
            self.counts["grammar_full"] += 1
            v = self._seen[rs.key] = self._valid_many(rs, self._ids, row)
        return v

    def prefix_classes(self) -> PrefixClasses | None:
        """The pre-filter's classes, built on first use (~0.5 s for a 152k-token vocabulary; the
        daemon builds them while loading); None without a vocabulary."""
        if self._pre is None and self._vocab is not None:
            t = time.perf_counter()
            self._pre = PrefixClasses(self._vocab, self.nv)
            self.prefilter_build_s = time.perf_counter() - t
        return self._pre

    def _chain(self, rs: RowSampler, ids: np.ndarray, row: np.ndarray) -> int:
        self._load(ids, row)
        ll.llama_sampler_apply(rs.chain, self._arr_ref)
        sel = self._arr.selected
        if sel < 0:  # pragma: no cover - a chain always ends in a selecting sampler
            raise BackendError("llama.cpp's sampler chain selected no token", fix="report this bug")
        return int(self._cand["id"][sel])

    def _full(self, rs: RowSampler, row: np.ndarray) -> int:
        """The whole vocabulary: the grammar's valid tokens (once per grammar state and step: rows
        in the same state share them), then the chain."""
        self.counts["full"] += 1
        if rs.grammar is None:
            return self._chain(rs, self._ids, row)
        v = self._valid_vocab(rs, row)
        if not len(v):  # nothing is valid: what llama.cpp's grammar-first chain does then
            self._load(self._ids, row)
            ll.llama_sampler_apply(rs.grammar, self._arr_ref)
            ll.llama_sampler_apply(rs.chain, self._arr_ref)
            return int(self._cand["id"][max(self._arr.selected, 0)])
        return self._chain(rs, v, row)

    def pick(self, rs: RowSampler, row: np.ndarray, top: float, scores: tuple | None = None) -> int:
        """The token row ``row`` (raw logits, maximum ``top``) gives sample ``rs``; accepted into
        its samplers (the grammar advances exactly once). ``scores``: ``(lse, k, out)``: append the
        token's :meth:`token_scores` to the list ``out`` (computed before the grammar accepts it)."""
        # the one pass over the row (greedy without scores needs only the argmax; a grammar that rejects it
        # makes its own band)
        near = np.flatnonzero(row >= top - NEAR).astype(np.int32) if not rs.greedy or scores is not None else None
        tok = self._pick(rs, row, top, near)
        if scores is not None:
            scores[2].append(self.token_scores(rs, row, top, tok, scores[0], scores[1], near))
        if rs.grammar is not None:
            ll.llama_sampler_accept(rs.grammar, tok)
            rs.key = (rs.key[0], hash((rs.key[1], tok)))
        ll.llama_sampler_accept(rs.chain, tok)
        return tok

    def token_scores(
        self, rs: RowSampler, row: np.ndarray, top: float, tok: int, lse: float, k: int, near=None
    ) -> tuple[float | None, float | None]:
        """(log-probability of ``tok`` over the allowed tokens, DeepConf token confidence over the
        top ``k`` allowed tokens); (None, None) when the grammar allowed only ``tok``. ``near``: the
        ids within ``NEAR`` of ``top``, if known."""
        if rs.grammar is None:
            return float(row[tok] - lse), (-(topk_mean(row, top, k, near) - lse) if k else None)
        v = self._allowed_near(rs, row, top, tok, lse, k, near)
        if v is None:
            v = self._allowed_below(rs, row, tok)
        if len(v) <= 1:
            return None, None
        lv = row[v].astype(np.float64)
        mv = float(lv.max())
        lse_v = mv + math.log(float(np.exp(lv - mv).sum()))
        if not k:
            return float(row[tok] - lse_v), None
        top_v = np.partition(lv, len(lv) - k)[-k:] if len(lv) > k else lv
        return float(row[tok] - lse_v), -(float(top_v.mean()) - lse_v)

    def _allowed_near(self, rs: RowSampler, row, top: float, tok: int, lse: float, k: int, near) -> np.ndarray | None:
        """The allowed tokens among ``near`` (the ids within ``NEAR`` of the top) when the tokens
        outside it hold at most ``e^-7`` of the allowed mass *whatever the grammar allows there*:
        their whole mass, read off the row's log-sum-exp, is that small -- and ``near`` holds at
        least ``max(k, 2)`` allowed tokens, so the top k allowed tokens (every allowed token outside
        ``near`` is lower than all of it) and "forced or not" are those of the wider band. None
        otherwise (the band below the chosen token decides then)."""
        if near is None or len(near) > self.nv // 8 or row[tok] < top - NEAR:
            return None
        v = self._valid_many(rs, near, row)
        if len(v) < max(k, 2):
            return None
        z_v = float(np.exp(row[v].astype(np.float64) - top).sum())
        z_out = math.exp(lse - top) - float(np.exp(row[near].astype(np.float64) - top).sum())
        return v if z_out <= math.exp(-_RENORM_EXTRA) * z_v else None

    def _allowed_below(self, rs: RowSampler, row, tok: int) -> np.ndarray:
        """The allowed tokens within ``ln(V) + 7`` below ``tok`` (the whole vocabulary's, once per
        grammar state and step, when that band is most of it)."""
        ids = np.flatnonzero(row >= row[tok] - (math.log(self.nv) + _RENORM_EXTRA)).astype(np.int32)
        return self._valid_vocab(rs, row) if len(ids) > self.nv // 8 else self._valid_many(rs, ids, row)

    def _band(self, row: np.ndarray, top: float, floor: float, near: np.ndarray | None) -> np.ndarray:
        """The ids (int32, ascending) whose logit is at or above ``floor``: cut from ``near`` (the
        ids within ``NEAR`` of ``top``) when it holds them all, else one pass over the row."""
        if near is not None and floor >= top - NEAR:
            return near if floor == top - NEAR else near[row[near] >= floor]
        return np.flatnonzero(row >= floor).astype(np.int32)

    def _pick(self, rs: RowSampler, row: np.ndarray, top: float, near: np.ndarray | None = None) -> int:
        g = rs.grammar
        if rs.greedy:
            t = int(row.argmax())
            if g is None or len(self._valid(g, self._ids[t : t + 1], row)):
                self.counts["argmax"] += 1
                return t
            for d in BANDS:
                ids = self._band(row, top, top - d, near)
                if len(ids) > self.nv // 8:
                    break
                v = self._valid_many(rs, ids, row)
                if len(v):  # every token above the first valid maximum is in the band
                    self.counts["band"] += 1
                    return int(v[int(row[v].argmax())])
            return self._full(rs, row)
        floors = [top - d for d in BANDS]
        while floors:
            floor = floors.pop(0)
            ids = self._band(row, top, floor, near)
            if len(ids) > self.nv // 8:
                break  # a flat distribution: the whole vocabulary costs little more
            unknown = self.nv - len(ids)
            if g is not None:
                ids = self._valid_many(rs, ids, row)
            lv = row[ids]
            if band_decides(lv, floor, unknown, rs.top_k, rs.top_p, rs.min_p):
                self.counts["band"] += 1
                return self._chain(rs, ids, row)
            if (
                len(ids) and rs.min_p > 0
            ):  # min-p's own floor under the best valid token decides, if anything short of all
                need = float(lv.max()) + math.log(rs.min_p) - 1e-3
                if need < floor and (not floors or need > floors[0]):
                    floors.insert(0, need)
        return self._full(rs, row)
