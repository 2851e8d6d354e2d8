"""Run one query, optionally under a plan file: what `edgekit run` calls (and, next, the daemon).

A plan file carries everything it needs: the model (and its sha256), the rendered prompt
template, and the :class:`SamplingOptions` to run with. Options given explicitly next to a plan
are applied over it and reported in ``Result.extra["plan_overrides"]``; the plan's latency
prediction is then withheld (it was made for another configuration), never shown as if it held.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from edgekit.errors import SchemaError, UsageError
from edgekit.models.catalog import DEFAULT_MODEL
from edgekit.models.store import Progress, resolve
from edgekit.engines.openai import OpenAIEngine
from edgekit.runtime import Runtime
from edgekit.runtime.offload import Offload
from edgekit.schemas.options import SamplingOptions
from edgekit.schemas.plan import PlanFile, load_plan
from edgekit.schemas.result import Result


@dataclass
class Query:
    prompt: str
    model: Optional[str] = None  # None: the plan's model, else the default model
    options: dict[str, Any] = field(default_factory=dict)  # only the options the caller set explicitly
    plan: Optional[str] = None
    engine: str = "llama.cpp"
    threads: Optional[int] = None
    n_ctx: int = 8192
    engine_options: dict[str, Any] = field(default_factory=dict)  # e.g. base_url for the openai engine
    cloud_url: Optional[str] = None  # offload low-confidence queries to this OpenAI-compatible server
    cloud_model: Optional[str] = None
    offload: Optional[str] = None  # never | auto | always (default: auto with a cloud)
    score: Optional[str] = None
    threshold: Optional[float] = None


def check_plan_model(p: PlanFile, model: str) -> Optional[str]:
    """Refuse a plan whose model file is not the one it was made for; return a note if unverifiable."""
    want = p.chosen.model_sha256
    have = resolve(model).sha256
    if want and have and want != have:
        raise SchemaError(f"plan was made for {p.chosen.model_id} with sha256 {want[:12]}…, but {model} resolves to a file "
                          f"with sha256 {have[:12]}…", fix=f"re-plan with `edgekit plan` for this model, or `edgekit models pull "
                                                           f"{p.chosen.model_id}` to restore the planned file")
    if not want or not have:
        return "the plan's model checksum could not be checked (no sha256 recorded)"
    return None


def plan_options(p: PlanFile, explicit: dict[str, Any], model: Optional[str]) -> tuple[SamplingOptions, list[str]]:
    """The plan's options with the explicit ones applied over them, and what was overridden."""
    base = p.chosen.options
    overrides = [f"{k}={v!r} (plan: {getattr(base, k)!r})" for k, v in explicit.items() if getattr(base, k) != v]
    if model is not None and model != p.chosen.model_id:
        overrides.insert(0, f"model={model} (plan: {p.chosen.model_id})")
    return base.replace(**explicit) if explicit else base, overrides


def build_offload(q: Query, p: Optional[PlanFile], opts: SamplingOptions) -> Optional[Offload]:
    """The Offload a query runs under: from the flags, else the plan's cloud and calibration; None: local only."""
    cloud = p.cloud if p is not None else None
    url = q.cloud_url or (cloud.base_url if cloud else None)
    if url is None:
        if q.offload not in (None, "never"):
            raise UsageError(f"--offload {q.offload} needs a cloud endpoint", fix="pass --cloud-url http://host:port/v1 (and --cloud-model)")
        return None
    if q.offload == "never":
        return None
    model = q.cloud_model or (cloud.model if cloud else None)
    if not model:
        raise UsageError("offload needs the cloud's model name", fix="pass --cloud-model NAME (as the server knows it)")
    cal = p.offload if p is not None else None
    if cal is not None and cal.model_sha256 and p.chosen.model_sha256 and cal.model_sha256 != p.chosen.model_sha256:
        raise SchemaError(f"the plan's offload threshold was calibrated for another model file (sha256 {cal.model_sha256[:12]}…, "
                          f"the plan runs {p.chosen.model_sha256[:12]}…)",
                          fix=f"re-run `edgekit calibrate --plan {q.plan} ...` for this model")
    engine = OpenAIEngine(model, base_url=url, latency_prior_s=cloud.latency_s if cloud else None)
    local_s = p.predicted.latency_at_percentile_s if p is not None and cal is not None else None
    return Offload(cloud=engine, mode=q.offload or "auto", calibration=cal, score=q.score, threshold=q.threshold,  # type: ignore[arg-type]
                   local_predicted_s=local_s)


def run_query(q: Query, progress: Optional[Progress] = None) -> Result:
    notes: list[str] = []
    overrides: list[str] = []
    text = q.prompt
    p = None
    if q.plan:
        p = load_plan(q.plan)
        opts, overrides = plan_options(p, q.options, q.model)
        model = q.model or p.chosen.model_id
        if model == p.chosen.model_id:
            note = check_plan_model(p, model)
            if note:
                notes.append(note)
        text = p.chosen.prompt.replace("{question}", q.prompt)
    else:
        opts = SamplingOptions.build(**q.options)
        model = q.model or DEFAULT_MODEL
    if opts.aggregate == "first_verified":
        raise UsageError("this configuration aggregates with first_verified, which needs a verifier for every query",
                         fix="use the library: Runtime.generate(..., options=load_plan(P).chosen.options, verifier=...)")
    off = build_offload(q, p, opts)
    with Runtime(model, engine=q.engine, threads=q.threads, n_ctx=q.n_ctx, max_n=opts.n, progress=progress,
                 offload=off, **q.engine_options) as rt:
        res = rt.generate(text, opts)
    if p is not None:
        res.extra["plan"] = q.plan
        if overrides:
            res.extra["plan_overrides"] = overrides
            notes.append("the plan's latency prediction does not apply: options differ from the plan's (" + "; ".join(overrides) + ")")
        else:
            res.extra["predicted_latency_s"] = p.predicted.latency_at_percentile_s
            res.extra["prediction_percentile"] = p.percentile
            res.extra["prediction_method"] = p.predicted.method
    if notes:
        res.extra["notes"] = notes
    return res
