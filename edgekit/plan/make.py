"""`make_plan()`: what `edgekit plan` calls -- load files, plan, write the plan file and plot."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from edgekit.errors import SchemaError, UsageError
from edgekit.plan.export import to_plan_file
from edgekit.plan.joint import joint_plan
from edgekit.plan.planner import PlanResult, plan
from edgekit.plan.this_device import cores_scale, device_notes
from edgekit.plan.variant_candidates import list_variant_cards, variant_candidates
from edgekit.schemas.checks import check_base_url, check_output_path, check_positive
from edgekit.schemas.profile import ModelInfo, load_profile
from edgekit.schemas.stopping import FORMS as STOP_FORMS
from edgekit.schemas.stopping import parse_stop_rule
from edgekit.schemas.table import load_table


def catalogue_model_infos(tables, profiled: set | None = None) -> dict[str, ModelInfo]:
    """Size/arch facts of catalogue models (for cross-model estimates): from the cached file's GGUF header, else
    from the header facts the catalogue records for the file its sha256 pins (no download needed)."""
    from edgekit.models.catalog import CATALOG
    from edgekit.models.gguf import read_gguf
    from edgekit.models.store import cached_path, is_cached

    out = {}
    for t in tables:
        e = CATALOG.get(t.model_id)
        if e is None:
            continue
        if is_cached(e):
            g = read_gguf(cached_path(e))
            out[t.model_id] = ModelInfo(id=e.id, sha256=e.sha256, quant=g.quant, n_params=e.n_params, **g.shape())
        elif e.header is not None:
            out[t.model_id] = ModelInfo(id=e.id, sha256=e.sha256, arch=e.arch, n_params=e.n_params, **e.header)
        elif profiled is not None and t.model_id not in profiled:
            raise SchemaError(
                f"model {t.model_id} (table {t.task}) is not in the profile and not in the model cache: its size, "
                "layers and KV bytes for a cross-model estimate come from its GGUF header",
                fix=f"run `edgekit models pull {t.model_id}` or `edgekit profile --model {t.model_id}`",
            )
    return out


def parse_rule_list(text: str) -> list[str]:
    """``"decided;beta:0.95"`` -> the rules, each checked (one line naming the forms when one is bad)."""
    rules = [r.strip() for r in text.split(";") if r.strip()] or ["none"]
    for r in rules:
        try:
            parse_stop_rule(r)
        except ValueError as e:
            raise UsageError(
                f"invalid --stop-rules entry {r!r}: {e}", fix=f"pass rules of the forms {STOP_FORMS}"
            ) from None
    return rules


def make_plan(
    profile_path: str | Path,
    table_paths: Sequence[str | Path],
    latency_target_s: float,
    *,
    percentile: int = 50,
    energy_cap_j: float | None = None,
    memory_cap_gb: float | None = None,
    output: str | Path | None = None,
    plot: str | Path | None = None,
    sequences_leave: bool = False,
    prefer: str = "cheaper",
    stop_rules: Sequence[str] | None = None,
    cloud_table: str | Path | None = None,
    cloud_latency_s: float | None = None,
    offload_budget: float | None = None,
    cloud_url: str | None = None,
    cloud_model: str | None = None,
    variants: str | Path | None = None,
    confirm: bool = False,
    profile_fn=None,
    cores_available: int | None = None,
) -> tuple[PlanResult, Path | None]:
    """``variants``: a folder of variant cards, "auto" for the quantize cache, None for none.
    ``confirm``: when the chosen configuration's latency rests on a cross-model or block-slice estimate, quick-profile
    that model into ``profile_path`` (appended) and plan again (at most twice); ``profile_fn`` replaces
    :func:`edgekit.profile.sweep.profile_model` (tests)."""
    if not table_paths:
        raise UsageError("no accuracy table given", fix="pass --accuracy TABLE.json (build one with `edgekit eval`)")
    if latency_target_s is None or not math.isfinite(latency_target_s) or latency_target_s <= 0:
        raise UsageError(
            f"latency target must be a finite number > 0 s, got {latency_target_s}", fix="pass e.g. --latency-target 2s"
        )
    if percentile not in (50, 95):
        raise UsageError(f"percentile must be 50 or 95, got {percentile}", fix="pass --percentile 50 or 95")
    check_positive(energy_cap_j, "--energy-cap", "joules per query", "5")
    check_positive(memory_cap_gb, "--memory-cap", "GB", "4")
    if cloud_table is None and (offload_budget is not None or cloud_latency_s is not None):
        raise UsageError(
            "--offload-budget / --cloud-latency need --cloud-table", fix="pass --cloud-table CLOUD_TABLE.json"
        )
    if offload_budget is not None and not (math.isfinite(offload_budget) and 0 <= offload_budget <= 1):
        raise UsageError(
            f"offload budget must be in [0, 1], got {offload_budget}", fix="pass e.g. --offload-budget 0.2"
        )
    check_base_url(cloud_url, "--cloud-url")
    # the files we will write are checked before any work
    if output:
        check_output_path(output, "--output", "plan.json")
    if plot:
        check_output_path(plot, "--plot", "pareto.png")
    table_paths = _unique(table_paths)
    profile = load_profile(
        profile_path
    )  # before the tables: named first when both are missing (the command line's order)
    scale, scale_note = cores_scale(profile, cores_available)
    tables = [load_table(p) for p in table_paths]
    auto = variants is not None and str(variants) == "auto"
    skipped: list[str] = []
    cards = [] if variants is None else list_variant_cards(None if auto else variants, skipped if auto else None)
    confirmed: list[str] = [f"variant card skipped: {s}" for s in skipped]
    for _ in range(3):
        infos = catalogue_model_infos(tables, {m.model.id for m in profile.complete_models()})
        base_infos = {**infos, **{m.model.id: m.model for m in profile.complete_models()}}
        vs = variant_candidates(cards, tables, [str(p) for p in table_paths], base_infos) if cards else []
        res = plan(
            profile,
            tables,
            latency_target_s,
            percentile=percentile,
            energy_cap_j=energy_cap_j,
            memory_cap_gb=memory_cap_gb,
            profile_path=str(profile_path),
            table_paths=[str(p) for p in table_paths],
            model_infos=infos,
            sequences_leave=sequences_leave,
            prefer=prefer,
            variants=vs,
            perf_scale=scale,
            extractor_kinds=_jsonl_kinds(tables),
            **({"stop_rules": stop_rules} if stop_rules is not None else {}),
        )
        res.notes.extend(device_notes(profile) + ([scale_note] if scale_note else []))
        if cards:
            res.notes.append(
                f"{len(cards)} variant card(s) read; {sum(v.prior is not None for v in vs)} candidate table(s) "
                "use an accuracy prior"
            )
        res.notes.extend(confirmed)
        latency_from = [r for r in res.rests_on(res.chosen) if r.startswith("latency:")]
        if not confirm or not latency_from or len(confirmed) >= 2:
            break
        c = res.config(res.chosen)
        spec = c["model_path"] or c["model_id"]
        _confirm_profile(spec, profile_path, profile, profile_fn)
        profile = load_profile(profile_path)  # with the entry --confirm appended
        confirmed.append(
            f"--confirm: quick-profiled {spec} into {profile_path} (its latency was a "
            f"{latency_from[0].split(': ', 1)[1]}) and planned again"
        )
    if cloud_table is not None:
        res.joint = joint_plan(res, load_table(cloud_table), cloud_latency_s, offload_budget)
        res.chosen = res.joint.candidate
        res.notes.extend(res.joint.notes)
        res.cloud = {
            "base_url": cloud_url,
            "model": cloud_model,
            "latency_s": cloud_latency_s,
            "accuracy_table": str(cloud_table),
        }
    written = None
    if output:
        pf = to_plan_file(res)
        written = pf.save(output)
    if plot:
        from edgekit.plan.pareto_plot import plot_pareto

        plot_pareto(res, plot)
    return res, written


def _confirm_profile(spec: str, profile_path, profile, profile_fn) -> None:
    """Quick-profile ``spec`` on this device, appended to the plan's profile (what --confirm runs)."""
    if profile.kind != "measured":
        raise UsageError(
            f"--confirm measures this machine, but {profile_path} is a {profile.kind} profile",
            fix="plan with a profile measured here, or drop --confirm",
        )
    if profile_fn is None:
        from edgekit.profile.sweep import SweepConfig, profile_model

        profile_fn = profile_model
        profile_fn(spec, SweepConfig.quick(), output=profile_path, existing=profile)
    else:
        profile_fn(spec, output=profile_path, existing=profile)


