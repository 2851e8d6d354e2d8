"""Prometheus metrics of the daemon (one registry per app, so several apps can live in one process)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
RATIO_BUCKETS = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2, 3, 4)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "edgekit_requests", "HTTP requests by endpoint and status code", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "edgekit_request_seconds",
            "HTTP request latency (to the last byte)",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "edgekit_queue_wait_seconds", "wait for the model (Timings.queue_s)", buckets=LATENCY_BUCKETS, registry=r
        )
        self.generation = Histogram(
            "edgekit_generation_seconds",
            "generation wall time once the model is held (Timings.total_s)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter("edgekit_prompt_tokens", "prompt tokens evaluated", registry=r)
        self.completion_tokens = Counter("edgekit_completion_tokens", "tokens generated, over all samples", registry=r)
        self.results = Counter(
            "edgekit_results",
            "answers by source: local, cloud (offloaded), local-fallback (the cloud failed)",
            ["source"],
            registry=r,
        )
        self.rejected = Counter("edgekit_rejected", "requests refused before any work", ["reason"], registry=r)
        self.cancelled = Counter("edgekit_cancelled", "generations ended early", ["reason"], registry=r)
        self.latency_ratio = Histogram(
            "edgekit_latency_measured_over_predicted",
            "measured / plan-predicted generation latency (only with a plan, for requests run as planned)",
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("edgekit_queue_depth", "requests waiting for the model", registry=r)
        self.in_flight = Gauge("edgekit_in_flight", "admitted requests (waiting or generating)", registry=r)
        self.batches = Gauge(
            "edgekit_engine_batches",
            "generate calls that reached the local engine (one batch of n samples each)",
            registry=r,
        )
        self.plan_predicted = Gauge(
            "edgekit_plan_predicted_latency_seconds",
            "the plan's predicted latency at its percentile (0: no plan)",
            registry=r,
        )
        self.draining = Gauge("edgekit_draining", "1 while shutting down", registry=r)
        self.steps = Gauge("edgekit_engine_steps", "continuous batching: llama_decode calls (0 when off)", registry=r)
        self.shared_steps = Gauge(
            "edgekit_engine_shared_steps",
            "continuous batching: decode steps that held two or more requests",
            registry=r,
        )
        self.step_rows = Gauge(
            "edgekit_engine_max_rows_in_step",
            "continuous batching: most rows (samples) decoded in one step",
            registry=r,
        )
        # live latency model (edgekit.serve.live): only with a plan whose profile is readable
        self.live_factor = Gauge(
            "edgekit_live_correction_factor",
            "live correction in force: measured / predicted time, EWMA (1 until enough requests)",
            ["part"],
            registry=r,
        )
        self.live_samples = Gauge(
            "edgekit_live_correction_samples", "requests that fed the live correction", ["part"], registry=r
        )
        self.live_ratio = Histogram(
            "edgekit_live_measured_over_predicted",
            "per request: measured / perf-model predicted time for its own prompt tokens, steps and n",
            ["part"],
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.live_corrected = Gauge(
            "edgekit_live_corrected_latency_seconds",
            "the plan configuration in force: predicted latency at the plan's percentile x live correction",
            registry=r,
        )
        self.live_target = Gauge("edgekit_live_latency_target_seconds", "the plan's latency target", registry=r)
        self.replans = Counter(
            "edgekit_replans",
            "live re-plans by trigger (auto, sighup, admin) and outcome (changed, unchanged, infeasible, failed)",
            ["trigger", "outcome"],
            registry=r,
        )
        self.admission = Counter(
            "edgekit_deadline_admission",
            "requests whose corrected prediction exceeded their deadline: max_tokens shrunk, or refused (503)",
            ["action"],
            registry=r,
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
        if svc.plan is not None:
            self.plan_predicted.set(svc.plan.predicted.latency_at_percentile_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
