"""Stopping rules as one more planner knob: replayed rows added to each table, priced step by step.

Each table with per-sample records gets, for every stopping rule asked for (default ``decided``,
which never changes the vote's answer, and replaces the plain vote's rows it repeats) and every
majority row's (budget, k >= 2), a row replayed by
:mod:`edgekit.evaluate.replay`: its accuracy (``decided``: exactly majority@k's) and the steps the
batch ran with r rows live. The latency of such a row is priced by its own row counts
(``PerfModel.predict_arrays(..., live_steps=)``, :meth:`PerfModel.decode_live_s`) instead of k rows for the
whole expected steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgekit.evaluate.replay import add_stop_rows
from edgekit.perfmodel.model import PerfModel
from edgekit.schemas.table import AccuracyRow, AccuracyTable

DEFAULT_STOP_RULES = ("decided",)


def with_stop_rows(table: AccuracyTable, rules: Sequence[str]) -> tuple[AccuracyTable, str | None]:
    """The table with replayed stopping-rule rows added (in memory), and a note when it cannot have them."""
    if not any(r != "none" for r in rules):
        return table, None
    if not table.problems or any(not p.samples for p in table.problems):
        return table, f"{table.model_id}: no per-sample records, so no stopping-rule rows (rebuild with `edgekit eval`)"
    t = add_stop_rows(table, rules)
    twins = {(r.budget, r.k) for r in t.rows if r.stop_rule == "decided"}
    # a decided row has the plain vote's accuracy exactly and never more steps: the plain row only repeats it
    # (and would count twice among the estimates the chosen one is the best of)
    keep = [r for r in t.rows if not (r.stop_rule is None and r.aggregation == "majority" and (r.budget, r.k) in twins)]
    return t.model_copy(update={"rows": keep}), None


def live_latency(pm: PerfModel, table: AccuracyTable, row: AccuracyRow) -> dict:
    """Per-problem predicted latency of a replayed row (seconds): mean, p50 and p95 over the table's problems."""
    rep = row._replay
    if rep is None:
        raise ValueError("row has no replay")
    I = np.array([p.prompt_tokens for p in table.problems], dtype=float)
    t = pm.prefill_s(I) + pm.decode_live_s(I, rep.live_steps, rep.steps)
    return {"mean_s": float(t.mean()), "p50_s": float(np.median(t)), "p95_s": float(np.percentile(t, 95))}
