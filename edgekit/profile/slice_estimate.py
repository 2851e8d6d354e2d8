"""Estimate a model's profile from two block slices of its file (``edgekit profile --slices``).

Why: the cross-model predictor (``perfmodel.cross_model``) scales profiled models by file size and
block FLOPs, but on CPUs the speed of a quant type's kernel depends on the matrix shape as much as
on the type (benchmarks/README.md: per-element cost of one type varies 2x with width on the CI VM),
and a "Q4_K_M" file of one model holds other tensor types than another's. So instead of predicting
the kernels, time them: a 1-block slice and a k-block slice of the file itself (same tensor types,
shapes, vocabulary and output head) are swept like any model, and every point is extrapolated
linearly in depth,

    t(point) = t_1 + (n_layer - 1) * (t_k - t_1) / (k - 1)

(per repetition, paired; the figure is the median). The entry is labelled ``estimate`` in the
profile; the fit adds the extrapolation uncertainty below to its interval; the planner says the
choice rests on a block-slice estimate and ``--confirm`` measures the whole model.

Not estimated: load time, peak memory (the slices run in one process whose high-water mark mixes
them; the planner's memory model falls back to weights + KV + a labelled overhead), energy.
An estimate never replaces a measured entry of the model, and is all or nothing: a stop or failure
saves nothing and leaves the output file unchanged.
"""

from __future__ import annotations

import dataclasses
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from edgekit import engines
from edgekit.errors import EdgekitError, UsageError
from edgekit.figures import Figure, unavailable
from edgekit.profile.sweep import ProfileInterrupted, SweepConfig, check_writable, profile_model
from edgekit.schemas.profile import DecodePoint, DeviceProfile, ModelProfile, PrefillPoint, SliceEstimate

# Extrapolation uncertainty added to the fit's interval (relative), per part. Set from
# benchmarks/perfmodel_validation.py --slices on the 2-core CI VM (2026-11-27): see benchmarks/README.md.
SLICE_UNC = {"prefill": 0.10, "decode": 0.10}
SLICE_UNC_HOW = "set from benchmarks/perfmodel_validation.py --slices on the 2-core CI VM, 2026-11-27"
DEFAULT_BLOCKS = 8
MIN_LAYERS = 6  # below this a slice saves little: profile the whole model


def _extrapolate(a: Figure, b: Figure, factor: float, unit: str, how: str) -> tuple[Figure, bool]:
    """Paired repetitions a_r + factor * (b_r - a_r) (medians when the counts differ); also whether the
    k-block slice was not slower than the 1-block one (noise: clamped so a block costs >= 0)."""
    xa, xb = a.samples or [a.value], b.samples or [b.value]
    if len(xa) != len(xb):
        xa, xb = [statistics.median(xa)], [statistics.median(xb)]
    est = [ya + factor * max(yb - ya, 0.0) for ya, yb in zip(xa, xb)]
    clamped = any(yb < ya for ya, yb in zip(xa, xb))
    mean = statistics.fmean(est)
    cv = statistics.stdev(est) / mean if len(est) > 1 and mean else None
    fig = Figure(
        value=statistics.median(est), unit=unit, method="estimated", reps=len(est), samples=est, cv=cv, source=how
    )
    return fig, clamped


def combine(one: ModelProfile, many: ModelProfile, n_layer: int, k: int, how: str) -> tuple[list, list, list[str]]:
    """Prefill and decode points of the whole model from the 1-block (``one``) and k-block (``many``)
    slice entries; the third item lists the points where the slices' order was reversed (noise)."""
    f = (n_layer - 1) / (k - 1)
    clamped: list[str] = []

    def points(a_pts, b_pts, key, time_of, label):
        """(point of ``one``, its extrapolated time) for each point both slices measured."""
        b = {key(p): p for p in b_pts}
        for p in a_pts:
            q = b.get(key(p))
            if q is not None and time_of(p).value is not None and time_of(q).value is not None:
                fig, c = _extrapolate(time_of(p), time_of(q), f, "s", how)
                if c:
                    clamped.append(label(p))
                yield p, fig

    def rate(tokens: int, fig: Figure, source: str) -> Figure:
        return Figure(value=tokens / fig.value, unit="tok/s", method="estimated", source=source)

    prefill = [
        PrefillPoint(
            prompt_tokens=p.prompt_tokens,
            prefill_s=fig,
            prefill_tok_s=rate(p.prompt_tokens, fig, "prompt tokens / prefill_s"),
        )
        for p, fig in points(
            one.prefill,
            many.prefill,
            lambda p: p.prompt_tokens,
            lambda p: p.prefill_s,
            lambda p: f"prefill {p.prompt_tokens}",
        )
    ]
    decode = [
        DecodePoint(
            context_tokens=d.context_tokens, n=d.n, steps=d.steps, step_s=fig, decode_tok_s=rate(d.n, fig, "n / step_s")
        )
        for d, fig in points(
            one.decode,
            many.decode,
            lambda d: (d.context_tokens, d.n),
            lambda d: d.step_s,
            lambda d: f"decode ctx={d.context_tokens} n={d.n}",
        )
    ]
    return prefill, decode, clamped


