"""The profile sweep: load, prefill, decode over context depth and parallel samples, memory,
energy (idle baseline subtracted) and thermal/clock drift, for one model on this device.

Every figure is ``measured`` (repetitions, median, IQR, CV) or ``unavailable`` with the reason.

An interrupted or failed sweep never removes measured data: what it measured is saved as an entry
labelled ``partial`` (``gaps`` names the missing points and repetitions) beside any complete entry
of the model, and an existing output file that is not being appended to is left unchanged (the
partial result goes to ``<out>.partial.json``). Writes are atomic (temp file + rename).

This module runs the sweep (:func:`profile_model`); what it measures lives beside it:
``sweep_config`` (the points and repetitions), ``latency`` (loads, prefill, decode over depth and n),
``energy`` (energy per token above idle), ``drift`` (drift, clocks, throttling, GPU memory peak),
``loaded`` (thread scaling, background load) and ``partial`` (a sweep that stops early).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

from edgekit import engines
from edgekit.errors import SchemaError
from edgekit.profile import loaded
from edgekit.profile.drift import drift_report, vram_figure
from edgekit.profile.latency import Sweep
from edgekit.profile.partial import ProfileInterrupted, label_partial, partial_path, stopped
from edgekit.profile.sweep_config import FILLER, Progress, SweepConfig
from edgekit.schemas import __version__
from edgekit.schemas.profile import DeviceProfile, ModelProfile

__all__ = [  # the sweep's public names, wherever they live
    "FILLER",
    "ProfileInterrupted",
    "Progress",
    "SweepConfig",
    "check_writable",
    "partial_path",
    "profile_model",
    "vram_figure",
]


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
    sweep = Sweep(model, cfg, meter, thermal, progress)
    sweep.background = loaded.Loaded(cfg.background)  # a bad --background fails here, before the model loads
    failure: BaseException | None = None
    try:
        sweep.run(mp)
        sweep.background.end(mp)
    except BaseException as e:  # whatever stops the sweep, what it measured is saved below
        failure = e
    finally:
        sweep.background.stop()  # never leaves a worker behind
        thermal.stop()
        if sweep.rt is not None:
            sweep.rt.close()
    mp.drift = drift_report(sweep.drift_first, sweep.drift_last, thermal)
    if failure is not None:
        label_partial(mp, sweep, failure)
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
    stop = stopped(failure, profile, mp, sweep, out, appending=existing is not None)
    if stop is failure:
        raise failure
    raise stop from failure
