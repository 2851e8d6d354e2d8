"""The device profile a deployment plans with: this device's own when one matches, else measured now.

A profile is reused when it was measured (not published) on this CPU model with the same instruction
sets and kernel configuration (:func:`edgekit.plan.this_device.device_notes` says nothing), by the same
llama.cpp build and llama-cpp-python version, and holds a complete entry for the candidate model (same
file, by sha256). Looked for in: ``--profile``, the deployment folder, then ``./profiles/``. Models it
lacks are quick-profiled into ``DIR/profile.json`` (a copy, so a shipped profile is never edited).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.device.sysinfo import llama_build
from edgekit.errors import EdgekitError
from edgekit.jsonio import write_atomic
from edgekit.plan.this_device import device_notes
from edgekit.schemas.profile import DeviceProfile, load_profile


@dataclass
class ProfileChoice:
    path: Path  # the profile the plan uses: DIR/profile.json (a copy of the match, so the folder stands alone)
    source: Path | None  # the matching profile it started from (None: measured from scratch)
    missing: list[str]  # candidate models it lacks: profiled now
    notes: list[str] = field(default_factory=list)  # why other profiles were passed over


def mismatch(profile: DeviceProfile, build: dict | None = None) -> str | None:
    """Why ``profile`` is not this device's (None: it is)."""
    if profile.kind != "measured":
        return f"a {profile.kind} profile, not measured here"
    notes = device_notes(profile)
    if notes:
        return notes[0].removeprefix("warning: ").split(" (fix:")[0]
    b = build if build is not None else llama_build()
    d = profile.device
    if d.llama_build and b.get("build") and d.llama_build != b["build"]:
        return f"measured with the {d.llama_build} llama.cpp build; this one is {b['build']}"
    if d.llama_cpp_python and b.get("version") and d.llama_cpp_python != b["version"]:
        return f"measured with llama-cpp-python {d.llama_cpp_python}; this is {b['version']}"
    return None


def _covers(profile: DeviceProfile, model_id: str, sha256: str | None) -> bool:
    return any(
        m.model.id == model_id and (sha256 is None or m.model.sha256 in (None, sha256))
        for m in profile.complete_models()
    )


def find_profile(
    models: Sequence[tuple[str, str | None]],
    out_dir: Path,
    explicit: str | Path | None = None,
    search: Sequence[Path] = (Path("profiles"),),
    build: dict | None = None,
) -> ProfileChoice:
    """``models``: (id, sha256) of the candidates. The matching profile covering most of them wins."""
    own = out_dir / "profile.json"
    paths: list[Path] = [Path(explicit)] if explicit else []
    paths += [own] + [p for d in search if d.is_dir() for p in sorted(d.glob("*.json"))]
    best, best_n, notes = None, -1, []
    for p in dict.fromkeys(paths):
        if not p.is_file():
            if explicit and p == Path(explicit):
                notes.append(f"{p}: no such file")
            continue
        try:
            prof = load_profile(p)
        except EdgekitError as e:
            notes.append(f"{p}: not a readable profile ({e.message})")
            continue
        why = mismatch(prof, build)
        if why:
            notes.append(f"{p}: {why}")
            continue
        n = sum(_covers(prof, mid, sha) for mid, sha in models)
        if n > best_n:
            best, best_n = (p, prof), n
    if best is None:
        return ProfileChoice(own, None, [mid for mid, _ in models], notes)
    p, prof = best
    missing = [mid for mid, sha in models if not _covers(prof, mid, sha)]
    return ProfileChoice(own, p, missing, notes)


def complete_profile(
    choice: ProfileChoice,
    specs: dict[str, str],
    profile_fn: Callable[..., DeviceProfile] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Quick-profile the models ``choice`` lacks into ``choice.path`` (a copy of the matching profile first).
    ``specs``: model id -> what to load. ``profile_fn`` replaces edgekit.profile.sweep.profile_model (tests)."""
    choice.path.parent.mkdir(parents=True, exist_ok=True)
    if choice.source is not None and choice.source.resolve() != choice.path.resolve():
        write_atomic(choice.path, choice.source.read_bytes(), "profile")
    if not choice.missing:
        return choice.path
    from edgekit.profile.sweep import SweepConfig, profile_model

    existing = load_profile(choice.path) if choice.source is not None else None
    for i, mid in enumerate(choice.missing):
        if progress:
            progress(i, len(choice.missing))
        if profile_fn is not None:
            existing = profile_fn(specs[mid], output=choice.path, existing=existing)
        else:
            existing = profile_model(specs[mid], SweepConfig.quick(), output=choice.path, existing=existing)
    if progress:
        progress(len(choice.missing), len(choice.missing))
    return choice.path
