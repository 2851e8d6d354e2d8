"""edgekit: language models on edge devices, inside a latency budget.

The public API (everything else is internal and may move)::

    from edgekit import Runtime, SamplingOptions, CancelToken
    rt = Runtime("qwen2.5-coder-0.5b-instruct")
    r = rt.generate("How many wheels do 4 cars have?", n=8, max_tokens=128, seed=0)

Importing edgekit loads nothing heavy: names resolve on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from edgekit.errors import DeadlineUnmeetable, EdgekitError
from edgekit.schemas import __version__

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from edgekit.deployment import DeployReport, deploy
    from edgekit.engines import Capabilities, Engine, EngineInfo, Event
    from edgekit.engines.llamacpp import LlamaCppEngine
    from edgekit.engines.openai import OpenAIEngine
    from edgekit.plan import plan
    from edgekit.power import best_meter
    from edgekit.profile.sweep import profile_model
    from edgekit.runtime import Runtime
    from edgekit.schemas.options import CancelToken, SamplingOptions
    from edgekit.schemas.plan import PlanFile, load_plan
    from edgekit.schemas.result import Confidence, Result, Sample, Timings

_LAZY = {
    "Runtime": "edgekit.runtime",
    "Engine": "edgekit.engines",
    "EngineInfo": "edgekit.engines",
    "Capabilities": "edgekit.engines",
    "Event": "edgekit.engines",
    "LlamaCppEngine": "edgekit.engines.llamacpp",
    "OpenAIEngine": "edgekit.engines.openai",
    "SamplingOptions": "edgekit.schemas.options",
    "CancelToken": "edgekit.schemas.options",
    "Result": "edgekit.schemas.result",
    "Sample": "edgekit.schemas.result",
    "Timings": "edgekit.schemas.result",
    "Confidence": "edgekit.schemas.result",
    "PlanFile": "edgekit.schemas.plan",
    "load_plan": "edgekit.schemas.plan",
    "plan": "edgekit.plan",
    "deploy": "edgekit.deployment",
    "DeployReport": "edgekit.deployment",
    "profile_model": "edgekit.profile.sweep",
    "best_meter": "edgekit.power",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgekit' has no attribute {name!r}")


__all__ = [
    "Runtime",
    "Engine",
    "EngineInfo",
    "Capabilities",
    "Event",
    "LlamaCppEngine",
    "OpenAIEngine",
    "SamplingOptions",
    "CancelToken",
    "Result",
    "Sample",
    "Timings",
    "Confidence",
    "PlanFile",
    "load_plan",
    "plan",
    "deploy",
    "DeployReport",
    "profile_model",
    "best_meter",
    "EdgekitError",
    "DeadlineUnmeetable",
    "__version__",
]
