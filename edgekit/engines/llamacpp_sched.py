"""Continuous batching for the llama.cpp engine: many requests, one ``llama_decode`` per step.

Private to the llama.cpp engine. One worker thread owns the llama context. Requests are
submitted from any thread (:meth:`Scheduler.submit`) and read their events from their own queue.
Each step the worker

1. samples one token for every live row (a row = one sample of one request, on its own llama.cpp
   sequence id, with its own native sampler chain: grammar, temperature, seed, ...) from the last
   decode's logits, emits the request's events, retires finished rows (``llama_memory_seq_rm``,
   the sequence id goes back to the free list) and cancelled requests (client gone, deadline);
2. admits waiting requests, earliest deadline first (``SamplingOptions.deadline_s``; none: last,
   first come first served among equals), while a request's n sequence ids are free and its worst
   case (prompt + n x max_tokens cells) fits the KV space not yet promised to others; the first in
   that order that does not fit holds the others (a big request is not starved by small ones);
3. builds one batch: one token per live row, then up to ``prefill_chunk`` prompt tokens of
   admitted requests (a long prompt is prefilled over several steps, so running rows never stall
   for a whole prompt), and calls ``llama_decode`` once. A request whose prompt is complete copies
   the prompt's KV cells to its other n-1 sequences (``llama_memory_seq_cp``, unified KV: shared,
   not copied) and its rows join at the next step.

A prompt whose first tokens match a cached prefix (:mod:`edgekit.engines.llamacpp_prefix`: the KV
cells of recent or pinned prompts, on sequence ids of their own) copies those cells at admission
and prefills only the rest.

Work that needs the whole context (teacher-forced scoring) runs on the worker via
:meth:`Scheduler.exclusive` when no request is in flight.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import numpy as np

from edgekit.engines.base import Cancel, Event, Grow
from edgekit.engines.llamacpp_core import BatchDecoder, Row, ll
from edgekit.engines.llamacpp_pace import PaceOps, StepCost
from edgekit.engines.llamacpp_prefix import PrefixCache, PrefixOps
from edgekit.engines.llamacpp_request import Req, SchedulerStats
from edgekit.errors import BackendError, UsageError
from edgekit.schemas.options import SamplingOptions

_END = None  # queue sentinel: the request is over


class Scheduler(PrefixOps, PaceOps):
    def __init__(
        self,
        dec: BatchDecoder,
        *,
        rows: int,
        prefill_chunk: int = 128,
        prefix_tokens: int = 0,
        prefix_slots: int = 0,
        prefix_min: int = 64,
        pace: bool = True,
        deadline_margin: float = 0.9,
    ):
        """``prefix_tokens``/``prefix_slots``: the prefix cache's budget in KV cells and its number of
        entries (sequence ids ``rows`` .. ``rows + prefix_slots - 1``; the context must hold them);
        0 turns it off. ``prefix_min``: the fewest shared tokens worth reusing. ``pace``: cap the
        batch so admitted requests keep their deadlines (:mod:`edgekit.engines.llamacpp_pace`),
        using ``deadline_margin`` of each deadline."""
        self._dec = dec
        self.pace, self.margin = pace, deadline_margin
        self.cost = StepCost(rows)
        self.rows = rows
        self.prefill_chunk = max(1, min(prefill_chunk, dec._cap - rows))
        self.stats = SchedulerStats()
        self._cv = threading.Condition()
        self._waiting: collections.deque[Req] = collections.deque()
        self._tasks: collections.deque[tuple[Callable[[], Any], Future]] = collections.deque()
        self._prefilling: list[Req] = []
        self._running: list[Req] = []
        self._free = list(range(rows - 1, -1, -1))  # pop() gives the lowest id
        self._kv_free = dec.n_ctx
        self._ids = 0
        self._stop = False
        self._n_out = 0  # logits rows of the last decode
        self._mem = ll.llama_get_memory(dec._ctx)
        ll.llama_memory_clear(self._mem, True)
        self.prefix = PrefixCache(list(range(rows, rows + prefix_slots)), prefix_tokens, prefix_min)
        self._pins: list[list[int]] = []  # pinned prefixes, restored after a failed decode cleared the KV
        self._repin = False
        self._thread = threading.Thread(target=self._loop, name="edgekit-llama-batch", daemon=True)
        self._thread.start()

    # -- any thread ---------------------------------------------------------------------------
    def submit(
        self, ids: list[int], o: SamplingOptions, samplers: list, cancel: Cancel | None, grow: Grow | None = None
    ) -> Iterator[Event]:
        with self._cv:
            if self._stop:
                for s in samplers:
                    s.free()
                raise UsageError("engine is closed", fix="create a new Runtime/engine; do not use one after close()")
            self._ids += 1
            req = Req(self._ids, ids, o, samplers, cancel, grow)
            self._waiting.append(req)
            self._cv.notify()
        return self._events(req)

    @staticmethod
    def _events(req: Req) -> Iterator[Event]:
        try:
            while True:
                item = req.q.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield from item
        finally:
            req.abandoned = True  # a consumer that stops early cancels its rows at the next step

    def exclusive(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the worker while no request is in flight; its result or exception. ``fn``
        may use the request sequences (0 .. rows-1); they are emptied after it, the cache kept."""
        fut: Future = Future()
        with self._cv:
            if self._stop:
                raise UsageError("engine is closed", fix="create a new Runtime/engine; do not use one after close()")
            self._tasks.append((fn, fut))
            self._cv.notify()
        return fut.result()

    def pin(self, ids: list[int]) -> int:
        """Prefill ``ids`` into the prefix cache as an entry never evicted (a shared system prompt);
        its length. Waits for the requests in flight."""
        return self.exclusive(lambda: self._pin(list(ids), remember=True))

    def cached_prefix(self, ids: list[int]) -> int:
        """Prompt tokens of ``ids`` a request admitted now would copy instead of prefilling."""
        with self._cv:
            return self.prefix.peek(ids)

    def snapshot(self) -> dict:
        with self._cv:
            d = dict(vars(self.stats))
            d.update(
                waiting=len(self._waiting),
                running=len(self._running) + len(self._prefilling),
                free_rows=len(self._free),
                free_kv=self._kv_free,
                rows=self.rows,
            )
            pc = self.prefix
            d.update(
                prefix_cache_tokens=pc.tokens,
                prefix_cache_budget=pc.budget if pc.on else 0,
                prefix_cache_entries=len(pc.entries),
                prefix_cache_pinned=sum(e.pinned for e in pc.entries),
                **{f"prefix_{k}": v for k, v in vars(pc.stats).items()},
            )
        return d

    def close(self) -> None:
        """Cancel every request (their unfinished samples end ``cancelled``) and stop the worker."""
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread is not threading.current_thread():
            self._thread.join()

    # -- the worker ---------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not (self._stop or self._waiting or self._running or self._prefilling or self._tasks):
                    self._cv.wait()
                if self._stop:
                    break
                task = self._tasks.popleft() if self._tasks and not (self._running or self._prefilling) else None
            if task is not None:
                fn, fut = task
                try:
                    fut.set_result(fn())
                except BaseException as e:  # handed to the caller
                    fut.set_exception(e)
                self._dec.clear_work()  # the request sequences; the prefix cache's stay
                continue
            try:
                if self._repin and not (self._running or self._prefilling):
                    self._repin = False
                    for ids in self._pins:
                        self._pin(ids, remember=False)
                self._step()
            except BaseException as e:  # a failed decode fails the requests in it, not the worker
                self._fail_all(e)
        self._shutdown()

    def _step(self) -> None:
        t_step = time.perf_counter()
        out: list[Event] = []
        # 1. sample every live row; retire finished rows and cancelled requests
        rows = [r for req in self._running for r in req.live]
        smps = [req.samplers[r.index] for req in self._running for r in req.live]
        want_lp = any(req.o.logprobs for req in self._running)
        picks = iter(self._dec.sample(rows, smps, self._n_out, want_lp) if rows else ())
        for req in list(self._running):
            still = []
            for r in req.live:
                tok, lp, sc = next(picks)
                if r.accept(tok, lp if req.o.logprobs else None, self._dec, out, sc):
                    still.append(r)
                else:
                    self.cost.finished(req.o.max_tokens, req.o.constrained, r.count)
                    self._free_row(req, r)
            req.live = still
            unstarted = req.rows[req.started :]
            if (still or unstarted) and req.stop_asked():
                out.extend(r.cancelled() for r in still + unstarted)
                for r in still + unstarted:
                    self._free_row(req, r)
                req.live, req.started = [], req.o.n
                self.stats.cancelled += 1
            elif unstarted and req.grow is not None:
                w = max(req.started, min(req.o.n, req.grow()))
                req.joining, req.started = req.rows[req.started : w], w
            if out:
                req.q.put(out)
                out = []
            if not req.live and not req.joining and req.started >= req.o.n:
                self._running.remove(req)
                self._retire(req)
            # (no live rows but some not started: parked until the consumer's rule grows the batch or stops it)
        for req in list(self._prefilling):
            if req.stop_asked():
                self._prefilling.remove(req)
                self.stats.cancelled += 1
                self._end_unstarted(req)
        # 2. admit waiting requests, earliest deadline first (one that does not fit yet holds the others)
        with self._cv:
            load = self._load() if self.pace and self._waiting else (0, 0)  # refusals do not change it
            for req in list(self._waiting):
                if req.stop_asked():
                    self._waiting.remove(req)
                    self.stats.cancelled += 1
                    self._end_unstarted(req)
                elif self.pace and self._hopeless(req, load):
                    self._waiting.remove(req)
                    self.stats.refused_late += 1
                    self._refuse_late(req)
            for req in sorted(self._waiting, key=lambda r: (r.deadline, r.id)):
                if self._tasks or len(self._free) < req.o.n:
                    break
                entry, reuse = self.prefix.match(req.ids)
                if self.pace and not self._keeps_deadlines(req, len(req.ids) - reuse):
                    self.stats.held_for_deadlines += 1
                    break
                need = req.need - reuse
                while need > self._kv_free and self._evict_one(keep=entry):
                    pass
                if need > self._kv_free:
                    break
                self._waiting.remove(req)
                req.seqs = [self._free.pop() for _ in range(req.o.n)]
                req.rows = [Row(i, s, req.o) for i, s in enumerate(req.seqs)]
                req.need = need
                self._kv_free -= need
                self._reuse(req, entry, reuse)
                req.t_admit = time.perf_counter()
                self._prefilling.append(req)
                self.stats.admitted += 1
        # 3. one batch: a token per live row, then prompt chunks
        d = self._dec
        seq_id = d._batch.seq_id
        j = 0
        for req in self._running:
            P = len(req.ids)
            for r in req.live:
                d._tok[j], d._pos[j], d._want[j] = r.last, P + r.count - 1, 1
                seq_id[j][0] = r.seq
                r.bidx = j  # every token before it wants logits: batch index j is output row j
                j += 1
            for r in req.joining:  # late rows: their sequence holds the prompt's cells (copied when it completed);
                # its last cell is decoded again for the logits their first token is sampled from
                ll.llama_memory_seq_rm(self._mem, r.seq, P - 1, -1)
                d._tok[j], d._pos[j], d._want[j] = req.ids[-1], P - 1, 1
                seq_id[j][0] = r.seq
                r.bidx = j
                j += 1
            self.stats.regrow_tokens += len(req.joining)
            req.live, req.joining = req.live + req.joining, []
        n_rows = j
        n_out = j
        budget = min(self.prefill_chunk, d._cap - j)
        done: list[Req] = []
        users = sum(1 for req in self._running if req.live)
        for req in self._prefilling:
            if budget <= 0:
                break
            P = len(req.ids)
            k = min(budget, P - req.pos)
            d._tok[j : j + k] = req.ids[req.pos : req.pos + k]
            d._pos[j : j + k] = np.arange(req.pos, req.pos + k)
            d._want[j : j + k] = 0
            s0 = req.seqs[0]
            for i in range(j, j + k):
                seq_id[i][0] = s0
            req.pos += k
            j += k
            budget -= k
            users += 1
            if req.pos == P:
                d._want[j - 1] = 1
                req.last_bidx = n_out  # its logits row: after the live rows and earlier completed prompts
                n_out += 1
                done.append(req)
        self._n_out = 0
        if j == 0 and self._running:  # only parked requests: wait for their consumers' decisions
            time.sleep(0.0005)
            return
        if j == 0:
            with self._cv:
                stuck = (
                    min(self._waiting, key=lambda r: (r.deadline, r.id))  # the one admission stopped at
                    if self._waiting and not self._prefilling and not self._running
                    else None
                )
                if stuck is not None:
                    self._waiting.remove(stuck)
            if stuck is not None:  # cannot happen when the engine checked n and the context fit; never spin
                stuck.q.put(
                    BackendError(
                        f"request needs {stuck.o.n} rows and {stuck.need} KV cells; the scheduler "
                        f"has {self.rows} rows and {self._dec.n_ctx} cells",
                        fix="lower n or max_tokens, or raise --ctx / --max-seqs",
                    )
                )
                self._close_req(stuck)
            return
        d._decode(j)
        self.cost.observe(n_rows, j - n_rows, time.perf_counter() - t_step)
        self._n_out = n_out
        st = self.stats
        st.steps += 1
        st.row_tokens += n_rows
        st.prefill_tokens += j - n_rows
        st.shared_steps += users > 1
        st.max_requests_in_step = max(st.max_requests_in_step, users)
        st.max_rows_in_step = max(st.max_rows_in_step, n_rows)
        for req in done:  # prompt complete: share its cells with the other n-1 sequences; rows join
            self._prefilling.remove(req)
            self._remember(req)
            for s in req.seqs[1:]:
                ll.llama_memory_seq_cp(self._mem, req.seqs[0], s, -1, -1)
            for r in req.rows:
                r.bidx = req.last_bidx
            if req.grow is not None:
                req.started = max(1, min(req.o.n, req.grow()))
            req.live = req.rows[: req.started]
            self._running.append(req)
            wait = req.t_admit - req.t_submit  # type: ignore[operator]
            req.q.put([Event("prefill", prompt_tokens=len(req.ids), cached_tokens=req.reused, queue_s=wait)])

    def _free_row(self, req: Req, r: Row) -> None:
        ll.llama_memory_seq_rm(self._mem, r.seq, -1, -1)
        with self._cv:
            self._free.append(r.seq)
            self._kv_free += req.o.max_tokens

    def _retire(self, req: Req) -> None:
        with self._cv:
            self._kv_free += len(req.ids) - req.reused
            self._release(req)
        self._close_req(req)
        self.stats.finished += 1

    def _end_unstarted(self, req: Req) -> None:
        """A request cancelled before its rows decoded: every sample ends ``cancelled``, empty."""
        q = (req.t_admit or time.perf_counter()) - req.t_submit  # cancelled while waiting: all of it was a wait
        evs = [Event("finish", seq=i, text="", reason="cancelled", tokens=0, queue_s=q) for i in range(req.o.n)]
        req.q.put(evs)
        if req.seqs:
            for s in req.seqs:
                ll.llama_memory_seq_rm(self._mem, s, -1, -1)
            with self._cv:
                self._free.extend(req.seqs)
                self._kv_free += req.need
                self._release(req)
        self._close_req(req)

    def _close_req(self, req: Req) -> None:
        if not req.over:
            req.over = True
            for s in req.samplers:
                s.free()
            req.samplers = []
            req.q.put(_END)

    def _fail_all(self, e: BaseException) -> None:
        with self._cv:
            reqs = self._running + self._prefilling
            self._running, self._prefilling = [], []
            self._free = list(range(self.rows - 1, -1, -1))
            self._kv_free = self._dec.n_ctx
            self.prefix.entries.clear()  # the KV is cleared below; pinned prefixes are prefilled again
            self._repin = bool(self._pins)
        ll.llama_memory_clear(self._mem, True)
        for req in reqs:
            req.q.put(e)
            self._close_req(req)

    def _shutdown(self) -> None:
        with self._cv:
            reqs = list(self._waiting)
            self._waiting.clear()
            tasks = list(self._tasks)
            self._tasks.clear()
        for req in self._running:
            req.q.put([r.cancelled() for r in req.live])
            self._close_req(req)
        for req in self._prefilling + reqs:
            self._end_unstarted(req)
        self._running, self._prefilling = [], []
        for _, fut in tasks:
            fut.set_exception(UsageError("engine is closed", fix="create a new Runtime/engine"))
        ll.llama_memory_clear(self._mem, True)
