"""One-shot query: what `edgekit run` calls (model resolution, plan file, generate)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from edgekit.runtime.core import Runtime, validate_sampling
from edgekit.runtime.result import Result


@dataclass
class RunOptions:
    model: str = "qwen2.5-coder-0.5b-instruct"
    n: int = 1
    max_tokens: int = 256
    temperature: Optional[float] = None
    top_p: float = 0.95
    seed: Optional[int] = None
    aggregate: str = "majority"
    extractor: str = "number"
    stop: list[str] = field(default_factory=list)
    system: Optional[str] = None
    threads: Optional[int] = None
    n_ctx: int = 8192
    plan: Optional[str] = None


def run_query(prompt: str, opts: RunOptions, progress=None) -> Result:
    predicted = method = None
    template = None
    if opts.plan:
        from edgekit.plan.apply import apply_plan

        opts, predicted, method, template = apply_plan(opts.plan, opts)
    temperature = opts.temperature if opts.temperature is not None else (0.0 if opts.n == 1 else 0.8)
    validate_sampling(opts.max_tokens, opts.n, temperature, opts.top_p, 64)
    rt = Runtime(opts.model, threads=opts.threads, n_ctx=opts.n_ctx, max_n=max(opts.n, 1), progress=progress)
    try:
        text = template.format(question=prompt) if template else prompt
        res = rt.generate(text, max_tokens=opts.max_tokens, n=opts.n, temperature=temperature, top_p=opts.top_p,
                          seed=opts.seed, stop=opts.stop, aggregate=opts.aggregate, extractor=opts.extractor,
                          system=opts.system)
    finally:
        rt.close()
    if predicted is not None:
        res.extra["predicted_latency_s"] = predicted
        res.extra["prediction_method"] = method
        res.extra["plan"] = opts.plan
    return res
