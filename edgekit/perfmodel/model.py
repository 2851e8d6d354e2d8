"""The performance model: latency, energy and peak memory of one configuration on one device.

    prefill_s(I)    = a*Ip^2 + b*Ip + c             Ip = I rounded up to a multiple of pad_to
    step_s(n, ctx)  = alpha + beta*n + gamma*n*ctx  one batched decode step of n sequences,
                                                    each attending ctx KV tokens
    decode(I, S, n) = sum_{s=1..S} step_s(n, I + s - 1)
                    = S*alpha + n*L*beta + gamma*n*(L*I + (E[L^2] - L)/2)

Two refinements for profiles measured by edgekit's llama.cpp runtime:
- measured batch sizes (``n_knots``): the per-step base cost alpha + beta*n is replaced, between the
  smallest and largest measured n, by piecewise-linear interpolation of the measured base costs
  (CPU matmul kernels do not scale linearly in n: on a 2-core CPU n=2 costs ~1.5x n=1, n=4 ~1.9x),
  and ggml's CPU matmuls take the n rows in chunks of ``ROW_CHUNK`` = 4 (repacked GEMM), leftover rows
  one at a time, so the cost is a sawtooth in n: on the CI VM a step of SmolLM2 Q4_0 costs 10.1 ms
  at n=4, 15.4 ms at n=6 and 13.2 ms at n=8; linear interpolation between n=4 and 8 under-predicted
  n=6 by ~30 %, which is why the sweeps measure every n up to 8. Beyond the largest measured n, when
  a whole period below it was measured, the sawtooth continues (base(last + 4q + r) = base(last) +
  q*(base(last) - base(last-4)) + base(last-4+r) - base(last-4)); otherwise the slope beta does;
- a unified KV cache (``kv_unified``): each sequence attends over every used cell, the shared prompt
  once plus every sequence's generated tokens, so the attention term is gamma*n*(I + n*t) per step.

alpha is paid once per step (weights streamed from memory), beta per sequence (compute,
sampling), gamma per KV token attended. S = decode steps the batch runs (the accuracy
table's ``expected_steps``; default the budget). By default every sequence stays in the batch
for all S steps (L = S, conservative). With ``mean_tokens`` given, sequences leave when they
finish: L = mean_tokens and E[L^2] is bounded above by L*S (since L <= S).
The first generated token is counted as a decode step (as in EdgeReasoning), so a
prediction is at most one step pessimistic for runtimes that sample it from the prefill logits.

Every prediction carries an interval: the prefill and decode parts are each widened by a
relative half-width (``rel_unc_prefill``, ``rel_unc_decode``; ``rel_unc_batch`` added for
n beyond the largest n measured); ``interval_how`` says where the widths come from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from edgekit.figures import Figure, estimated, published, unavailable
from edgekit.perfmodel import published as pub

ROW_CHUNK = 4  # rows of n that ggml's CPU GEMM takes at once (repacked kernels); see the module docstring

EnergyMode = Literal["per_token", "power", "published_power"]


@dataclass
class Prediction:
    latency_s: float  # point prediction (p50)
    latency_lo_s: float
    latency_hi_s: float  # upper end: used as p95
    prefill_s: float
    decode_s: float
    energy_j: float | None
    memory_bytes: float | None
    method: str  # "fitted from measured profile ...", "published (...)", "estimated (cross-model ...)"
    figure_method: Literal["estimated", "published"]
    interval_how: str
    energy_how: str
    memory_how: str
    inputs: dict = field(default_factory=dict)

    def latency_figure(self) -> Figure:
        note = f"interval {self.latency_lo_s:.4g}..{self.latency_hi_s:.4g} s ({self.interval_how})"
        if self.figure_method == "published":
            return published(self.latency_s, "s", self.method, note=note)
        return estimated(self.latency_s, "s", self.method, note=note)

    def energy_figure(self) -> Figure:
        if self.energy_j is None:
            return unavailable("J", self.energy_how)
        if self.figure_method == "published" and "published" in self.energy_how:
            return published(self.energy_j, "J", self.energy_how)
        return estimated(self.energy_j, "J", self.energy_how)

    def memory_figure(self) -> Figure:
        if self.memory_bytes is None:
            return unavailable("GB", self.memory_how)
        return estimated(self.memory_bytes / 1e9, "GB", self.memory_how)


@dataclass
class PerfModel:
    model_id: str
    a: float
    b: float
    c: float
    alpha: float
    beta: float
    gamma: float
    method: str
    pad_to: int = 1
    figure_method: Literal["estimated", "published"] = "estimated"
    quant: str | None = None
    sha256: str | None = None
    rel_unc_prefill: float = 0.1
    rel_unc_decode: float = 0.1
    rel_unc_batch: float = 0.0
    max_n_measured: int = 1
    interval_how: str = ""
    # energy: per_token (J/prompt token, J/generated token at n=1), power (W), published_power (dict)
    energy_mode: EnergyMode | None = None
    e_prefill_tok_j: float | None = None
    e_decode_tok_j: float | None = None
    p_prefill_w: float | None = None
    p_decode_w: float | None = None
    published_model: dict | None = None
    energy_how: str = "no energy figures in the profile"
    # memory
    weights_bytes: float | None = None
    kv_bytes_per_token: float | None = None
    overhead_bytes: float | None = None
    memory_how: str = "model size unknown"
    source: str | None = None  # profile path
    n_knots: list | None = None  # measured n (sorted)
    base_knots: list | None = None  # measured step cost at those n, attention term removed
    kv_unified: bool = False
    residuals: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    # ---- vectorised pieces -------------------------------------------------------------
    def prefill_s(self, prompt_tokens):
        i = np.ceil(np.asarray(prompt_tokens, dtype=float))
        if self.pad_to > 1:
            i = np.ceil(i / self.pad_to) * self.pad_to
        return self.a * i**2 + self.b * i + self.c

    def base_s(self, n):
        """Per-step cost without the attention term (weights + per-sequence compute)."""
        n = np.asarray(n, dtype=float)
        lin = self.alpha + self.beta * n
        if not self.n_knots or len(self.n_knots) < 2:
            return lin
        kn, kb = np.asarray(self.n_knots, float), np.asarray(self.base_knots, float)
        inside = np.interp(n, kn, kb)
        above = kb[-1] + self.beta * (n - kn[-1])
        P, last = ROW_CHUNK, int(kn[-1])
        if set(range(last - P, last + 1)) <= {int(k) for k in kn if k == int(k)}:
            # a whole period measured below the last knot: continue the sawtooth (exactly linear when
            # the kernels scale linearly in n): base(last + P*q + r) = base(last) + q*(base(last) -
            # base(last - P)) + base(last - P + r) - base(last - P)
            m = np.maximum(n - last, 0.0)
            q, r = np.floor(m / P), np.mod(m, P)
            at = lambda x: np.interp(x, kn, kb)
            above = kb[-1] + q * (kb[-1] - at(last - P)) + at(last - P + r) - at(last - P)
        return np.where(n > kn[-1], above, np.where(n < kn[0], lin, inside))

    def step_s(self, n, context_tokens):
        n = np.asarray(n, dtype=float)
        return self.base_s(n) + self.gamma * n * np.asarray(context_tokens, dtype=float)

    def decode_s(self, prompt_tokens, steps, n, mean_tokens=None):
        i = np.ceil(np.asarray(prompt_tokens, dtype=float))
        s = np.maximum(np.asarray(steps, dtype=float), 0.0)
        n = np.asarray(n, dtype=float)
        if mean_tokens is None:
            L, L2 = s, s * s
        else:
            L = np.minimum(np.asarray(mean_tokens, dtype=float), s)
            L2 = L * s  # upper bound of E[L^2] given L <= S
        share = n if self.kv_unified else 1.0  # unified KV: every sequence also attends the others' tokens
        attn = self.gamma * n * (L * i + share * (L2 - L) / 2)
        if self.n_knots and len(self.n_knots) >= 2:
            per_seq = np.maximum(self.base_s(n) - self.alpha, 0.0)  # sequences leave: pay per live step
            return s * self.alpha + L * per_seq + attn
        return s * self.alpha + n * L * self.beta + attn

    def decode_live_s(self, prompt_tokens, live_steps, steps):
        """Decode time of batches whose rows leave at different steps (a stopping rule, replayed from an accuracy
        table): ``live_steps[..., r-1]`` = steps run with r rows live, ``steps`` = steps in all. Each step is priced
        by its own row count (base_s(r)); the attention term takes every row-step at the mean context
        (prompt + steps/2, and the other rows' tokens too with a unified KV)."""
        h = np.asarray(live_steps, dtype=float)
        r = np.arange(1, h.shape[-1] + 1, dtype=float)
        base = h @ self.base_s(r)
        rows = h @ r
        s = np.maximum(np.asarray(steps, dtype=float), 1.0)
        i = np.ceil(np.asarray(prompt_tokens, dtype=float))
        share = rows / s if self.kv_unified else 1.0  # mean rows live: the unified KV's other sequences
        return base + self.gamma * rows * (i + share * s / 2)

    def predict_arrays(self, prompt_tokens, steps, n, budget, mean_tokens=None, live_steps=None) -> dict:
        """Vectorised prediction. Energy / memory are NaN where unavailable. ``live_steps``: per candidate None, or
        the steps run with r = 1.. rows live when a stopping rule ends rows early (priced by :meth:`decode_live_s`)."""
        n = np.asarray(n, dtype=float)
        pre = self.prefill_s(prompt_tokens) * np.ones_like(n)
        dec = np.array(self.decode_s(prompt_tokens, steps, n, mean_tokens), dtype=float)
        for j, h in enumerate(live_steps if live_steps is not None else ()):
            if h is not None:
                dec[j] = self.decode_live_s(np.asarray(prompt_tokens)[j], h, np.asarray(steps)[j])
        r_d = self.rel_unc_decode + self.rel_unc_batch * (n > self.max_n_measured)
        r_p = self.rel_unc_prefill
        total = pre + dec
        lo = pre * (1 - r_p) + dec * (1 - r_d)
        hi = pre * (1 + r_p) + dec * (1 + r_d)
        energy = self._energy(prompt_tokens, steps, n, pre, dec, mean_tokens)
        mem = self._memory(prompt_tokens, n, budget)
        return {
            "prefill_s": pre,
            "decode_s": dec,
            "total_s": total,
            "lo_s": lo,
            "hi_s": hi,
            "energy_j": energy,
            "memory_bytes": mem,
        }

    def _energy(self, prompt_tokens, steps, n, pre, dec, mean_tokens):
        nan = np.full_like(np.asarray(n, dtype=float), np.nan)
        if self.energy_mode == "per_token" and self.e_prefill_tok_j is not None and self.e_decode_tok_j is not None:
            s = np.maximum(np.asarray(steps, dtype=float), 0.0)
            dec1 = self.decode_s(prompt_tokens, steps, 1.0)
            ratio = np.divide(dec, dec1, out=np.ones_like(dec), where=dec1 > 0)
            i = np.ceil(np.asarray(prompt_tokens, dtype=float))
            return self.e_prefill_tok_j * i + self.e_decode_tok_j * s * ratio
        if self.energy_mode == "power" and self.p_prefill_w is not None and self.p_decode_w is not None:
            return self.p_prefill_w * pre + self.p_decode_w * dec
        if self.energy_mode == "published_power" and self.published_model is not None:
            pm = self.published_model
            return pub.prefill_power_w(pm, prompt_tokens) * pre + pub.decode_power_w(pm, steps) * dec
        return nan

    def _memory(self, prompt_tokens, n, budget):
        n = np.asarray(n, dtype=float)
        if self.weights_bytes is None or self.kv_bytes_per_token is None:
            return np.full_like(n, np.nan)
        i = np.ceil(np.asarray(prompt_tokens, dtype=float))
        kv = self.kv_bytes_per_token * (i + n * np.asarray(budget, dtype=float))
        return self.weights_bytes + kv + (self.overhead_bytes or 0.0)

    # ---- one configuration ---------------------------------------------------------------
    def predict(
        self,
        prompt_tokens: float,
        budget: int,
        n: int = 1,
        expected_steps: float | None = None,
        mean_tokens: float | None = None,
        live_steps: list[float] | None = None,
    ) -> Prediction:
        steps = float(budget if expected_steps is None else expected_steps)
        r = self.predict_arrays(
            np.array([prompt_tokens]),
            np.array([steps]),
            np.array([n]),
            np.array([budget]),
            None if mean_tokens is None else np.array([mean_tokens]),
            None if live_steps is None else [live_steps],
        )
        e = float(r["energy_j"][0])
        m = float(r["memory_bytes"][0])
        return Prediction(
            latency_s=float(r["total_s"][0]),
            latency_lo_s=float(r["lo_s"][0]),
            latency_hi_s=float(r["hi_s"][0]),
            prefill_s=float(r["prefill_s"][0]),
            decode_s=float(r["decode_s"][0]),
            energy_j=None if np.isnan(e) else e,
            memory_bytes=None if np.isnan(m) else m,
            method=self.method_for(n)
            + ("; rows leave as the stopping rule replayed on the table stops them" if live_steps is not None else ""),
            figure_method=self.figure_method if n <= self.max_n_measured else "estimated",
            interval_how=self.interval_how,
            energy_how=self.energy_how,
            memory_how=self.memory_how,
            inputs={
                "profile": self.source,
                "model": self.model_id,
                "quant": self.quant,
                "prompt_tokens": prompt_tokens,
                "budget": budget,
                "n": n,
                "steps": steps,
                "mean_tokens": mean_tokens,
                "coefficients": self.coefficients(),
            },
        )

    def method_for(self, n: float) -> str:
        if n <= self.max_n_measured:
            return self.method
        if self.figure_method == "published":
            return f"{self.method}, extended to n={n:g} by edgekit (the source covers n=1 only)"
        return f"{self.method}; n={n:g} extrapolated beyond measured n<={self.max_n_measured}"

    def coefficients(self) -> dict:
        return {
            "prefill": {"a": self.a, "b": self.b, "c": self.c, "pad_to": self.pad_to},
            "step": {
                "alpha": self.alpha,
                "beta": self.beta,
                "gamma": self.gamma,
                "n_knots": self.n_knots,
                "base_knots": self.base_knots,
                "kv_unified": self.kv_unified,
            },
            "rel_unc": {
                "prefill": self.rel_unc_prefill,
                "decode": self.rel_unc_decode,
                "batch": self.rel_unc_batch,
                "max_n_measured": self.max_n_measured,
            },
        }
