"""Answer one query, with or without a plan file: what `edgekit run` calls (the daemon uses its plan-model
check and offload set-up, `edgekit calibrate` its plan-model check). The runtime floor: no planner, no
terminal rendering.

A plan file carries everything it needs: the model (and its sha256), the rendered prompt
template, and the :class:`SamplingOptions` to run with. Options given explicitly next to a plan
are applied over it and reported in ``Result.extra["plan_overrides"]``; the plan's latency
prediction is then withheld (it was made for another configuration), never shown as if it held.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgekit import engines
from edgekit.engines.openai import OpenAIEngine
from edgekit.errors import EdgekitError, SchemaError, UsageError
from edgekit.host.threads import check_threads as check_usable_threads
from edgekit.models.catalog import DEFAULT_MODEL
from edgekit.models.store import Progress, resolve
from edgekit.runtime.core import Runtime
from edgekit.runtime.routing import Offload
from edgekit.schemas.checks import check_base_url, check_ctx, check_gpu_layers, check_text, check_threads
from edgekit.schemas.offload import SCORES
from edgekit.schemas.options import SamplingOptions
from edgekit.schemas.plan import PlanFile, load_plan
from edgekit.schemas.result import Result


@dataclass
class Query:
    prompt: str
    model: str | None = None  # None: the plan's model, else the default model
    options: dict[str, Any] = field(default_factory=dict)  # only the options the caller set explicitly
    plan: str | None = None
    engine: str = "llama.cpp"
    threads: int | None = None
    gpu_layers: int | None = None  # llama.cpp: layers offloaded to the GPU (-1: all); None: the engine's default (0)
    n_ctx: int = 8192
    engine_options: dict[str, Any] = field(default_factory=dict)  # e.g. base_url for the openai engine
    cloud_url: str | None = None  # offload low-confidence queries to this OpenAI-compatible server
    cloud_model: str | None = None
    offload: str | None = None  # never | auto | always (default: auto with a cloud)
    score: str | None = None
    threshold: float | None = None


log = logging.getLogger("edgekit")


def check_query(q: Query) -> None:
    """Everything about a query that can be checked without loading a model: the prompt's text,
    threads, context size, the engine's name, whether --base-url applies to it, and the offload
    options (cloud URL, mode, score, threshold)."""
    check_text(q.prompt, "the prompt")
    if not q.prompt.strip():
        raise UsageError("empty prompt", fix="pass a non-empty prompt")
    check_threads(q.threads)
    check_usable_threads(q.threads)
    check_ctx(q.n_ctx)
    engines.get(q.engine)  # unknown engine -> the registered ones
    check_gpu_layers(q.gpu_layers, engines.canonical(q.engine))
    if "base_url" in q.engine_options:
        check_base_url(q.engine_options["base_url"])
        if engines.canonical(q.engine) == "llama.cpp":
            raise UsageError(
                "--base-url applies to a server engine (--engine openai), not to llama.cpp, which runs the "
                "model in this process",
                fix="add --engine openai, or drop --base-url",
            )
    check_base_url(q.cloud_url, "--cloud-url")
    if q.offload is not None and q.offload not in ("never", "auto", "always"):
        raise UsageError(f"unknown --offload {q.offload!r}", fix="pass --offload never, auto or always")
    if q.score is not None and q.score not in SCORES:
        raise UsageError(f"unknown --score {q.score!r}", fix=f"pass --score {' | '.join(SCORES)}")
    if q.threshold is not None and not math.isfinite(q.threshold):
        raise UsageError(
            f"invalid --threshold: must be a finite number, got {q.threshold!r}",
            fix="pass the score a local answer must reach, e.g. --threshold 0.6, or omit it for the plan's",
        )


def context_warning(rt: Runtime, text: str, opts: SamplingOptions, n_ctx: int) -> str | None:
    """A warning when the context asked for is larger than the model was trained on (None otherwise).

    Warned, not refused: the n samples share one context, so a context larger than the trained one
    is often needed (8 samples x 2048 tokens) while each sample stays within the trained length.
    The warning says which case applies: a sample that can pass the trained length decodes at
    positions the model never saw (quality degrades); otherwise the extra context only costs memory.
    """
    n_train = rt.model_info.n_ctx_train
    if not n_train or n_ctx <= n_train:
        return None
    try:
        n_prompt = len(rt.prompt_tokens(text, chat=opts.chat, system=opts.system))
    except EdgekitError:
        n_prompt = None
    head = f"--ctx {n_ctx} is above the trained context of {rt.model_id} ({n_train} tokens)"
    if n_prompt is None:
        return (
            f"{head}: a sample longer than {n_train} tokens decodes at positions the model was not trained on "
            f"(fix: keep the prompt + --max-tokens within {n_train} tokens)"
        )
    span, need = n_prompt + opts.max_tokens, n_prompt + opts.n * opts.max_tokens
    if span > n_train:
        return (
            f"{head}, and a sample can reach {span} tokens (prompt {n_prompt} + budget {opts.max_tokens}): tokens past "
            f"{n_train} sit at positions the model was not trained on, so quality degrades "
            f"(fix: keep the prompt + --max-tokens within {n_train} tokens, or use a model trained on a longer context)"
        )
    return (
        f"{head}; each sample stays within it here (prompt {n_prompt} + budget {opts.max_tokens} = {span} tokens), "
        f"so the extra context only costs memory (fix: --ctx {max(need, n_train)} is enough for the prompt + "
        f"{opts.n} x {opts.max_tokens} tokens)"
    )


def check_plan_model(p: PlanFile, model: str) -> str | None:
    """Refuse a plan whose model file is not the one it was made for; return a note if unverifiable."""
    want = p.chosen.model_sha256
    have = resolve(model).sha256
    if want and have and want != have:
        raise SchemaError(
            f"plan was made for {p.chosen.model_id} with sha256 {want[:12]}…, but {model} resolves to a file "
            f"with sha256 {have[:12]}…",
            fix=f"re-plan with `edgekit plan` for this model, or `edgekit models pull "
            f"{p.chosen.model_id}` to restore the planned file",
        )
    if not want or not have:
        return "the plan's model checksum could not be checked (no sha256 recorded)"
    return None


def build_offload(
    q: Query, p: PlanFile | None, opts: SamplingOptions, overrides: list[str] | None = None
) -> Offload | None:
    """The Offload a query runs under: from the flags, else the plan's cloud and calibration; None: local only.

    A calibration holds only for the configuration it was made on: with options or the model
    overridden, its threshold is kept but its guarantee is withdrawn (said in the Result)."""
    cloud = p.cloud if p is not None else None
    url = q.cloud_url or (cloud.base_url if cloud else None)
    if url is None:
        if q.offload not in (None, "never"):
            raise UsageError(
                f"--offload {q.offload} needs a cloud endpoint",
                fix="pass --cloud-url http://host:port/v1 (and --cloud-model)",
            )
        return None
    if q.offload == "never":
        return None
    model = q.cloud_model or (cloud.model if cloud else None)
    if not model:
        raise UsageError("offload needs the cloud's model name", fix="pass --cloud-model NAME (as the server knows it)")
    cal = p.offload if p is not None else None
    if cal is not None and cal.model_sha256 and p.chosen.model_sha256 and cal.model_sha256 != p.chosen.model_sha256:
        raise SchemaError(
            f"the plan's offload threshold was calibrated for another model file (sha256 {cal.model_sha256[:12]}…, "
            f"the plan runs {p.chosen.model_sha256[:12]}…)",
            fix=f"re-run `edgekit calibrate --plan {q.plan} ...` for this model",
        )
    if cal is not None and overrides:
        cal = cal.model_copy(
            update={
                "method": "calibrated-for-other-options",
                "guarantee": (
                    "no guarantee holds: the threshold was calibrated for the plan's configuration, "
                    "and this query overrides " + "; ".join(overrides)
                ),
            }
        )
    engine = OpenAIEngine(model, base_url=url, latency_prior_s=cloud.latency_s if cloud else None)
    local_s = p.predicted.latency_at_percentile_s if p is not None and cal is not None else None
    return Offload(
        cloud=engine,
        mode=q.offload or "auto",
        calibration=cal,
        score=q.score,
        threshold=q.threshold,  # type: ignore[arg-type]
        local_predicted_s=local_s,
    )


def run_query(q: Query, progress: Progress | None = None, warn: Callable[[str], None] | None = None) -> Result:
    """Run one query. ``warn`` gets one-line warnings as they arise (default: the ``edgekit``
    logger); they are also kept in ``Result.extra["warnings"]``."""
    check_query(q)
    notes: list[str] = []
    warnings: list[str] = []
    overrides: list[str] = []
    text = q.prompt
    p = None
    if q.plan:
        p = load_plan(q.plan)
        opts, overrides = p.options_with(q.options, q.model)
        planned = p.planned_model()
        model = q.model or planned
        if (
            model == planned
            and (p.chosen.quant or "").startswith("onnx")
            and engines.canonical(q.engine) == "llama.cpp"
        ):
            q.engine = "onnx"  # the planner chose an ONNX variant (edgekit quantize --to onnx-int8): its engine runs it
        if model == planned and engines.canonical(q.engine) == "llama.cpp":  # a server's file is not ours to hash
            note = check_plan_model(p, model)
            if note:
                notes.append(note)
        text = p.chosen.prompt.replace("{question}", q.prompt)
    else:
        opts = SamplingOptions.build(**q.options)
        model = q.model or DEFAULT_MODEL
    if opts.aggregate == "first_verified":
        raise UsageError(
            "this configuration aggregates with first_verified, which needs a verifier for every query",
            fix="use the library: Runtime.generate(..., options=load_plan(P).chosen.options, verifier=...)",
        )
    off = build_offload(q, p, opts, overrides)
    if q.gpu_layers is not None:
        check_gpu_layers(q.gpu_layers, engines.canonical(q.engine))  # a plan may have switched the engine (onnx)
    with Runtime(
        model,
        engine=q.engine,
        threads=q.threads,
        n_ctx=q.n_ctx,
        max_n=opts.n,
        progress=progress,
        offload=off,
        gpu_layers=q.gpu_layers,
        **q.engine_options,
    ) as rt:
        w = context_warning(rt, text, opts, q.n_ctx)
        if w:
            warnings.append(w)
            (warn or log.warning)(w)
        res = rt.generate(text, opts)
    if warnings:
        res.extra["warnings"] = warnings
    if q.gpu_layers is not None:
        res.extra["gpu_layers"] = q.gpu_layers
    if p is not None:
        res.extra["plan"] = q.plan
        if overrides:
            res.extra["plan_overrides"] = overrides
            notes.append(
                "the plan's latency prediction does not apply: options differ from the plan's ("
                + "; ".join(overrides)
                + ")"
            )
        else:
            res.extra["predicted_latency_s"] = p.predicted.latency_at_percentile_s
            res.extra["prediction_percentile"] = p.percentile
            res.extra["prediction_method"] = p.predicted.method
    if notes:
        res.extra["notes"] = notes
    return res
