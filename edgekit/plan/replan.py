"""Re-plan a running plan on a device that has slowed down (or sped up) since it was profiled.

``replan(plan, plan_path, model_id, scale, why)`` re-runs the planner on the plan's own inputs
(profile, accuracy tables, target, percentile, caps, ``planner`` settings) with every latency model
scaled by ``scale`` = (prefill, decode), the live correction measured by the daemon. Only
configurations of the served model can be swapped in (the daemon holds one model): when the
planner would prefer another model, the outcome says so and the best configuration of the served
model is taken. When nothing meets the target at the corrected speed, the fastest configuration of
the served model is taken and the outcome says the target is not met.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edgekit.errors import SchemaError
from edgekit.plan.export import to_plan_file
from edgekit.plan.make import catalogue_model_infos
from edgekit.plan.planner import InfeasibleTarget, PlanResult
from edgekit.plan.planner import plan as run_planner
from edgekit.schemas.plan import PlanFile, PlannerInputs
from edgekit.schemas.profile import load_profile
from edgekit.schemas.table import load_table


@dataclass
class Replan:
    outcome: str  # changed | unchanged | infeasible (fastest taken; it may or may not differ)
    plan: PlanFile
    config: str  # the configuration now chosen
    previous: str
    other_model: str | None = None  # the planner's choice when it is not the served model
    meets_target: bool = True
    message: str = ""


def config_label(p: PlanFile) -> str:
    c = p.chosen
    return f"{c.model_id} B={c.budget} n={c.n} {c.aggregation} T={c.temperature:g} {c.prompt_template}" + (
        f"+{c.answer_format}" if c.answer_format else ""
    )


def find_input(path: str, plan_path: str | None, what: str) -> str:
    p = Path(path)
    if p.exists():
        return str(p)
    if plan_path is not None and not p.is_absolute():
        q = Path(plan_path).resolve().parent / p
        if q.exists():
            return str(q)
    raise SchemaError(
        f"cannot re-plan: the plan's {what} {path} is not readable from here",
        fix="start edgekit serve where the plan's profile and tables are (or re-plan with absolute paths)",
    )


def inputs(p: PlanFile, plan_path: str | None = None) -> tuple[str, list[str], PlannerInputs]:
    """The profile and table paths (as found from here) and the planner settings a re-plan needs."""
    if not p.profile.path:
        raise SchemaError(
            "cannot re-plan: the plan does not record its profile file", fix="re-plan with `edgekit plan`"
        )
    if not p.tables:
        raise SchemaError(
            "cannot re-plan: the plan does not record its accuracy tables", fix="re-plan with `edgekit plan`"
        )
    ins = p.planner or PlannerInputs(sequences_leave=any("finished sequences leave" in b for b in p.based_on))
    return (
        find_input(p.profile.path, plan_path, "profile"),
        [find_input(t, plan_path, "accuracy table") for t in p.tables],
        ins,
    )


def _fastest(res: PlanResult) -> int:
    cand = np.nonzero(res.caps_ok)[0]
    return int(cand[np.argmin(res.latency[cand])])


def replan(p: PlanFile, plan_path: str | None, model_id: str, scale: tuple[float, float], why: str) -> Replan:
    profile_path, table_paths, ins = inputs(p, plan_path)
    profile = load_profile(profile_path)
    tables = [load_table(t) for t in table_paths]
    kw = dict(
        percentile=p.percentile,
        energy_cap_j=p.caps.energy_j,
        memory_cap_gb=p.caps.memory_gb,
        profile_path=p.profile.path,
        sequences_leave=ins.sequences_leave,
        prefer=ins.prefer,
        perf_scale=scale,
    )
    infos = catalogue_model_infos(tables)
    other = None
    try:
        every = run_planner(profile, tables, p.target_s, table_paths=list(p.tables), model_infos=infos, **kw)
        best = every.config(every.chosen)["model_id"]  # type: ignore[arg-type]
        other = best if best != model_id else None
    except InfeasibleTarget:
        pass
    mine = [(t, tp) for t, tp in zip(tables, p.tables) if t.model_id == model_id]
    if not mine:
        raise SchemaError(
            f"cannot re-plan: no accuracy table of the plan is for the served model {model_id}",
            fix="re-plan with `edgekit plan` and restart edgekit serve",
        )
    meets = True
    try:
        res = run_planner(
            profile, [t for t, _ in mine], p.target_s, table_paths=[tp for _, tp in mine], model_infos=infos, **kw
        )
    except InfeasibleTarget as e:
        if e.result is None or not e.result.caps_ok.any():
            raise
        res, meets = e.result, False
        res.chosen = _fastest(res)
        res.notes.append(
            f"no configuration of {model_id} meets {p.target_s:g} s at the corrected speed: the fastest is taken"
        )
    new = to_plan_file(res)
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    stamp = f"{when}: {why}; device scaled prefill x{scale[0]:.3g}, decode x{scale[1]:.3g}"
    new.planner = ins.model_copy(update={"replanned": stamp, "perf_scale": [float(scale[0]), float(scale[1])]})
    new.based_on.append(f"re-planned live by edgekit serve ({stamp}) from {plan_path or 'the plan'}")
    if p.offload is not None or p.cloud is not None:  # the mixture is not re-planned; the threshold is kept as is
        new.offload, new.cloud = p.offload, p.cloud
        new.based_on.append("offload threshold and cloud kept from the original plan (not re-planned)")
    before, after = config_label(p), config_label(new)
    outcome = "unchanged" if before == after else "changed"
    if not meets:
        outcome = "infeasible"
    msg = (
        f"re-plan ({why}, prefill x{scale[0]:.3g}, decode x{scale[1]:.3g}): "
        + (f"{before} -> {after}" if before != after else f"keeping {after}")
        + f", predicted {new.predicted.latency_at_percentile_s:.3g} s at p{new.percentile} vs target {p.target_s:g} s"
        + ("" if meets else " (NOT met: fastest configuration taken)")
        + (f"; the planner would pick another model, {other}, which needs a restart with a new plan" if other else "")
    )
    return Replan(
        outcome=outcome, plan=new, config=after, previous=before, other_model=other, meets_target=meets, message=msg
    )
