"""The sweep's view of a shared CPU: thread scaling of the reference decode, and (with
``--background``) the load it runs beside, the cores the others used and the slowdown.

:class:`edgekit.profile.latency.Sweep` calls :meth:`Loaded.begin` after its idle reference decode;
:func:`edgekit.profile.sweep.profile_model` calls :meth:`Loaded.end` / :meth:`Loaded.stop` when it finishes."""

from __future__ import annotations

import statistics
import time

from edgekit.engines.base import TokenPrompt
from edgekit.figures import measured
from edgekit.host.cpu import usable_cpus
from edgekit.host.load import CpuShare
from edgekit.profile.background import Background
from edgekit.schemas.options import SamplingOptions
from edgekit.schemas.profile import BackgroundLoad, ModelProfile


def _engine_step_s(eng, prompt: list[int], steps: int, reps: int = 3) -> float:
    """Median step time of a greedy n=1 decode straight through the engine (first token excluded)."""
    opts = SamplingOptions.build(n=1, max_tokens=steps, temperature=0.0, ignore_eos=True, logprobs=False)
    xs = []
    for _ in range(reps):
        t_first, n = None, 0
        for ev in eng.generate(TokenPrompt(tuple(prompt)), opts):
            if ev.kind == "token":
                n += 1
                if t_first is None:
                    t_first = time.perf_counter()
        xs.append((time.perf_counter() - (t_first or time.perf_counter())) / max(n - 1, 1))
    return statistics.median(xs)


class Loaded:
    def __init__(self, spec: str | None):
        self.bg = Background(spec) if spec else None
        self.share: CpuShare | None = None
        if self.bg is not None and self.bg.command:  # a command that cannot start fails now, before the profile starts
            self.bg.start()
            self.bg.stop()

    def begin(self, sweep, mp: ModelProfile, ref_prompt: list[int]) -> None:
        eng = sweep.rt.engine
        mp.kernels = (eng.info.extra or {}).get("kernels")
        pin = getattr(eng, "pin_threads", None)
        if pin is not None and sweep.cfg.threads is None:
            usable = eng.threading()["usable"]
            scaling = {}
            for k in range(
                1, usable + 1
            ):  # measured reference step at each thread count: what --cores-available scales by
                sweep.progress(f"thread scaling ({k} of {usable} threads)", k - 1, usable)
                pin(k)
                scaling[k] = measured(
                    [_engine_step_s(eng, ref_prompt, sweep.cfg.decode_steps) for _ in range(2)],
                    "s",
                    source=f"reference decode n=1, {sweep.cfg.decode_steps} steps, {k} thread(s)",
                )
            pin(None)
            mp.thread_scaling = scaling
        mp.threading = eng.threading()["how"] if hasattr(eng, "threading") else None
        if self.bg is None:
            return
        idle = sweep.drift_first
        sweep.progress(f"starting background load: {self.bg.describe()}", 0, 1)
        self.bg.start()
        self.share = CpuShare(usable_cpus().affinity)
        sweep.drift_first = sweep.ref_decode(ref_prompt)  # the loaded reference: drift is judged against it
        mp.background = BackgroundLoad(
            workers=self.bg.workers,
            command=self.bg.command,
            slowdown=measured(
                [sweep.drift_first / idle], "x", source="reference decode step with the load / without it, this sweep"
            ),
        )

    def end(self, mp: ModelProfile) -> None:
        if self.share is not None and mp.background is not None:
            others = self.share.sample()
            if others is not None:
                mp.background.others_cores = measured(
                    [others],
                    "cores",
                    source="/proc/stat busy time of the usable CPUs minus this process's own, over the sweep",
                )

    def stop(self) -> None:
        if self.bg is not None:
            self.bg.stop()
