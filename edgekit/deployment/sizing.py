"""How long each stage of `edgekit deploy` will take, from the device profile's latency model: the
candidates, what one tune problem costs (n samples plus the greedy one, every sample at the budget: an
upper bound), what one query of the fastest configuration costs, and the least time any plan needs."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import UsageError
from edgekit.perfmodel.fit import fit
from edgekit.perfmodel.model import PerfModel
from edgekit.schemas.profile import load_profile

CHARS_PER_TOKEN = 4.0  # English text; the chat template adds CHAT_TOKENS
CHAT_TOKENS = 24
LOAD_S = 5.0  # a model load and warm-up, per model and stage (estimated)
CLOUD_S_UNKNOWN = 2.0  # a cloud call when none was timed (estimated)


@dataclass
class Candidate:
    spec: str  # what to load (catalogue id, path)
    id: str
    sha256: str | None


def safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s)


def candidates(models: Sequence[str] | None) -> list[Candidate]:
    """The given models (each resolved: a missing catalogue model is fetched, an unknown one is one line), or
    every catalogue model cached here whose file fits in the memory free now (with a third to spare)."""
    from edgekit.models.catalog import CATALOG
    from edgekit.models.store import is_cached, resolve

    if models:
        out = []
        for spec in dict.fromkeys(models):
            r = resolve(spec)
            out.append(Candidate(spec, r.id, r.sha256))
        return out
    import psutil

    free = psutil.virtual_memory().available
    cached = [e for e in CATALOG.values() if is_cached(e)]
    fit_ = [e for e in cached if e.size_bytes * 1.33 + 300e6 < free]
    if not fit_:
        raise UsageError(
            "no catalogue model is cached here" if not cached else "no cached catalogue model fits in free memory",
            fix="pull one (`edgekit models pull qwen2.5-coder-0.5b-instruct`) or pass --models ID,...",
        )
    return [Candidate(e.id, e.id, e.sha256) for e in sorted(fit_, key=lambda e: e.size_bytes)]


def perf_models(profile_path: Path, ids: Sequence[str]) -> dict[str, PerfModel]:
    prof = load_profile(profile_path)
    got = {mp.model.id: fit(mp, str(profile_path)) for mp in prof.complete_models() if mp.model.id in ids}
    missing = [i for i in ids if i not in got]
    if missing:
        raise UsageError(
            f"{profile_path} has no complete entry for {', '.join(missing)}",
            fix=f"run `edgekit profile --quick --append -o {profile_path} --model {missing[0]}`",
        )
    return got


def prompt_tokens(problems) -> float:
    """Mean prompt length in tokens, estimated from characters (no tokenizer is loaded for sizing)."""
    return sum(len(p.prompt) for p in problems) / max(1, len(problems)) / CHARS_PER_TOKEN + CHAT_TOKENS


def eval_cost_s(pm: PerfModel, tokens: float, budget: int, n: int) -> float:
    """One tune problem: n samples in one batch plus the greedy one, each run to the budget (an upper bound)."""
    return pm.predict(tokens, budget, n).latency_s + pm.predict(tokens, budget, 1).latency_s


def query_s(pm: PerfModel, tokens: float, budget: int) -> float:
    """One query of the cheapest configuration worth planning: one sample, at the budget."""
    return pm.predict(tokens, budget, 1).latency_s


def cloud_s(engine) -> float:
    lat = getattr(engine, "latency", None)
    return lat.p95() if lat is not None and lat.count else CLOUD_S_UNKNOWN


def minimum_s(
    tune_costs: Sequence[float],
    batch: int,
    fastest_s: float,
    calibrate_n: int,
    cloud_query_s: float,
    verify_n: int,
) -> float:
    """The least time any plan needs from here: one batch of tune problems per model still to tune, the
    calibration set (local and cloud), the verify minimum, and the model loads."""
    return (
        sum(tune_costs) * batch
        + calibrate_n * (fastest_s + cloud_query_s)
        + verify_n * fastest_s
        + LOAD_S * (len(tune_costs) + 2)
    )
