"""Prometheus metrics of the daemon (one registry per app, so several apps can live in one process)."""

from __future__ import annotations

from functools import partial
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
RATIO_BUCKETS = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2, 3, 4)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        counter, gauge, histogram = (partial(kind, registry=r) for kind in (Counter, Gauge, Histogram))
        self.requests = counter("edgekit_requests", "HTTP requests by endpoint and status code", ["endpoint", "status"])
        self.latency = histogram(
            "edgekit_request_seconds", "HTTP request latency (to the last byte)", ["endpoint"], buckets=LATENCY_BUCKETS
        )
        self.queue_wait = histogram(
            "edgekit_queue_wait_seconds", "wait for the model (Timings.queue_s)", buckets=LATENCY_BUCKETS
        )
        self.generation = histogram(
            "edgekit_generation_seconds",
            "generation wall time once the model is held (Timings.total_s)",
            buckets=LATENCY_BUCKETS,
        )
        self.prompt_tokens = counter("edgekit_prompt_tokens", "prompt tokens evaluated")
        self.completion_tokens = counter("edgekit_completion_tokens", "tokens generated, over all samples")
        self.results = counter(
            "edgekit_results",
            "answers by source: local, cloud (offloaded), local-fallback (the cloud failed)",
            ["source"],
        )
        self.rejected = counter("edgekit_rejected", "requests refused before any work", ["reason"])
        self.cancelled = counter("edgekit_cancelled", "generations ended early", ["reason"])
        self.latency_ratio = histogram(
            "edgekit_latency_measured_over_predicted",
            "measured / plan-predicted generation latency (only with a plan, for requests run as planned)",
            buckets=RATIO_BUCKETS,
        )
        self.queue_depth = gauge("edgekit_queue_depth", "requests waiting for the model")
        self.in_flight = gauge("edgekit_in_flight", "admitted requests (waiting or generating)")
        self.batches = gauge(
            "edgekit_engine_batches", "generate calls that reached the local engine (one batch of n samples each)"
        )
        self.plan_predicted = gauge(
            "edgekit_plan_predicted_latency_seconds", "the plan's predicted latency at its percentile (0: no plan)"
        )
        self.draining = gauge("edgekit_draining", "1 while shutting down")
        self.steps = gauge("edgekit_engine_steps", "continuous batching: llama_decode calls (0 when off)")
        self.shared_steps = gauge(
            "edgekit_engine_shared_steps", "continuous batching: decode steps that held two or more requests"
        )
        self.step_rows = gauge(
            "edgekit_engine_max_rows_in_step", "continuous batching: most rows (samples) decoded in one step"
        )
        self.held = gauge(
            "edgekit_engine_held_for_deadlines",
            "continuous batching: steps in which admission waited so admitted requests keep their deadlines",
        )
        self.prefix_tokens = gauge(
            "edgekit_prefix_cache_tokens", "continuous batching: KV cells held by the prompt-prefix cache"
        )
        self.prefix_budget = gauge("edgekit_prefix_cache_budget_tokens", "the prefix cache's size (0: off)")
        self.prefix_hits = gauge("edgekit_prefix_cache_hits", "requests that reused a cached prompt prefix")
        self.prefix_misses = gauge("edgekit_prefix_cache_misses", "requests with a long prompt and no cached prefix")
        self.prefix_reused = gauge("edgekit_prefix_cache_reused_tokens", "prompt tokens not prefilled thanks to it")
        self.prefix_evicted = gauge("edgekit_prefix_cache_evictions", "cached prefixes dropped to make room")
        # live latency model (edgekit.serve.live): only with a plan whose profile is readable
        self.live_factor = gauge(
            "edgekit_live_correction_factor",
            "live correction in force: measured / predicted time, EWMA (1 until enough requests)",
            ["part"],
        )
        self.live_samples = gauge("edgekit_live_correction_samples", "requests that fed the live correction", ["part"])
        self.live_ratio = histogram(
            "edgekit_live_measured_over_predicted",
            "per request: measured / perf-model predicted time for its own prompt tokens, steps and n",
            ["part"],
            buckets=RATIO_BUCKETS,
        )
        self.live_corrected = gauge(
            "edgekit_live_corrected_latency_seconds",
            "the plan configuration in force: predicted latency at the plan's percentile x live correction",
        )
        self.live_target = gauge("edgekit_live_latency_target_seconds", "the plan's latency target")
        self.replans = counter(
            "edgekit_replans",
            "live re-plans by trigger (auto, sighup, admin) and outcome (changed, unchanged, infeasible, failed)",
            ["trigger", "outcome"],
        )
        self.admission = counter(
            "edgekit_deadline_admission",
            "requests whose corrected prediction exceeded their deadline: max_tokens shrunk, or refused (503)",
            ["action"],
        )

    def bind(self, svc: Any) -> None:
        """Gauges read the service's live state at scrape time."""
        self.queue_depth.set_function(lambda: svc.waiting)
        self.in_flight.set_function(lambda: svc.admitted)
        self.batches.set_function(lambda: svc.tap.batches)
        self.draining.set_function(lambda: 1 if svc.draining else 0)

        def stat(key: str):
            return lambda: (svc.tap.batching_stats() or {}).get(key, 0)

        self.steps.set_function(stat("steps"))
        self.shared_steps.set_function(stat("shared_steps"))
        self.step_rows.set_function(stat("max_rows_in_step"))
        self.held.set_function(stat("held_for_deadlines"))
        self.prefix_tokens.set_function(stat("prefix_cache_tokens"))
        self.prefix_budget.set_function(stat("prefix_cache_budget"))
        self.prefix_hits.set_function(stat("prefix_hits"))
        self.prefix_misses.set_function(stat("prefix_misses"))
        self.prefix_reused.set_function(stat("prefix_reused_tokens"))
        self.prefix_evicted.set_function(stat("prefix_evicted"))
        if svc.plan is not None:
            self.plan_predicted.set(svc.plan.predicted.latency_at_percentile_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