def _jsonl_kinds(tables) -> dict[str, str]:
    """The answer kind of each ``jsonl:`` task a table names, from the task file (its name says nothing): the
    plan's prompt and extractor are then the ones its table was measured with. A file that is gone is skipped
    (the plan falls back to free text, as before)."""
    from edgekit.errors import EdgekitError
    from edgekit.evaluate.tasks import load_task

    out = {}
    for t in tables:
        if t.task.startswith("jsonl:") and t.task not in out:
            try:
                kind = load_task(t.task).kind
            except EdgekitError:
                continue
            if kind in ("number", "choice", "yesno"):
                out[t.task] = kind
    return out


def parse_duration(s: str, flag: str = "--latency-target") -> float:
    """'2s', '500ms', '1.5' -> seconds; a finite number > 0 (inf, nan, 0 and negatives are refused)."""
    t = str(s).strip().lower()
    fix = f"write it like {flag} 2s, 1.5s or 500ms"
    try:
        if t.endswith("ms"):
            v = float(t[:-2]) / 1e3
        elif t.endswith("s"):
            v = float(t[:-1])
        else:
            v = float(t)
    except ValueError:
        raise UsageError(f"cannot read duration {s!r} ({flag})", fix=fix) from None
    if not math.isfinite(v):
        raise UsageError(f"{flag} {s!r} is not a finite duration", fix=fix)
    if v <= 0:
        raise UsageError(f"{flag} must be > 0 s, got {s!r}", fix=fix)
    return v


def _unique(paths: Sequence[str | Path]) -> list[str | Path]:
    """The table paths in order, each file once (``-a t.json t.json`` or a glob plus a name)."""
    seen, out = set(), []
    for p in paths:
        key = Path(p).resolve()
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out
