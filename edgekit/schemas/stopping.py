"""Stopping rules for a vote over parallel samples: when the answers so far already settle it.

A rule is checked after every sample that finishes (the runtime, live) or in the order the samples
of an accuracy table would have finished (:mod:`edgekit.evaluate.replay`, offline). Both use
:class:`Tally`, so the replayed figures and the runtime's decisions come from one function.

- ``none``: every sample runs to its end (majority@n as before).
- ``decided``: stop when the leader cannot be overtaken, nor tied, even if every unfinished sample
  voted for the runner-up: ``v1 > v2 + unfinished``. Exact: the vote's answer is the one all n
  samples would have given (samples that end without an answer only make it come sooner).
- ``beta:<c>``: Adaptive-Consistency's Beta criterion (Aggarwal et al., EMNLP 2023): with v1, v2
  the two largest vote counts, stop when P(p1 > p2) = P(x > 1/2), x ~ Beta(v1 + 1, v2 + 1), reaches
  c. For integer parameters this is a binomial tail (no numerical integration):
  ``P(x > 1/2) = P(Binomial(v1 + v2 + 1, 1/2) <= v1)``. Also stops when ``decided`` would.
- ``adaptive:<n0>,<n_max>[,<c>]``: start n0 samples; stop by ``beta:<c>`` (default 0.95) or
  ``decided`` over n_max; as soon as the started samples cannot meet the rule even if every one
  still running voted for the leader, start the other n_max - n0 (sharing the prompt's KV cells).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

FORMS = "none | decided | beta:<c> with 0.5 < c < 1 | adaptive:<n0>,<n_max>[,<c>] with 1 <= n0 < n_max"
DEFAULT_CONFIDENCE = 0.95
_RE = re.compile(r"^(none|decided|beta:([0-9.]+)|adaptive:(\d+),(\d+)(?:,([0-9.]+))?)$")


@dataclass(frozen=True)
class StopRule:
    kind: Literal["none", "decided", "beta", "adaptive"] = "none"
    confidence: float | None = None  # beta / adaptive
    n0: int | None = None  # adaptive
    n_max: int | None = None

    def __str__(self) -> str:
        if self.kind == "beta":
            return f"beta:{self.confidence:g}"
        if self.kind == "adaptive":
            c = "" if self.confidence == DEFAULT_CONFIDENCE else f",{self.confidence:g}"
            return f"adaptive:{self.n0},{self.n_max}{c}"
        return self.kind

    @property
    def stops(self) -> bool:
        return self.kind != "none"

    def first_rows(self, n: int) -> int:
        """Samples started at first for a request of n samples."""
        return self.n0 if self.kind == "adaptive" and self.n0 is not None else n


def parse_stop_rule(text: str | None) -> StopRule:
    """``none`` | ``decided`` | ``beta:<c>`` | ``adaptive:<n0>,<n_max>[,<c>]``; ValueError saying what is wrong
    (callers name the forms, :data:`FORMS`, in their fix)."""
    s = (text or "none").strip().lower()
    m = _RE.match(s)
    if not m:
        raise ValueError("unknown stopping rule")
    if s in ("none", "decided"):
        return StopRule(s)  # type: ignore[arg-type]
    c_text = m.group(2) if s.startswith("beta:") else m.group(5)
    try:
        c = DEFAULT_CONFIDENCE if c_text is None else float(c_text)
    except ValueError:
        raise ValueError(f"{c_text!r} is not a number") from None
    if not 0.5 < c < 1:
        raise ValueError("the confidence must lie in (0.5, 1)")
    if s.startswith("beta:"):
        return StopRule("beta", confidence=c)
    n0, n_max = int(m.group(3)), int(m.group(4))
    if not 1 <= n0 < n_max:
        raise ValueError("adaptive needs 1 <= n0 < n_max")
    return StopRule("adaptive", confidence=c, n0=n0, n_max=n_max)


def beta_leader_prob(v1: int, v2: int) -> float:
    """P(x > 1/2) for x ~ Beta(v1 + 1, v2 + 1): the posterior probability that the leader's share
    exceeds the runner-up's (uniform prior), exactly: P(Binomial(v1 + v2 + 1, 1/2) <= v1)."""
    m = v1 + v2 + 1
    return sum(math.comb(m, j) for j in range(v1 + 1)) / 2.0**m


def decided(v1: int, v2: int, unfinished: int) -> bool:
    """The leader wins outright even if every unfinished sample voted for the runner-up."""
    return v1 > v2 + unfinished


@dataclass
class Tally:
    """The votes of one query's samples so far, and what a rule makes of them."""

    rule: StopRule
    n: int  # samples the query may draw in all (n_max for adaptive)
    started: int = 0
    finished: int = 0
    votes: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.started = self.rule.first_rows(self.n)

    def top2(self) -> tuple[int, int]:
        c = sorted(self.votes.values(), reverse=True) + [0, 0]
        return c[0], c[1]

    def add(self, answer: str | None) -> None:
        """A sample finished; ``answer`` None when it gave none (truncated, nothing extracted)."""
        self.finished += 1
        if answer is not None:
            self.votes[answer] += 1

    def _met(self, v1: int, v2: int, unfinished: int) -> bool:
        if decided(v1, v2, unfinished):
            return True
        return self.rule.kind in ("beta", "adaptive") and v1 > 0 and beta_leader_prob(v1, v2) >= self.rule.confidence

    def should_stop(self) -> bool:
        """Stop now: the samples still running (and, for adaptive, those not started) are not needed."""
        if not self.rule.stops or self.finished >= self.n:
            return False
        v1, v2 = self.top2()
        return self._met(v1, v2, self.n - self.finished)

    def should_grow(self) -> bool:
        """Adaptive: start the rest now, because the started samples cannot meet the rule even if every one still
        running voted for the leader."""
        if self.rule.kind != "adaptive" or self.started >= self.n or self.should_stop():
            return False
        v1, v2 = self.top2()
        running = self.started - self.finished
        return not self._met(v1 + running, v2, self.n - self.started)

    def grow(self) -> int:
        """Mark every sample started; how many were added."""
        k = self.n - self.started
        self.started = self.n
        return k
