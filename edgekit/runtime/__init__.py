"""The runtime: any engine, n samples per query, aggregation, confidence, deadlines, timings.

Its options and results (SamplingOptions, CancelToken, Result, ...) live in edgekit.schemas; the
public API re-exports them from `edgekit`.
"""

from edgekit.runtime.aggregate import get_extractor, majority_vote
from edgekit.runtime.core import DEFAULT_MODEL, Runtime

__all__ = ["Runtime", "DEFAULT_MODEL", "get_extractor", "majority_vote"]
