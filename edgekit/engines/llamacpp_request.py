"""A request's state inside the continuous-batching scheduler (:mod:`edgekit.engines.llamacpp_sched`)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from queue import SimpleQueue

from edgekit.engines.base import Cancel, Grow
from edgekit.engines.llamacpp_core import Row
from edgekit.engines.llamacpp_prefix import Prefix
from edgekit.schemas.options import SamplingOptions


@dataclass
class SchedulerStats:
    """Counters since load (read them from any thread; a snapshot is :meth:`Scheduler.snapshot`)."""

    steps: int = 0  # llama_decode calls made by the scheduler
    row_tokens: int = 0  # tokens decoded for live rows (one per row per step)
    prefill_tokens: int = 0
    shared_steps: int = 0  # steps whose batch held rows (or prompt) of two or more requests
    max_requests_in_step: int = 0
    max_rows_in_step: int = 0
    admitted: int = 0
    finished: int = 0
    cancelled: int = 0
    regrow_tokens: int = 0  # prompt-last tokens decoded again for rows that joined late (adaptive stopping)
    held_for_deadlines: int = 0  # steps in which admission waited so admitted requests keep their deadlines
    refused_late: int = 0  # waiting requests refused: they could no longer finish by their deadline


class Req:
    __slots__ = (
        "ids",
        "o",
        "samplers",
        "cancel",
        "q",
        "t_submit",
        "t_admit",
        "need",
        "seqs",
        "rows",
        "live",
        "pos",
        "last_bidx",
        "abandoned",
        "over",
        "id",
        "grow",
        "started",
        "joining",
        "reused",
        "prefix",
        "deadline",
    )

    def __init__(
        self, rid: int, ids: list[int], o: SamplingOptions, samplers: list, cancel: Cancel | None, grow: Grow | None
    ):
        self.id, self.ids, self.o, self.samplers, self.cancel, self.grow = rid, ids, o, samplers, cancel, grow
        self.started = o.n  # rows started (adaptive stopping: fewer at first, the rest join when grow() asks)
        self.joining: list[Row] = []  # rows that join at the next decode (their prompt-last token decoded again)
        self.q: SimpleQueue = SimpleQueue()
        self.t_submit = time.perf_counter()
        self.deadline = self.t_submit + o.deadline_s if o.deadline_s else math.inf  # admission order (EDF)
        self.t_admit: float | None = None
        self.need = len(ids) + o.n * o.max_tokens  # KV cells this request may occupy at most
        self.seqs: list[int] = []
        self.rows: list[Row] = []
        self.live: list[Row] = []
        self.pos = 0  # prompt tokens decoded so far (or copied from a cached prefix)
        self.reused = 0  # prompt tokens copied from a cached prefix
        self.prefix: Prefix | None = None  # the entry they came from, held until the request ends
        self.last_bidx = -1  # batch index of the prompt's last token, in the step that completed it
        self.abandoned = False  # the consumer stopped reading
        self.over = False

    def stop_asked(self) -> bool:
        return self.abandoned or (self.cancel is not None and bool(self.cancel()))
