"""Deadline-aware batch cap for the continuous-batching scheduler: what a step costs, and whether
admitting one more request keeps the deadlines of the requests already admitted.

A step of r rows does not cost r steps of one: on a 2-core EPYC (Qwen2.5-Coder-0.5B, measured in
benchmarks/parallel_sampling.py) a step of 2 rows costs 1.8x a step of 1, 4 rows 2.7x, 8 rows 4.4x.
Batching everything maximises throughput and makes the first request in line pay for the batch
(13.5 s instead of 3.1 s alone with 8 clients). :class:`StepCost` learns the seconds per step by row
count from the scheduler's own steps (an EWMA per row count; prompt tokens priced per token from
mixed steps); :func:`keeps_deadlines` answers the admission question with it, conservatively:

- a request needs as many more steps as requests of its kind (same ``max_tokens``, constrained or
  not) have used on average (an EWMA of finished rows; ``max_tokens`` until one finished), less what
  its longest row has decoded -- never less than a quarter of what ``max_tokens`` still allows (a
  row past the average may run to the end); a prefilling one its prompt's remaining chunks first.
  The worst case (``max_tokens``) would call a JSON action that stops at 20 of 32 tokens late and
  drop its protection exactly when it needs it. Whether a newcomer would make it late is judged
  with a pessimistic count instead: the 0.9-quantile of its kind's last 32 finished rows (requests
  that ran longer than the mean were the ones cut at their deadline in ``benchmarks/daemon_load.py``);
- a waiting request is refused (503) once its predicted time, beside the rows in flight, exceeds
  ``margin`` of what is left to its deadline (admitted with less, the VM's noise would cut it);
- every step after the admission costs what a step of all rows then in flight costs (rows that
  finish earlier only make it cheaper), plus the new request's uncached prompt tokens;
- a row count never measured costs the nearest measured one scaled linearly (an upper bound: the
  cost per row only falls with more rows); with nothing measured yet, nothing is held back.

Only requests with a deadline no later than the candidate's are protected (earliest deadline first:
a more urgent newcomer goes in even if a lax running request then finishes later), and only those
that would still make their deadline without it (holding the line for a request that is late
anyway would only make others late too). ``margin`` keeps a share of each deadline in reserve for
the VM's noise; a request predicted to finish inside that reserve (but before its deadline) stays
protected -- dropping it there let newcomers pile in exactly when a noisy step had eaten its slack.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edgekit.errors import DeadlineUnmeetable

RECENT = 32  # finished rows per kind kept for the pessimistic step count
HIGH_Q = 0.9  # its quantile: protecting an admitted request assumes it runs this long

if TYPE_CHECKING:
    from edgekit.engines.llamacpp_request import Req


class StepCost:
    """Seconds per scheduler step, learned online: pure decode steps by row count, prompt tokens
    (prefill chunks) per token from steps that carry them."""

    def __init__(self, rows: int, alpha: float = 0.2):
        self.alpha = alpha
        self.decode: list[float | None] = [None] * (rows + 1)  # [r]: EWMA seconds of a step of r rows
        self.per_prompt_token: float | None = None
        self._prior: set[int] = set()  # row counts whose cost is a seed, replaced by the first measurement
        self.lengths: dict[tuple[int, bool], float] = {}  # (max_tokens, constrained) -> EWMA tokens of finished rows
        self.recent: dict[tuple[int, bool], deque] = {}  # ... -> the last RECENT finished rows' tokens

    def _ewma(self, old: float | None, new: float) -> float:
        return new if old is None else old + self.alpha * (new - old)

    def observe(self, rows: int, prompt_tokens: int, seconds: float) -> None:
        if not (seconds > 0 and math.isfinite(seconds)) or rows >= len(self.decode):
            return
        if prompt_tokens == 0:
            if rows > 0:
                old = None if rows in self._prior else self.decode[rows]
                self._prior.discard(rows)
                self.decode[rows] = self._ewma(old, seconds)
            return
        base = self.step_s(rows) if rows else 0.0
        if base is None:
            return
        self.per_prompt_token = self._ewma(self.per_prompt_token, max(0.0, seconds - base) / prompt_tokens)

    def finished(self, max_tokens: int, constrained: bool, tokens: int) -> None:
        """A row ended by EOS, a stop string or its budget (not a cancelled one) after ``tokens`` tokens."""
        key = (max_tokens, constrained)
        self.lengths[key] = self._ewma(self.lengths.get(key), float(tokens))
        self.recent.setdefault(key, deque(maxlen=RECENT)).append(float(tokens))

    def steps_left(self, max_tokens: int, constrained: bool, done: int, q: float | None = None) -> float:
        """Decode steps a request of this kind is expected to need after ``done``; with ``q``, the
        q-quantile of recent finished rows of its kind instead of their mean (the largest of them
        while fewer than 4 finished; ``max_tokens`` while none did)."""
        room = max(0, max_tokens - done)
        key = (max_tokens, constrained)
        expect = self.lengths.get(key, float(max_tokens))
        seen = self.recent.get(key)
        if q is not None and seen:
            expect = float(np.quantile(list(seen), q)) if len(seen) >= 4 else max(expect, max(seen))
        return min(float(room), max(expect - done, room / 4))

    def seed(self, costs: dict[int, float]) -> None:
        """Prior step costs (seconds per step of r rows, e.g. from a device profile) for row counts
        not measured yet."""
        for r, s in costs.items():
            if 0 < r < len(self.decode) and self.decode[r] is None and s > 0:
                self.decode[r] = float(s)
                self._prior.add(r)

    def step_s(self, rows: int) -> float | None:
        """Seconds of a step of ``rows`` rows; None while no step has been measured."""
        if rows <= 0:
            return 0.0
        rows = min(rows, len(self.decode) - 1)
        if self.decode[rows] is not None:
            return self.decode[rows]
        lo = next((k for k in range(rows - 1, 0, -1) if self.decode[k] is not None), None)
        hi = next((k for k in range(rows + 1, len(self.decode)) if self.decode[k] is not None), None)
        if lo is not None and hi is not None:
            a, b = self.decode[lo], self.decode[hi]
            return a + (b - a) * (rows - lo) / (hi - lo)  # type: ignore[operator]
        if lo is not None:
            return self.decode[lo] * rows / lo  # type: ignore[operator]
        return self.decode[hi] if hi is not None else None  # cost never falls with more rows

    def prefill_s(self, tokens: int) -> float:
        return 0.0 if tokens <= 0 or self.per_prompt_token is None else tokens * self.per_prompt_token


@dataclass
class InFlight:
    """What the admission check needs of a request already admitted."""

    deadline: float  # perf_counter time; inf: none
    steps_left: float  # decode steps it is expected to need still
    prompt_left: int  # prompt tokens it still has to prefill
    steps_hi: float | None = None  # a pessimistic count (a high quantile of its kind); None: steps_left


def keeps_deadlines(
    cost: StepCost,
    now: float,
    flight: Iterable[InFlight],
    rows_now: int,
    *,
    deadline: float,
    rows: int,
    prompt_tokens: int,
    margin: float = 0.9,
) -> bool:
    """Whether a request with ``deadline`` that adds ``rows`` rows and ``prompt_tokens`` uncached
    prompt tokens can be admitted without making a protected request in ``flight`` late."""
    flight = list(flight)
    c_now, c_after = cost.step_s(rows_now), cost.step_s(rows_now + rows)
    if c_now is None or c_after is None:
        return True  # nothing measured yet
    pending = sum(f.prompt_left for f in flight)
    for f in flight:
        if not math.isfinite(f.deadline) or f.deadline > deadline:
            continue
        left = f.deadline - now
        alone = f.steps_left * c_now + cost.prefill_s(pending)
        if alone > left:
            continue  # late anyway: holding the line would not save it
        budget = left * margin  # inside the margin but not past the deadline: still protected (it needs it most)
        hi = f.steps_left if f.steps_hi is None else max(f.steps_hi, f.steps_left)
        if hi * c_after + cost.prefill_s(pending + prompt_tokens) > budget:
            return False
    return True


class PaceOps:
    """The scheduler's side of the cap (a mixin of :class:`edgekit.engines.llamacpp_sched.Scheduler`,
    which owns ``cost``, ``margin``, ``rows``, ``prefix``, ``_running``, ``_prefilling``, ``_close_req``)."""

    cost: StepCost
    margin: float
    rows: int

    def _load(self) -> tuple[int, int]:
        """(rows in flight, prompt tokens still to prefill) of the admitted requests."""
        rows = sum(len(q.live) + len(q.joining) + q.o.n - q.started for q in self._running)
        rows += sum(q.o.n for q in self._prefilling)
        return rows, sum(len(q.ids) - q.pos for q in self._prefilling)

    def _keeps_deadlines(self, req: Req, prompt_tokens: int) -> bool:
        flight = []
        for q in self._running:
            done = max((r.count for r in q.live + q.joining), default=0)
            steps = self.cost.steps_left(q.o.max_tokens, q.o.constrained, done)
            hi = self.cost.steps_left(q.o.max_tokens, q.o.constrained, done, q=HIGH_Q)
            flight.append(InFlight(q.deadline, steps, 0, hi))
        for q in self._prefilling:
            steps = self.cost.steps_left(q.o.max_tokens, q.o.constrained, 0)
            hi = self.cost.steps_left(q.o.max_tokens, q.o.constrained, 0, q=HIGH_Q)
            flight.append(InFlight(q.deadline, steps, len(q.ids) - q.pos, hi))
        if not flight:
            return True
        return keeps_deadlines(
            self.cost,
            time.perf_counter(),
            flight,
            self._load()[0],
            deadline=req.deadline,
            rows=req.o.n,
            prompt_tokens=prompt_tokens,
            margin=self.margin,
        )

    def _hopeless(self, req: Req, load: tuple[int, int]) -> bool:
        """A waiting request that the load (``_load()``, taken once per step) has made late: admitted
        now, beside the rows in flight, its prompt + the steps its kind takes would end after its
        deadline, though alone they would have fitted when it arrived. It is refused at once instead of
        running to be cut (and slowing the others meanwhile). A request whose deadline was shorter than
        that from the start asked for what it can get by then (it runs and is cut at the deadline,
        flagged): it is not refused."""
        if req.deadline == math.inf:
            return False
        rows_now, pending = load
        alone, loaded = self.cost.step_s(req.o.n), self.cost.step_s(rows_now + req.o.n)
        if alone is None or loaded is None:
            return False
        steps = self.cost.steps_left(req.o.max_tokens, req.o.constrained, 0)
        own = len(req.ids) - self.prefix.peek(req.ids)
        if req.t_submit + self.cost.prefill_s(own) + steps * alone > req.deadline:
            return False  # an anytime request
        now = time.perf_counter()  # admitted with less than the margin's reserve left, noise would cut it
        return self.cost.prefill_s(own + pending) + steps * loaded > (req.deadline - now) * self.margin

    def _refuse_late(self, req: Req) -> None:
        left = max(0.0, req.deadline - time.perf_counter())
        busy = sum(q.o.max_tokens for q in self._running + self._prefilling) * (self.cost.step_s(self.rows) or 0.0)
        req.q.put(
            DeadlineUnmeetable(
                f"this request can no longer finish by its deadline ({left:.2f} s left; the batch in flight "
                f"and the requests ahead of it come first)",
                fix="retry later, raise edgekit.deadline_s, or lower max_tokens",
                retry_after_s=max(1.0, busy / max(1, len(self._running) + len(self._prefilling))),
            )
        )
        self._close_req(req)
