"""The timed part of a profile sweep: loads, the idle baseline, prefill over prompt length, decode
over context depth (n=1) and over parallel samples n (shallow context), and the drift reference.

Repetitions are interleaved across points; a stop keeps every repetition measured so far on the
:class:`Sweep` (see :mod:`edgekit.profile.partial`). Energy windows go to
:class:`edgekit.profile.energy.EnergyWindows`."""

from __future__ import annotations

import resource
import time

from edgekit import engines
from edgekit.figures import Figure, measured
from edgekit.profile.energy import EnergyWindows
from edgekit.profile.sweep_config import FILLER, Progress, SweepConfig
from edgekit.schemas.profile import DecodePoint, ModelProfile, PrefillPoint

LOAD_SOURCE = "Runtime() wall clock (first load may be from disk, later from page cache)"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # Linux: KiB


class Sweep:
    """One model's sweep: the state a stop leaves behind (what was measured so far) and the timing runs."""

    def __init__(self, model: str, cfg: SweepConfig, meter, thermal, progress: Progress | None):
        self.model, self.cfg, self.meter, self.thermal = model, cfg, meter, thermal
        self._user_progress = progress or (lambda *a: None)
        self.stage = "start"  # the stage being measured (named in the message when the sweep stops)
        self.rt = None
        self.mp: ModelProfile | None = None
        self.windows = EnergyWindows(meter)  # energy per token above the idle baseline
        self._filler: list[int] = []
        self.idle_fig: Figure | None = None
        self.loads: list[float] = []  # Runtime() wall times
        self.drift_first: float | None = None
        self.drift_last: float | None = None
        self.build: str | None = None  # the engine's build ("cpu", "cuda", ...), once loaded

    def progress(self, stage: str, done: int, total: int) -> None:
        self.stage = stage
        self._user_progress(stage, done, total)

    def tokens(self, n: int) -> list[int]:
        if not self._filler:  # tokenised once; same vocabulary for every Runtime reload of the model
            self._filler = self.rt.engine.tokenize(FILLER * 4, add_special=False)
        base = self._filler
        out = []
        while len(out) < n:
            out.extend(base)
        return out[:n]

    def timed(self, **kw):
        """One generate under the energy window; returns (result, window)."""
        with self.meter.window() as w:
            res = self.rt.generate(None, aggregate="none", extractor=None, **kw)  # the default path: logprobs on
        return res, w

    def run(self, mp: ModelProfile) -> None:
        from edgekit.runtime import Runtime

        cfg = self.cfg
        self.mp = mp
        loads = self.loads  # kept on the sweep: a stop during a later load still saves the earlier ones
        for i in range(cfg.load_reps):
            self.progress("load", i, cfg.load_reps)
            if self.rt is not None:
                self.rt.close()
            t0 = time.perf_counter()
            self.rt = Runtime(
                self.model,
                engine=cfg.engine,
                threads=cfg.threads,
                n_ctx=cfg.n_ctx,
                max_n=max(cfg.ns),
                gpu_layers=cfg.gpu_layers,
            )
            loads.append(time.perf_counter() - t0)
        mp.load_s = measured(loads, "s", source=LOAD_SOURCE)
        mp.threads = self.rt.engine.info.threads
        mp.gpu_layers = cfg.gpu_layers
        self.build = getattr(self.rt.engine.info, "build", None)
        # llama.cpp's batched path: one KV buffer shared by the n sequences; onnx: the prompt's KV
        # tiled to n rows, each row attending over its own cells
        mp.kv_layout = "unified" if engines.canonical(cfg.engine) == "llama.cpp" else "per-sequence"
        mp.n_ctx = self.rt.engine.info.n_ctx
        mp.model = self.rt.model_info
        # idle baseline
        self.progress("idle baseline", 0, 1)
        with self.meter.window() as w:
            time.sleep(cfg.idle_s)
        self.windows.idle_mw = w.mean_power_mw
        idle_fig = self.idle_fig = w.power_figure()
        # warm-up + drift reference (n=1, shallow context)
        self.progress("warm-up and drift reference", 0, 1)
        ref_prompt = self.tokens(32)
        self.rt.generate(
            None, prompt_tokens=ref_prompt, max_tokens=4, temperature=0.0, aggregate="none", extractor=None
        )
        self.drift_first = self.ref_decode(ref_prompt)
        self.background.begin(
            self, mp, ref_prompt
        )  # thread scaling; --background: start the load, re-take the reference
        # Repetitions are interleaved across points (rep-major): a slow minute on a shared machine
        # spreads over every point instead of biasing a few. Points keep whatever reps completed.
        pre: dict[int, list[float]] = {L: [] for L in cfg.prompt_lengths}
        total = cfg.reps * len(cfg.prompt_lengths)
        try:
            for r in range(cfg.reps):
                for i, L in enumerate(cfg.prompt_lengths):
                    self.progress(f"prefill {L} tok (rep {r + 1}/{cfg.reps})", r * len(cfg.prompt_lengths) + i, total)
                    res, w = self.timed(prompt_tokens=self.tokens(L), max_tokens=1, temperature=0.0)
                    pre[L].append(res.timings.prefill_s)
                    self.windows.add("prefill", w, L)
                    self.cool()
        finally:
            for L, secs in pre.items():
                if secs:
                    mp.prefill.append(
                        PrefillPoint(
                            prompt_tokens=L,
                            prefill_s=measured(secs, "s", source="time to first token (prefill + 1 sample)"),
                            ttft_s=measured(secs, "s", source="wall clock"),
                            prefill_tok_s=measured([L / x for x in secs], "tok/s", source="prompt tokens / prefill_s"),
                        )
                    )
        # decode over context depth (n=1) and over n (shallow context)
        points = cfg.decode_points()
        dec: dict[tuple[int, int], list[float]] = {pt: [] for pt in points}
        total = cfg.reps * len(points)
        energy_ctx = max(min(cfg.contexts or [0]), 32)
        try:
            for r in range(cfg.reps):
                for i, (ctx, n) in enumerate(points):
                    self.progress(f"decode ctx={ctx} n={n} (rep {r + 1}/{cfg.reps})", r * len(points) + i, total)
                    res, w = self.timed(
                        prompt_tokens=self.tokens(ctx),
                        max_tokens=cfg.decode_steps,
                        n=n,
                        temperature=0.8,
                        seed=r,
                        ignore_eos=True,
                    )
                    dec[(ctx, n)].append(res.timings.decode_s / max(res.timings.steps - 1, 1))
                    if n == 1 and ctx == energy_ctx:
                        self.windows.add("decode", w, res.timings.generated_tokens)
                    self.cool()
        finally:
            for (ctx, n), steps in dec.items():
                if steps:
                    mp.decode.append(
                        DecodePoint(
                            context_tokens=ctx,
                            n=n,
                            steps=cfg.decode_steps,
                            step_s=measured(steps, "s", source="decode wall time / (steps - 1)"),
                            decode_tok_s=measured([n / x for x in steps], "tok/s", source="n / step_s"),
                        )
                    )
        self.progress("drift reference", 0, 1)
        self.drift_last = self.ref_decode(ref_prompt)
        mp.peak_rss_mb = measured([peak_rss_mb()], "MB", source="getrusage ru_maxrss of the profiling process")
        mp.energy = self.windows.info(idle_fig)

    def ref_decode(self, toks, reps: int = 3) -> float:
        """Median step time of a short greedy n=1 decode (the drift reference)."""
        xs = []
        for _ in range(reps):
            res = self.rt.generate(
                None,
                prompt_tokens=toks,
                max_tokens=self.cfg.decode_steps,
                temperature=0.0,
                aggregate="none",
                extractor=None,
                ignore_eos=True,
            )
            xs.append(res.timings.decode_s / max(res.timings.steps - 1, 1))
        return sorted(xs)[len(xs) // 2]

    def cool(self):
        if self.cfg.cooldown_s > 0:
            time.sleep(self.cfg.cooldown_s)
