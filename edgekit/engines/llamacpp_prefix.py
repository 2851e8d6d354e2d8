"""Prompt-prefix KV cache for the llama.cpp engine's continuous batching (private to the engine).

A robot sends the same long system prompt with a short new observation many times a second; the
prefix's KV cells need computing once. The scheduler keeps the KV cells of recent prompts on
sequence ids of their own (one per entry, after the request rows) and a new request whose tokens
share a prefix of at least ``min_match`` tokens with an entry copies those cells
(``llama_memory_seq_cp``: unified KV, the cells are shared, not copied) and prefills only the rest.

Bounded by ``budget`` tokens over all entries and by the number of entry sequence ids; the least
recently used entry that no admitted request still reads is evicted first; pinned entries (the
serve command's ``--system-prompt-file``) are never evicted. Matching is on token ids, so a prefix
is reused only where the tokenizer produced exactly the same tokens. KV accounting: an entry costs
its length in cells while cached; a request that copied L cells from an entry needs only its other
prompt tokens, and holds the entry (it cannot be evicted) until the request ends -- so every cell in
use is counted by someone.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from edgekit.engines.llamacpp_core import common_prefix, ll
from edgekit.errors import UsageError

PREFIX_MIN = 64  # fewest shared leading tokens worth reusing (a copy of fewer saves next to nothing)
PREFIX_SLOTS = 4  # prompts the continuous-batching cache keeps (sequence ids of their own)


@dataclass(eq=False)
class Prefix:
    ids: list[int]
    seq: int
    pinned: bool = False
    users: int = 0  # admitted requests that copied its cells and have not ended
    used: int = 0  # LRU clock
    hits: int = 0


@dataclass
class PrefixStats:
    hits: int = 0  # requests admitted with a reused prefix
    misses: int = 0  # requests admitted with none (the cache on, prompt long enough)
    reused_tokens: int = 0  # prompt tokens not prefilled thanks to the cache
    inserted: int = 0
    evicted: int = 0


@dataclass
class PrefixCache:
    seqs: list[int]  # sequence ids reserved for entries
    budget: int  # tokens over all entries; 0: off
    min_match: int = 64
    entries: list[Prefix] = field(default_factory=list)
    stats: PrefixStats = field(default_factory=PrefixStats)
    _clock: itertools.count = field(default_factory=itertools.count)

    @property
    def on(self) -> bool:
        return self.budget > 0 and bool(self.seqs)

    @property
    def tokens(self) -> int:
        return sum(len(e.ids) for e in self.entries)

    def match(self, ids: list[int]) -> tuple[Prefix | None, int]:
        """The entry sharing the longest prefix with ``ids`` and that length, capped at len(ids) - 1
        (the prompt's last token is always decoded: its logits start the samples); (None, 0) below
        ``min_match``."""
        if not self.on or len(ids) <= self.min_match:
            return None, 0
        best, best_n = None, 0
        for e in self.entries:
            n = min(common_prefix(e.ids, ids), len(ids) - 1)
            if n > best_n or (n == best_n and best is not None and e.pinned and not best.pinned):
                best, best_n = e, n
        return (best, best_n) if best_n >= self.min_match else (None, 0)

    def peek(self, ids: list[int]) -> int:
        """Tokens of ``ids`` a request admitted now would not prefill (for latency predictions)."""
        return self.match(ids)[1]

    def touch(self, e: Prefix) -> None:
        e.used = next(self._clock)

    def evictable(self, keep: Prefix | None = None) -> list[Prefix]:
        """Entries that may go, least recently used first."""
        free = (e for e in self.entries if not e.pinned and e.users == 0 and e is not keep)
        return sorted(free, key=lambda e: e.used)

    def free_seq(self) -> int | None:
        taken = {e.seq for e in self.entries}
        return next((s for s in self.seqs if s not in taken), None)

    def covered(self, ids: list[int]) -> Prefix | None:
        """An entry that already holds all of ``ids`` (no point caching them again)."""
        return next((e for e in self.entries if len(e.ids) >= len(ids) and common_prefix(e.ids, ids) == len(ids)), None)


class PrefixOps:
    """The scheduler's side of the cache (a mixin of :class:`~edgekit.engines.llamacpp_sched.Scheduler`:
    its worker thread calls these; the bookkeeping runs under its lock, which ``snapshot()`` takes).
    Uses the scheduler's ``prefix`` (:class:`PrefixCache`), ``_mem``, ``_dec``, ``_cv``, ``_kv_free``
    (KV cells not promised to anyone) and ``_pins`` (pinned token lists)."""

    prefix: PrefixCache
    _mem: Any
    _dec: Any
    _cv: Any
    _kv_free: int
    _pins: list

    def _reuse(self, req: Any, entry: Prefix | None, n: int) -> None:
        pc = self.prefix
        if entry is None:
            pc.stats.misses += pc.on and len(req.ids) > pc.min_match
            return
        ll.llama_memory_seq_cp(self._mem, entry.seq, req.seqs[0], 0, n)
        entry.users += 1
        entry.hits += 1
        pc.touch(entry)
        req.prefix, req.reused, req.pos = entry, n, n
        pc.stats.hits += 1
        pc.stats.reused_tokens += n

    def _release(self, req: Any) -> None:
        if req.prefix is not None:
            req.prefix.users -= 1
            req.prefix = None

    def _evict_one(self, keep: Prefix | None = None) -> bool:
        """Drop the least recently used entry no request reads (under the lock); False if none."""
        gone = self.prefix.evictable(keep)
        if not gone:
            return False
        e = gone[0]
        ll.llama_memory_seq_rm(self._mem, e.seq, -1, -1)
        self.prefix.entries.remove(e)
        self._kv_free += len(e.ids)
        self.prefix.stats.evicted += 1
        return True

    def _remember(self, req: Any) -> None:
        """Cache a completed prompt's cells (its sequence holds exactly them now)."""
        pc, P = self.prefix, len(req.ids)
        if not pc.on or P <= pc.min_match or P > pc.budget:
            return
        with self._cv:
            have = pc.covered(req.ids)
            if have is not None:
                pc.touch(have)
                return
            while pc.tokens + P > pc.budget or pc.free_seq() is None or P > self._kv_free:
                if not self._evict_one():
                    return
            seq = pc.free_seq()
            ll.llama_memory_seq_cp(self._mem, req.seqs[0], seq, 0, P)
            e = Prefix(list(req.ids), seq)
            pc.entries.append(e)
            pc.touch(e)
            self._kv_free -= P
            pc.stats.inserted += 1

    def _pin(self, ids: list[int], remember: bool) -> int:
        pc, P = self.prefix, len(ids)
        if not pc.on:
            raise UsageError("the prefix cache is off: nothing can be pinned", fix="pass a prefix cache size > 0")
        if P > pc.budget or P >= self._dec.n_ctx:
            raise UsageError(
                f"the prefix to pin is {P} tokens; the prefix cache holds {pc.budget}, the context {self._dec.n_ctx}",
                fix=f"raise the prefix cache size (>= {P}) and the context, or shorten the system prompt",
            )
        with self._cv:
            have = pc.covered(ids)
            if have is not None and len(have.ids) == P:
                have.pinned = True
                if remember:
                    self._pins.append(ids)
                return P
            while pc.tokens + P > pc.budget or pc.free_seq() is None or P > self._kv_free:
                if not self._evict_one():
                    raise UsageError(
                        f"no room to pin {P} tokens: the cache holds {pc.tokens} pinned or in use",
                        fix="raise the prefix cache size",
                    )
            seq = pc.free_seq()
            self._kv_free -= P
        try:
            self._dec.prefill_on(ids, seq)
        except BaseException:
            ll.llama_memory_seq_rm(self._mem, seq, -1, -1)
            with self._cv:
                self._kv_free += P
            raise
        with self._cv:
            e = Prefix(list(ids), seq, pinned=True)
            pc.entries.append(e)
            pc.touch(e)
            if remember:
                self._pins.append(list(ids))
        return P
