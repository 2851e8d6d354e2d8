"""The runtime: any engine, n samples per query, aggregation, confidence, deadlines, timings."""

from edgekit.runtime.aggregate import get_extractor, majority_vote
from edgekit.runtime.core import DEFAULT_MODEL, Runtime
from edgekit.schemas.options import CancelToken, SamplingOptions
from edgekit.schemas.result import Confidence, Result, Sample, Timings

__all__ = [
    "Runtime",
    "DEFAULT_MODEL",
    "SamplingOptions",
    "CancelToken",
    "Result",
    "Sample",
    "Timings",
    "Confidence",
    "get_extractor",
    "majority_vote",
]
