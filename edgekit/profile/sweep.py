"""The profile sweep: load, prefill, decode over context depth and parallel samples, memory,
energy (idle baseline subtracted) and thermal/clock drift, for one model on this device.

Every figure is ``measured`` (repetitions, median, IQR, CV) or ``unavailable`` with the reason.
Whatever was measured before a failure is still saved, with the failure as a labelled gap.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import psutil

from edgekit.schemas import __version__
from edgekit.errors import EdgekitError, SchemaError, UsageError
from edgekit.figures import Figure, measured, unavailable
from edgekit.schemas.profile import DecodePoint, DeviceProfile, DriftReport, EnergyInfo, ModelProfile, PrefillPoint

FILLER = (
    "The robot moved the red block onto the blue tray, then checked the camera feed, logged the "
    "joint angles and waited for the next instruction from the operator at the control station. "
)


@dataclass
class SweepConfig:
    prompt_lengths: list[int] = field(default_factory=lambda: [32, 128, 512, 2048])
    contexts: list[int] = field(default_factory=lambda: [0, 512, 2048, 4096])
    ns: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    decode_steps: int = 32
    reps: int = 5
    load_reps: int = 3
    idle_s: float = 3.0
    cooldown_s: float = 0.0
    threads: Optional[int] = None
    n_ctx: Optional[int] = None

    @classmethod
    def quick(cls) -> "SweepConfig":
        return cls(prompt_lengths=[32, 128, 512], contexts=[0, 1024], ns=[1, 2, 4, 8], decode_steps=16, reps=3,
                   load_reps=2, idle_s=1.0)

    def needed_ctx(self) -> int:
        return max(
            max(self.prompt_lengths) + 1,
            max(self.contexts or [0]) + 32 + self.decode_steps,
            32 + max(self.ns) * self.decode_steps,
        )

    def validate(self, model_ctx_train: Optional[int]) -> int:
        if self.reps < 1 or self.decode_steps < 2:
            raise UsageError("reps must be >= 1 and decode steps >= 2", fix="pass --reps 1 or more and --steps 2 or more")
        if any(x <= 0 for x in self.prompt_lengths) or any(x < 0 for x in self.contexts) or any(x <= 0 for x in self.ns):
            raise UsageError("sweep values must be positive", fix="pass positive prompt lengths, contexts and n")
        need = self.needed_ctx()
        limit = self.n_ctx or model_ctx_train
        if limit and need > limit:
            raise UsageError(
                f"the sweep needs {need} tokens of context but the {'--ctx' if self.n_ctx else 'model'} allows {limit}",
                fix="shorten --prompt-lengths/--contexts, lower --ns or --steps",
            )
        return max(need, self.n_ctx or 0)


Progress = Callable[[str, int, int], None]  # (stage, done, total)


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 1e6


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # Linux: KiB


def check_writable(path: Path) -> None:
    d = path.parent if path.suffix else path
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = d / f".edgekit-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise SchemaError(f"cannot write the profile to {path}: {e.strerror or e}", fix="choose a writable --output path") from e


class _Sweep:
    def __init__(self, model: str, cfg: SweepConfig, meter, thermal, progress: Optional[Progress]):
        self.model, self.cfg, self.meter, self.thermal = model, cfg, meter, thermal
        self.progress = progress or (lambda *a: None)
        self.rt = None
        self.mp: Optional[ModelProfile] = None
        self.idle_mw: Optional[float] = None
        self.energy = {"prefill": [], "decode": []}  # (energy above idle mJ, tokens)
        self.skipped_windows = 0  # energy windows left out for sensor gaps
        self._filler: list[int] = []

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
        loads = []
        for i in range(cfg.load_reps):
            self.progress("load", i, cfg.load_reps)
            if self.rt is not None:
                self.rt.close()
            t0 = time.perf_counter()
            self.rt = Runtime(self.model, threads=cfg.threads, n_ctx=cfg.n_ctx, max_n=max(cfg.ns))
            loads.append(time.perf_counter() - t0)
        mp.load_s = measured(loads, "s", source="Runtime() wall clock (first load may be from disk, later from page cache)")
        mp.threads = self.rt.engine.info.threads
        mp.kv_layout = "unified"  # the runtime's batched path: one KV buffer shared by the n sequences
        mp.n_ctx = self.rt.engine.info.n_ctx
        mp.model = self.rt.model_info
        # idle baseline
        self.progress("idle baseline", 0, 1)
        with self.meter.window() as w:
            time.sleep(cfg.idle_s)
        self.idle_mw = w.mean_power_mw
        idle_fig = w.power_figure()
        # warm-up + drift reference (n=1, shallow context)
        ref_prompt = self.tokens(32)
        self.rt.generate(None, prompt_tokens=ref_prompt, max_tokens=4, temperature=0.0, aggregate="none", extractor=None)
        self.drift_first = self.ref_decode(ref_prompt)
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
                    self._energy("prefill", w, L)
                    self.cool()
        finally:
            for L, secs in pre.items():
                if secs:
                    mp.prefill.append(PrefillPoint(
                        prompt_tokens=L, prefill_s=measured(secs, "s", source="time to first token (prefill + 1 sample)"),
                        ttft_s=measured(secs, "s", source="wall clock"),
                        prefill_tok_s=measured([L / x for x in secs], "tok/s", source="prompt tokens / prefill_s")))
        # decode over context depth (n=1) and over n (shallow context)
        points = [(max(c, 32), 1) for c in cfg.contexts] + [(32, n) for n in cfg.ns if n != 1]
        dec: dict[tuple[int, int], list[float]] = {pt: [] for pt in points}
        total = cfg.reps * len(points)
        energy_ctx = max(min(cfg.contexts or [0]), 32)
        try:
            for r in range(cfg.reps):
                for i, (ctx, n) in enumerate(points):
                    self.progress(f"decode ctx={ctx} n={n} (rep {r + 1}/{cfg.reps})", r * len(points) + i, total)
                    res, w = self.timed(prompt_tokens=self.tokens(ctx), max_tokens=cfg.decode_steps, n=n,
                                        temperature=0.8, seed=r, ignore_eos=True)
                    dec[(ctx, n)].append(res.timings.decode_s / max(res.timings.steps - 1, 1))
                    if n == 1 and ctx == energy_ctx:
                        self._energy("decode", w, res.timings.generated_tokens)
                    self.cool()
        finally:
            for (ctx, n), steps in dec.items():
                if steps:
                    mp.decode.append(DecodePoint(
                        context_tokens=ctx, n=n, steps=cfg.decode_steps,
                        step_s=measured(steps, "s", source="decode wall time / (steps - 1)"),
                        decode_tok_s=measured([n / x for x in steps], "tok/s", source="n / step_s")))
        self.drift_last = self.ref_decode(ref_prompt)
        mp.peak_rss_mb = measured([_peak_rss_mb()], "MB", source="getrusage ru_maxrss of the profiling process")
        mp.energy = self.energy_info(idle_fig)

    def ref_decode(self, toks, reps: int = 3) -> float:
        """Median step time of a short greedy n=1 decode (the drift reference)."""
        xs = []
        for _ in range(reps):
            res = self.rt.generate(None, prompt_tokens=toks, max_tokens=self.cfg.decode_steps, temperature=0.0,
                                   aggregate="none", extractor=None, ignore_eos=True)
            xs.append(res.timings.decode_s / max(res.timings.steps - 1, 1))
        return sorted(xs)[len(xs) // 2]

    def cool(self):
        if self.cfg.cooldown_s > 0:
            time.sleep(self.cfg.cooldown_s)

    def _energy(self, phase: str, w, tokens: int):
        if w.energy_mj is None or self.idle_mw is None or not w.covered_s or not w.complete:
            self.skipped_windows += 1
            return
        above = w.energy_mj - self.idle_mw * w.covered_s  # mW x s = mJ
        self.energy[phase].append((above, tokens, w))

    def energy_info(self, idle_fig: Figure) -> EnergyInfo:
        name = self.meter.name
        if idle_fig.value is None:
            why = idle_fig.note or getattr(self.meter, "why_unavailable", None) or "no power sensor"
            return EnergyInfo(meter=name, idle_power_mw=idle_fig,
                              prefill_energy_per_token_mj=unavailable("mJ/token", why),
                              decode_energy_per_token_mj=unavailable("mJ/token", why),
                              note=f"no energy figures: {why}")

        def per_token(rows, label):
            vals = [e / t for e, t, _ in rows if t > 0]
            skipped = self.skipped_windows
            note = f"{skipped} incomplete window(s) left out (sensor gaps)" if skipped else None
            return measured(vals, "mJ/token", source=f"{name}, {label}, idle {self.idle_mw:.0f} mW subtracted", note=note) if vals \
                else unavailable("mJ/token", "no complete energy window" + (f" ({note})" if note else ""))

        return EnergyInfo(meter=name, idle_power_mw=idle_fig,
                          prefill_energy_per_token_mj=per_token(self.energy["prefill"], "prefill windows"),
                          decode_energy_per_token_mj=per_token(self.energy["decode"], "n=1 decode windows (incl. its short prefill)"),
                          note="energy above the idle baseline")

    def drift(self) -> DriftReport:
        rep = DriftReport()
        first, last = getattr(self, "drift_first", None), getattr(self, "drift_last", None)
        if first and last:
            rep.decode_drift_pct = 100.0 * (last - first) / first
            if abs(rep.decode_drift_pct) > 5:
                rep.reasons.append(f"decode step time drifted {rep.decode_drift_pct:+.1f} % between the first and last reference runs (median of 3 each)")
        if self.thermal is not None:
            s = self.thermal.summary()
            rep.cpu_freq_start_mhz = s.get("cpu_freq_start_mhz")
            rep.cpu_freq_min_mhz = s.get("cpu_freq_min_mhz")
            rep.max_temp_c = s.get("max_temp_c")
            rep.throttle_reasons = list(s.get("throttle_reasons") or [])
            if rep.cpu_freq_start_mhz and rep.cpu_freq_min_mhz and rep.cpu_freq_min_mhz < 0.9 * rep.cpu_freq_start_mhz:
                rep.reasons.append(f"CPU clock dropped from {rep.cpu_freq_start_mhz:.0f} to {rep.cpu_freq_min_mhz:.0f} MHz")
            if rep.throttle_reasons:
                rep.reasons.append("GPU throttle reasons: " + ", ".join(rep.throttle_reasons))
        rep.flagged = bool(rep.reasons)
        return rep


def profile_model(model: str, cfg: Optional[SweepConfig] = None, *, output: Optional[str | Path] = None,
                  sysfs_root: str = "/", nvml=None, meter=None, progress: Optional[Progress] = None,
                  device_name: Optional[str] = None, existing: Optional[DeviceProfile] = None) -> DeviceProfile:
    """Measure one model on this device; return (and save, if ``output``) the device profile.

    If ``existing`` is given, the model's entry is replaced or added to it.
    """
    from edgekit.device.detect import detect_device
    from edgekit.device.thermal import ThermalSampler
    from edgekit.models.gguf import check_gguf
    from edgekit.models.store import resolve
    from edgekit.power import best_meter
    from edgekit.schemas.profile import ModelInfo

    cfg = cfg or SweepConfig()
    out = Path(output) if output else None
    if out is not None:
        check_writable(out)
    resolved = resolve(model)  # unknown model -> clear error before anything runs
    info = check_gguf(resolved.path)
    cfg.n_ctx = cfg.validate(info.arch_key("context_length"))
    report = detect_device(sysfs_root=sysfs_root, nvml=nvml)
    profile = existing or DeviceProfile(device=report.to_device_info(), edgekit_version=__version__)
    if device_name:
        profile.device.name = device_name
    meter = meter or best_meter(sysfs_root=sysfs_root, nvml=nvml)
    thermal = ThermalSampler(sysfs_root=sysfs_root, nvml=nvml).start()
    mp = ModelProfile(model=ModelInfo(id=resolved.id, sha256=resolved.sha256))
    sweep = _Sweep(model, cfg, meter, thermal, progress)
    failure: Optional[BaseException] = None
    try:
        sweep.run(mp)
    except (EdgekitError, OSError, RuntimeError, KeyboardInterrupt) as e:
        failure = e
        mp.gaps.append(f"sweep stopped early: {type(e).__name__}: {e}")
    finally:
        thermal.stop()
        if sweep.rt is not None:
            sweep.rt.close()
    mp.drift = sweep.drift()
    if not meter.available:
        mp.gaps.append(f"energy: {meter.why_unavailable}" + (f" (fix: {meter.fix})" if getattr(meter, "fix", None) else ""))
    mp.peak_vram_mb = mp.peak_vram_mb or unavailable("MB", "CPU build: no GPU memory used")
    profile.models = [m for m in profile.models if m.model.id != mp.model.id] + [mp]
    if out is not None:
        profile.save(out)
    if failure is not None:
        where = f"; what was measured is saved in {out}" if out else ""
        if isinstance(failure, EdgekitError):
            failure.message += where
            raise failure
        raise EdgekitError(f"profiling stopped: {failure}{where}", fix="see the labelled gap in the profile; rerun to complete it") from failure
    return profile
