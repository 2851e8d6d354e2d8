"""The profile sweep: load, prefill, decode over context depth and parallel samples, memory,
energy (idle baseline subtracted) and thermal/clock drift, for one model on this device.

Every figure is ``measured`` (repetitions, median, IQR, CV) or ``unavailable`` with the reason.

An interrupted or failed sweep never removes measured data: what it measured is saved as an entry
labelled ``partial`` (``gaps`` names the missing points and repetitions) beside any complete entry
of the model, and an existing output file that is not being appended to is left unchanged (the
partial result goes to ``<out>.partial.json``). Writes are atomic (temp file + rename).
"""

from __future__ import annotations

import os
import resource
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from edgekit import engines
from edgekit.errors import EdgekitError, SchemaError, UsageError
from edgekit.figures import Figure, measured, unavailable
from edgekit.profile import loaded
from edgekit.schemas import __version__
from edgekit.schemas.profile import DecodePoint, DeviceProfile, DriftReport, EnergyInfo, ModelProfile, PrefillPoint

FILLER = (
    "The robot moved the red block onto the blue tray, then checked the camera feed, logged the "
    "joint angles and waited for the next instruction from the operator at the control station. "
)


@dataclass
class SweepConfig:
    prompt_lengths: list[int] = field(default_factory=lambda: [32, 128, 512, 2048])
    contexts: list[int] = field(default_factory=lambda: [0, 512, 2048, 4096])
    # every n up to 8: the step cost is a sawtooth in n on CPUs (perfmodel.model.ROW_CHUNK), and
    # accuracy tables use every k in 1..8
    ns: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5, 6, 7, 8, 12, 16])
    decode_steps: int = 32
    reps: int = 5
    load_reps: int = 3
    idle_s: float = 3.0
    cooldown_s: float = 0.0
    threads: int | None = None
    n_ctx: int | None = None
    background: str | None = None  # --background: N busy workers or a command (edgekit.profile.background)
    gpu_layers: int | None = None  # llama.cpp: layers offloaded to the GPU (-1: all); None: the engine's default (0)
    engine: str = "llama.cpp"  # any registered engine that takes token prompts and has tokenize() (llama.cpp, onnx)

    @classmethod
    def quick(cls) -> SweepConfig:
        return cls(
            prompt_lengths=[32, 128, 512],
            contexts=[0, 1024],
            ns=[1, 2, 3, 4, 5, 6, 7, 8],
            decode_steps=16,
            reps=3,
            load_reps=2,
            idle_s=1.0,
        )

    def decode_points(self) -> list[tuple[int, int]]:
        """(context depth, n) of each decode point: depth over n=1, then n at a shallow context."""
        pts = [(max(c, 32), 1) for c in self.contexts] + [(32, n) for n in self.ns if n != 1]
        return list(dict.fromkeys(pts))

    def ctx_warning(self, model_ctx_train: int | None) -> str | None:
        """One line when the requested context exceeds what the model was trained for."""
        if self.n_ctx and model_ctx_train and self.n_ctx > model_ctx_train:
            return (
                f"--ctx {self.n_ctx} is above the {model_ctx_train} tokens this model was trained for; the KV "
                f"buffer and memory figures are sized for {self.n_ctx} and points deeper than {model_ctx_train} "
                f"time a context the model cannot use well (fix: pass --ctx {model_ctx_train} or less)"
            )
        return None

    def needed_ctx(self) -> int:
        return max(
            max(self.prompt_lengths) + 1,
            max(self.contexts or [0]) + 32 + self.decode_steps,
            32 + max(self.ns) * self.decode_steps,
        )

    def validate(self, model_ctx_train: int | None) -> int:
        from edgekit.schemas.checks import check_gpu_layers

        check_gpu_layers(self.gpu_layers, engines.canonical(self.engine))
        if self.n_ctx is not None and self.n_ctx < 1:
            raise UsageError(f"--ctx must be >= 1, got {self.n_ctx}", fix="pass --ctx 1 or more, or leave it out")
        if self.reps < 1 or self.decode_steps < 2:
            raise UsageError(
                "reps must be >= 1 and decode steps >= 2", fix="pass --reps 1 or more and --steps 2 or more"
            )
        if (
            any(x <= 0 for x in self.prompt_lengths)
            or any(x < 0 for x in self.contexts)
            or any(x <= 0 for x in self.ns)
        ):
            raise UsageError(
                "sweep values must be positive: --prompt-lengths and --ns > 0, --contexts >= 0",
                fix="e.g. --prompt-lengths 64,256 --contexts 0,512 --ns 1,2,4",
            )
        need = self.needed_ctx()
        limit = self.n_ctx or model_ctx_train
        if limit and need > limit:
            raise UsageError(
                f"the sweep needs {need} tokens of context but the {'--ctx' if self.n_ctx else 'model'} allows {limit}",
                fix="shorten --prompt-lengths/--contexts, lower --ns or --steps",
            )
        return max(need, self.n_ctx or 0)


