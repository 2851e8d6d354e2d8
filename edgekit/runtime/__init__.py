"""The runtime: load a model once, draw n samples in one batch, aggregate, report timings."""

from edgekit.runtime.aggregate import get_extractor, majority_vote
from edgekit.runtime.backend import Backend, BackendInfo, Event, GenerationRequest
from edgekit.runtime.core import Runtime
from edgekit.runtime.result import Confidence, Result, Sample, Timings

__all__ = [
    "Backend", "BackendInfo", "Event", "GenerationRequest", "Runtime", "Result", "Sample", "Timings",
    "Confidence", "get_extractor", "majority_vote",
]