def estimate_by_slices(
    model: str,
    cfg: SweepConfig | None = None,
    *,
    blocks: int = DEFAULT_BLOCKS,
    output: str | Path | None = None,
    existing: DeviceProfile | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    device_name: str | None = None,
    sysfs_root: str = "/",
    nvml=None,
    meter=None,
    workdir: str | Path | None = None,
    warn: Callable[[str], None] | None = None,
) -> DeviceProfile:
    """Sweep a 1-block and a ``blocks``-block slice of ``model`` and add the extrapolated entry
    (labelled ``estimate``) to ``existing`` (or a new profile); saved to ``output`` when given."""
    from edgekit.device.detect import detect_device
    from edgekit.models.gguf import check_gguf
    from edgekit.models.slices import slice_blocks, write_slice
    from edgekit.models.store import model_info, resolve
    from edgekit.schemas import __version__

    cfg = cfg or SweepConfig.quick()
    if engines.canonical(cfg.engine) != "llama.cpp":
        raise UsageError(
            "--slices works on GGUF models (llama.cpp engine)", fix="drop --engine, or profile the whole model"
        )
    out = Path(output) if output else None
    if out is not None:
        check_writable(out)
    resolved = resolve(model)
    g = check_gguf(resolved.path)
    info = model_info(resolved, g)
    L = g.n_layer or 0
    if L < MIN_LAYERS or blocks > L // 2:
        raise UsageError(
            f"{resolved.id} has {L} blocks: a {blocks}-block slice would save little over the whole model",
            fix=f"profile it whole (`edgekit profile --model {model} --quick`)"
            + ("" if L < MIN_LAYERS else f", or pass --slice-blocks {max(2, L // 2)} or fewer"),
        )
    if existing is not None:
        have = [
            m
            for m in existing.measured_models()
            if m.model.id == info.id or (info.sha256 and m.model.sha256 == info.sha256)
        ]
        if have:
            raise UsageError(
                f"{out or 'the profile'} already has a measured entry for {info.id}; an estimate from slices "
                "would not replace a measurement",
                fix="drop --slices (re-measure it), or write the estimate to another --output",
            )
    one, many = slice_blocks(L, blocks)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="edgekit-slices-", dir=workdir))
    entries: list[ModelProfile] = []
    stage = "slicing"
    try:
        if shutil.disk_usage(tmp).free < resolved.path.stat().st_size:
            raise UsageError(
                f"not enough free space in {tmp.parent} for two slices of {resolved.path.name}",
                fix="set TMPDIR to a folder with as much free space as the model file",
            )
        sizes = []
        for i, bl in enumerate((one, many)):
            stage = f"slice {i + 1}/2 ({len(bl)} block{'s' if len(bl) > 1 else ''})"
            if progress:
                progress(f"{stage}: writing", 0, 1)
            path = tmp / f"{resolved.path.stem}.blocks-{'-'.join(map(str, bl))}.gguf"
            sizes.append(write_slice(resolved.path, path, bl))

            def sub(what, done, total, _s=stage):
                if progress:
                    progress(f"{_s}: {what}", done, total)

            prof = profile_model(
                str(path),
                dataclasses.replace(cfg),
                sysfs_root=sysfs_root,
                nvml=nvml,
                meter=meter,
                progress=sub,
                warn=warn,
            )
            entries.append(prof.models[-1])
            path.unlink()
    except KeyboardInterrupt:
        raise ProfileInterrupted(
            f"slice estimate of {info.id} interrupted at {stage}; nothing saved (an estimate is all "
            f"or nothing){f', {out} unchanged' if out is not None and out.exists() else ''}"
        ) from None
    except EdgekitError as e:
        e.message = (
            f"slice estimate of {info.id} stopped at {stage}: {e.message}; nothing saved"
            f"{f', {out} unchanged' if out is not None and out.exists() else ''}"
        )
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    how = (
        f"{(L - 1) / (len(many) - 1):.3g} x (blocks {many} - block {one}) + block {one}, slices timed here "
        f"({'/'.join(f'{s / 1e6:.0f}' for s in sizes)} MB)"
    )
    prefill, decode, clamped = combine(entries[0], entries[1], L, len(many), how)
    if not prefill or not decode:
        raise EdgekitError(
            f"slice estimate of {info.id}: the two slice sweeps share no prefill or decode point; nothing saved"
        )
    a = entries[0]
    mp = ModelProfile(
        model=info,
        threads=a.threads,
        gpu_layers=a.gpu_layers,
        n_ctx=a.n_ctx,
        kv_layout=a.kv_layout,
        prefill=prefill,
        decode=decode,
        load_s=unavailable("s", "not measured: estimated from block slices"),
        peak_rss_mb=unavailable(
            "MB", "not measured: estimated from block slices (memory = weights + KV + overhead by the planner's model)"
        ),
        peak_vram_mb=a.peak_vram_mb,
        drift=a.drift,
        gaps=[
            "estimate: every time is extrapolated from a 1-block and a "
            f"{len(many)}-block slice of the file; load time, peak memory and energy are not estimated "
            f"(measure the whole model: `edgekit profile --model {model} --quick --append`)"
        ],
        estimate=SliceEstimate(
            n_layer=L,
            blocks_one=one,
            blocks_k=many,
            slice_bytes=sizes,
            rel_unc_prefill=SLICE_UNC["prefill"],
            rel_unc_decode=SLICE_UNC["decode"],
            how=SLICE_UNC_HOW,
            seconds=round(time.perf_counter() - t0, 1),
        ),
    )
    if clamped:
        mp.gaps.append(
            "noise: the k-block slice timed no slower than the 1-block slice at "
            + ", ".join(clamped)
            + " (block cost clamped at 0 there)"
        )
    profile = existing or DeviceProfile(
        device=detect_device(sysfs_root=sysfs_root, nvml=nvml).to_device_info(), edgekit_version=__version__
    )
    if device_name:
        profile.device.name = device_name
    # replaces an earlier estimate of the model (never a measured entry: refused above); partial entries stay
    profile.models = [m for m in profile.models if not (m.model.id == info.id and m.estimate is not None)] + [mp]
    profile.models.sort(key=lambda m: m.is_partial)
    if out is not None:
        profile.save(out)
    return profile
