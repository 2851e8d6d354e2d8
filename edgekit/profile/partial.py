"""A profile sweep that stops early: what it measured is kept as an entry labelled ``partial``
(``gaps`` names every missing point and repetition) and saved where it removes nothing; the
exception raised says where the data went."""

from __future__ import annotations

from pathlib import Path

from edgekit.errors import EdgekitError, SchemaError
from edgekit.figures import measured
from edgekit.profile.latency import LOAD_SOURCE, Sweep, peak_rss_mb
from edgekit.schemas.profile import DeviceProfile, ModelProfile


class ProfileInterrupted(KeyboardInterrupt):
    """Ctrl-C (or a KeyboardInterrupt) stopped the sweep. Still a KeyboardInterrupt; carries a
    one-line ``message`` saying where the partial data went, ``saved_to`` (None if nothing was
    saved) and ``profile`` (the profile with the partial entry, saved or not)."""

    def __init__(self, message: str, saved_to: Path | None = None, profile: DeviceProfile | None = None):
        super().__init__(message)
        self.message, self.saved_to, self.profile = message, saved_to, profile


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


def label_partial(mp: ModelProfile, sweep: Sweep, failure: BaseException) -> None:
    """Mark ``mp`` partial; keep what was measured; name every missing point and repetition."""
    cfg = sweep.cfg
    if mp.load_s is None and sweep.loads:  # stopped during a later load repetition
        mp.load_s = measured(sweep.loads, "s", source=LOAD_SOURCE)
        mp.model = sweep.rt.model_info
    if mp.energy is None and sweep.idle_fig is not None:
        mp.energy = sweep.windows.info(sweep.idle_fig)  # from the windows measured so far
    if mp.peak_rss_mb is None and sweep.loads:
        mp.peak_rss_mb = measured(
            [peak_rss_mb()], "MB", source="getrusage ru_maxrss of the profiling process (up to the stop)"
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


def stopped(
    failure: BaseException, profile: DeviceProfile, mp: ModelProfile, sweep: Sweep, out: Path | None, appending: bool
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