Progress = Callable[[str, int, int], None]  # (stage, done, total)


class ProfileInterrupted(KeyboardInterrupt):
    """Ctrl-C (or a KeyboardInterrupt) stopped the sweep. Still a KeyboardInterrupt; carries a
    one-line ``message`` saying where the partial data went, ``saved_to`` (None if nothing was
    saved) and ``profile`` (the profile with the partial entry, saved or not)."""

    def __init__(self, message: str, saved_to: Path | None = None, profile: DeviceProfile | None = None):
        super().__init__(message)
        self.message, self.saved_to, self.profile = message, saved_to, profile


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
        raise SchemaError(
            f"cannot write the profile to {path}: {e.strerror or e}", fix="choose a writable --output path"
        ) from e


class _Sweep:
    def __init__(self, model: str, cfg: SweepConfig, meter, thermal, progress: Progress | None):
        self.model, self.cfg, self.meter, self.thermal = model, cfg, meter, thermal
        self._user_progress = progress or (lambda *a: None)
        self.stage = "start"  # the stage being measured (named in the message when the sweep stops)
        self.rt = None
        self.mp: ModelProfile | None = None
        self.idle_mw: float | None = None
        self.energy = {"prefill": [], "decode": []}  # (energy above idle mJ, tokens)
        self.skipped_windows = 0  # energy windows left out for sensor gaps
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
        mp.load_s = measured(
            loads, "s", source="Runtime() wall clock (first load may be from disk, later from page cache)"
        )
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
        self.idle_mw = w.mean_power_mw
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
                    self._energy("prefill", w, L)
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
                        self._energy("decode", w, res.timings.generated_tokens)
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
        mp.peak_rss_mb = measured([_peak_rss_mb()], "MB", source="getrusage ru_maxrss of the profiling process")
        mp.energy = self.energy_info(idle_fig)

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
            return EnergyInfo(
                meter=name,
                idle_power_mw=idle_fig,
                prefill_energy_per_token_mj=unavailable("mJ/token", why),
                decode_energy_per_token_mj=unavailable("mJ/token", why),
                note=f"no energy figures: {why}",
            )

        def per_token(rows, label):
            vals = [e / t for e, t, _ in rows if t > 0]
            skipped = self.skipped_windows
            note = f"{skipped} incomplete window(s) left out (sensor gaps)" if skipped else None
            low = [v for v in vals if v <= 0]
            if low:  # at or below idle: the work was shorter than the meter resolves (a GPU prefill of a few ms)
                ms = sorted(1000 * w.covered_s for _, _, w in rows)[len(rows) // 2]
                return unavailable(
                    "mJ/token",
                    f"not resolvable: {len(low)} of {len(vals)} {label} read at or below the "
                    f"idle baseline (median window {ms:.0f} ms; {name}'s counter is coarser than the work)",
                )
            return (
                measured(vals, "mJ/token", source=f"{name}, {label}, idle {self.idle_mw:.0f} mW subtracted", note=note)
                if vals
                else unavailable("mJ/token", "no complete energy window" + (f" ({note})" if note else ""))
            )

        return EnergyInfo(
            meter=name,
            idle_power_mw=idle_fig,
            prefill_energy_per_token_mj=per_token(self.energy["prefill"], "prefill windows"),
            decode_energy_per_token_mj=per_token(self.energy["decode"], "n=1 decode windows (incl. its short prefill)"),
            note="energy above the idle baseline",
        )

    def drift(self) -> DriftReport:
        rep = DriftReport()
        first, last = getattr(self, "drift_first", None), getattr(self, "drift_last", None)
        if first and last:
            rep.decode_drift_pct = 100.0 * (last - first) / first
            if abs(rep.decode_drift_pct) > 5:
                rep.reasons.append(
                    f"decode step time drifted {rep.decode_drift_pct:+.1f} % between the first and last reference runs (median of 3 each)"
                )
        if self.thermal is not None:
            s = self.thermal.summary()
            rep.cpu_freq_start_mhz = s.get("cpu_freq_start_mhz")
            rep.cpu_freq_min_mhz = s.get("cpu_freq_min_mhz")
            rep.max_temp_c = s.get("max_temp_c")
            rep.throttle_reasons = list(s.get("throttle_reasons") or [])
            if rep.cpu_freq_start_mhz and rep.cpu_freq_min_mhz and rep.cpu_freq_min_mhz < 0.9 * rep.cpu_freq_start_mhz:
                rep.reasons.append(
                    f"CPU clock dropped from {rep.cpu_freq_start_mhz:.0f} to {rep.cpu_freq_min_mhz:.0f} MHz"
                )
            if rep.throttle_reasons:
                rep.reasons.append("GPU throttle reasons: " + ", ".join(rep.throttle_reasons))
        rep.flagged = bool(rep.reasons)
        return rep


def profile_model(
    model: str,
    cfg: SweepConfig | None = None,
    *,
    output: str | Path | None = None,
    sysfs_root: str = "/",
    nvml=None,
    meter=None,
    progress: Progress | None = None,
    device_name: str | None = None,
    existing: DeviceProfile | None = None,
    warn: Callable[[str], None] | None = None,
) -> DeviceProfile:
    """Measure one model on this device; return (and save, if ``output``) the device profile.

    ``existing`` (the profile at ``output``, for --append): a complete sweep replaces the model's
    entries in it; a sweep that stops early adds its entry labelled ``partial`` and keeps every
    other entry, the model's complete one included. Without ``existing`` a complete sweep writes a
    new profile to ``output``; one that stops early writes there only if no file exists, else to a
    free ``<output stem>.partial.json`` (nothing is overwritten). Ctrl-C raises
    :class:`ProfileInterrupted` (a KeyboardInterrupt), a failure an :class:`EdgekitError`; both say
    where the partial data went. ``warn`` gets one-line warnings (default :func:`warnings.warn`).
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
    if engines.canonical(cfg.engine) == "llama.cpp":
        resolved = resolve(model)  # unknown model -> clear error before anything runs
        ctx_train = check_gguf(resolved.path).arch_key("context_length")
        model_id, model_sha = resolved.id, resolved.sha256
    else:  # another engine finds its own model (an unknown one fails at the first load, in one line)
        engines.get(cfg.engine)  # unknown engine -> the registered ones
        ctx_train, model_id, model_sha = None, model, None
    ctx_warning = cfg.ctx_warning(ctx_train)
    cfg.n_ctx = cfg.validate(ctx_train)
    if ctx_warning:
        (warn or (lambda m: warnings.warn(m, stacklevel=3)))(ctx_warning)
    report = detect_device(sysfs_root=sysfs_root, nvml=nvml)
    profile = existing or DeviceProfile(device=report.to_device_info(), edgekit_version=__version__)
    if device_name:
        profile.device.name = device_name
    meter = meter or best_meter(sysfs_root=sysfs_root, nvml=nvml)
    thermal = ThermalSampler(sysfs_root=sysfs_root, nvml=nvml).start()
    mp = ModelProfile(model=ModelInfo(id=model_id, sha256=model_sha))
    sweep = _Sweep(model, cfg, meter, thermal, progress)
    sweep.background = loaded.Loaded(cfg.background)  # a bad --background fails here, before the model loads
    failure: BaseException | None = None
    try:
        sweep.run(mp)
        sweep.background.end(mp)
    except BaseException as e:  # noqa: BLE001 -- whatever stops the sweep, what it measured is saved below
        failure = e
    finally:
        sweep.background.stop()  # never leaves a worker behind
        thermal.stop()
        if sweep.rt is not None:
            sweep.rt.close()
    mp.drift = sweep.drift()
    if failure is not None:
        _label_partial(mp, sweep, failure)
    if not meter.available:
        mp.gaps.append(
            f"energy: {meter.why_unavailable}" + (f" (fix: {meter.fix})" if getattr(meter, "fix", None) else "")
        )
    mp.peak_vram_mb = mp.peak_vram_mb or vram_figure(thermal.summary(), sweep.build, thermal.interval_s)
    if failure is None:
        # A complete sweep supersedes every earlier entry of the model, complete or partial, and any
        # block-slice estimate of the same file (by hash: it may have been made under another id).
        profile.models = [
            m
            for m in profile.models
            if m.model.id != mp.model.id
            and not (m.estimate is not None and mp.model.sha256 and m.model.sha256 == mp.model.sha256)
        ] + [mp]
        profile.models.sort(key=lambda m: m.is_partial)  # complete entries first (stable)
        if out is not None:
            profile.save(out)
        return profile
    stop = _stopped(failure, profile, mp, sweep, out, appending=existing is not None)
    if stop is failure:
        raise failure
    raise stop from failure


def vram_figure(summary: dict, build: str | None, interval_s: float) -> Figure:
    """Peak GPU memory of the sweep from the thermal sampler's NVML readings: the highest reading
    minus the first (taken before the first load), in MB (1e6 bytes). A CPU build uses none."""
    if build in (None, "cpu"):
        return unavailable("MB", "CPU build: no GPU memory used")
    start, peak = summary.get("gpu_mem_used_start_mb"), summary.get("gpu_mem_used_peak_mb")
    if start is None or peak is None:
        return unavailable("MB", f"{build} build, but no NVML memory reading (not an NVIDIA GPU, or NVML unavailable)")
    return measured(
        [max(peak - start, 0.0) * 2**20 / 1e6],
        "MB",
        source=f"NVML device memory used, highest reading of the sweep (every {interval_s:g} s) minus the "
        "reading before the first load: the whole GPU, this process's CUDA context included",
    )


def partial_path(out: Path) -> Path:
    """A free name beside ``out`` for a partial result: ``<stem>.partial.json``, then ``-2``, ``-3``..."""
    for i in range(1, 10_000):
        p = out.with_name(f"{out.stem}.partial{'' if i == 1 else f'-{i}'}.json")
        if not p.exists():
            return p
    raise SchemaError(f"too many partial profiles beside {out}", fix="remove or merge the old *.partial*.json files")


def _why(e: BaseException) -> str:
    if isinstance(e, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    msg = e.message if isinstance(e, EdgekitError) else str(e)
    return f"{type(e).__name__}: {' '.join(msg.split())}" if msg else type(e).__name__


def _label_partial(mp: ModelProfile, sweep: _Sweep, failure: BaseException) -> None:
    """Mark ``mp`` partial; keep what was measured; name every missing point and repetition."""
    cfg = sweep.cfg
    if mp.load_s is None and sweep.loads:  # stopped during a later load repetition
        mp.load_s = measured(
            sweep.loads, "s", source="Runtime() wall clock (first load may be from disk, later from page cache)"
        )
        mp.model = sweep.rt.model_info
    if mp.energy is None and sweep.idle_fig is not None:
        mp.energy = sweep.energy_info(sweep.idle_fig)  # from the windows measured so far
    if mp.peak_rss_mb is None and sweep.loads:
        mp.peak_rss_mb = measured(
            [_peak_rss_mb()], "MB", source="getrusage ru_maxrss of the profiling process (up to the stop)"
        )
    gaps = [f"sweep stopped early at {sweep.stage}: {_why(failure)}"]
    n_load = (mp.load_s.reps or 0) if mp.load_s else 0
    if n_load < cfg.load_reps:
        gaps.append(f"load: {n_load} of {cfg.load_reps} reps")
    got = {p.prompt_tokens: p.prefill_s.reps or 0 for p in mp.prefill}
    for L in dict.fromkeys(cfg.prompt_lengths):
        if got.get(L, 0) < cfg.reps:
            gaps.append(f"prefill {L} tok: {got.get(L, 0)} of {cfg.reps} reps")
    got = {(d.context_tokens, d.n): d.step_s.reps or 0 for d in mp.decode}
    for ctx, n in cfg.decode_points():
        if got.get((ctx, n), 0) < cfg.reps:
            gaps.append(f"decode ctx={ctx} n={n}: {got.get((ctx, n), 0)} of {cfg.reps} reps")
    if sweep.drift_last is None:
        gaps.append("drift: " + ("last reference run not measured" if sweep.drift_first else "not measured"))
    if mp.peak_rss_mb is None:
        gaps.append("peak RSS: not measured (no model loaded)")
    if mp.energy is None:
        gaps.append("energy: not measured (stopped before the idle baseline)")
    mp.gaps[:0] = gaps
    mp.partial = True


def _stopped(
    failure: BaseException, profile: DeviceProfile, mp: ModelProfile, sweep: _Sweep, out: Path | None, appending: bool
) -> BaseException:
    """Save the partial entry where it removes nothing; return the exception to raise."""
    mid = mp.model.id
    had_complete = any(m.model.id == mid for m in profile.complete_models())
    anything = bool(sweep.loads or mp.prefill or mp.decode)
    target: Path | None = None
    save_error: str | None = None
    if anything:
        profile.models = profile.models + [mp]  # added beside, never in place of, earlier entries
        profile.models.sort(key=lambda m: m.is_partial)
        if out is not None:
            target = out if appending or not out.exists() else partial_path(out)
            try:
                profile.save(target)
            except EdgekitError as e:
                save_error, target = e.message, None
    head, extra = f"profiling {mid} stopped at {sweep.stage}", ""
    if target is not None:
        where = f"partial data saved to {target}, labelled partial"
        if target != out:
            extra = f"; {out} is left unchanged"
        elif had_complete:
            extra = "; its complete entry is kept"
            where = f"partial data saved beside it in {target}, labelled partial"
    elif save_error:
        where = f"the partial data could not be saved: {save_error}"
    elif anything:
        where = "partial data not saved: no output path"
    else:
        where = "nothing was measured, nothing saved" + (
            f"; {out} unchanged" if out is not None and out.exists() else ""
        )
    if isinstance(failure, KeyboardInterrupt):
        return ProfileInterrupted(f"{head}{extra} ({where})", target, profile)
    if isinstance(failure, EdgekitError):
        failure.message = f"{failure.message}; {head}{extra}; {where}"
        failure.saved_to, failure.profile = target, profile
        return failure
    if isinstance(failure, Exception):
        err = EdgekitError(
            f"{head}: {_why(failure)}{extra}; {where}",
            fix="see the gaps in the partial entry and rerun to complete it; EDGEKIT_DEBUG=1 shows the traceback",
        )
        err.saved_to, err.profile = target, profile
        return err
    return failure  # SystemExit and the like: saved, then passed on unchanged
