"""PlanResult -> PlanFile."""

from __future__ import annotations

import math

from edgekit.evaluate.tasks import query_template
from edgekit.plan.planner import PlanResult
from edgekit.schemas import __version__
from edgekit.schemas.formats import answer_grammar
from edgekit.schemas.options import SamplingOptions
from edgekit.schemas.plan import (
    Caps,
    ChosenConfig,
    CloudRef,
    Competitor,
    FrontierPoint,
    PlanFile,
    PlannerInputs,
    Predicted,
    ProfileRef,
)

# accuracy-table aggregation -> how the runtime aggregates (pass@k needs the verifier pass@k assumes)
RUNTIME_AGGREGATE = {
    "greedy": "majority",
    "majority": "majority",
    "first_verified": "first_verified",
    "pass@k": "first_verified",
}


def chosen_options(c: dict) -> SamplingOptions:
    grammar = answer_grammar(c["extractor"], c["answer_format"]) if c.get("answer_format") else None
    return SamplingOptions.build(
        n=c["n"],
        max_tokens=c["budget"],
        temperature=c["temperature"],
        top_p=c["top_p"],
        aggregate=RUNTIME_AGGREGATE[c["aggregation"]],
        extractor=c["extractor"],
        grammar=grammar,
        stop_rule=c.get("stop_rule"),
    )


def _opt(x: float, scale: float = 1.0):
    return None if math.isnan(x) else float(x) / scale


def frontier_points(res: PlanResult) -> list[FrontierPoint]:
    pts = []
    for i in res.frontier:
        i = int(i)
        c = res.config(i)
        pts.append(
            FrontierPoint(
                model_id=c["model_id"],
                quant=c["quant"],
                prompt_template=c["prompt_template"] + (f"+{c['answer_format']}" if c.get("answer_format") else ""),
                temperature=c["temperature"],
                budget=c["budget"],
                n=c["n"],
                aggregation=c["aggregation"],
                stop_rule=c.get("stop_rule"),
                accuracy=float(res.accuracy[i]),
                accuracy_lo=_opt(res.acc_lo[i]) if res.acc_lo is not None else None,
                accuracy_hi=_opt(res.acc_hi[i]) if res.acc_hi is not None else None,
                accuracy_method="estimated" if "accuracy: prior" in res.rests_on(i) else "measured",
                latency_s=float(res.latency[i]),
                latency_p50_s=float(res.pred["total_s"][i]),
                energy_j=_opt(res.pred["energy_j"][i]),
                memory_gb=_opt(res.pred["memory_bytes"][i], 1e9),
                meets_target=bool(res.feasible[i]),
                chosen=res.chosen == i,
                method=res.method(i),
            )
        )
    return pts


def competitors(res: PlanResult) -> list[Competitor]:
    out = []
    for cm in res.competitors():
        j = cm.other
        c = res.config(j)
        out.append(
            Competitor(
                config=res.label(j) + f" {c['prompt_template']} T={c['temperature']:g}",
                model_id=c["model_id"],
                prompt_template=c["prompt_template"],
                budget=c["budget"],
                n=c["n"],
                aggregation=c["aggregation"],
                stop_rule=c.get("stop_rule"),
                temperature=c["temperature"],
                accuracy=float(res.accuracy[j]),
                latency_s=float(res.latency[j]),
                diff=cm.diff,
                diff_lo=cm.lo,
                diff_hi=cm.hi,
                paired=cm.paired,
                n_shared=cm.n_shared,
                verdict=cm.verdict,
                latency_saving_s=cm.latency_saving_s,
                saving_material=cm.material,
                how=cm.how,
                above_chance=None if (ck := res.comparator.chance(cm.other)) is None else ck.above,
            )
        )
    return out


def _optimism(res: PlanResult) -> dict:
    o = res.optimism()
    if o is None:
        return {}
    return {
        "accuracy_optimism": o[0],
        "accuracy_selected_from": o[1],
        "accuracy_optimism_how": f"estimated: bootstrap of the maximum over the {o[1]} feasible configurations "
        "measured on the same problems (E*[max] - max); a held-out run is the measured check",
    }


def _chance(res: PlanResult) -> dict:
    c = res.chance()
    if c is None:
        return {}
    return {"blind_accuracy": c.blind, "blind_p_value": c.p_value, "above_chance": c.above, "blind_how": c.how}


def based_on(res: PlanResult) -> list[str]:
    p = res.profile
    out = []
    if p.kind == "published":
        out.append(f"published data: {p.source or 'reference profile'}")
    else:
        out.append(f"measured profile {res.profile_path or '(unsaved)'} of {p.device.name}")
    out.append("prompt length = the accuracy table's mean prompt tokens")
    out.append(
        "finished sequences leave the batch (mean_tokens)"
        if res.sequences_leave
        else "all n sequences stay in the batch for the row's expected decode steps (conservative)"
    )
    for pm in {id(pm): pm for pm in res.perf_models if pm is not None}.values():
        out.append(
            f"{pm.model_id}: latency {pm.method}; interval {pm.interval_how}; energy {pm.energy_how}; "
            f"memory {pm.memory_how}"
        )
        out.extend(f"{pm.model_id}: {n}" for n in pm.notes)
    out.extend(res.notes)
    out.extend(f"warning: {w}" for w in res.all_warnings())
    return out


def _mixture(res: PlanResult) -> dict:
    j = res.joint
    if j is None:
        return {}
    return {
        "system_accuracy": j.system_accuracy,
        "system_accuracy_lo": j.accuracy_lo,
        "system_accuracy_hi": j.accuracy_hi,
        "offload_rate": j.offload_rate,
        "expected_latency_s": j.expected_s,
        "mixture_p95_s": j.p95_s,
    }


def to_plan_file(res: PlanResult) -> PlanFile:
    if res.chosen is None:
        raise ValueError("plan has no chosen configuration")
    i = res.chosen
    c = res.config(i)
    pr = res.prediction(i)
    tpath = c.pop("table_path")
    return PlanFile(
        edgekit_version=__version__,
        target_s=res.target_s,
        percentile=res.percentile,
        caps=Caps(energy_j=res.energy_cap_j, memory_gb=res.memory_cap_gb),
        profile=ProfileRef(
            path=res.profile_path, device=res.profile.device.name, kind=res.profile.kind, source=res.profile.source
        ),
        tables=[t for t in res.table_paths if t],
        chosen=ChosenConfig(
            **c,
            table_path=tpath,
            prompt=query_template(c["prompt_template"], c["extractor"]),
            options=chosen_options(c),
        ),
        predicted=Predicted(
            latency_s=pr.latency_figure(),
            latency_lo_s=pr.latency_lo_s,
            latency_hi_s=pr.latency_hi_s,
            latency_at_percentile_s=float(res.latency[i]),
            interval_how=pr.interval_how,
            prefill_s=pr.prefill_s,
            decode_s=pr.decode_s,
            energy_j=pr.energy_figure(),
            memory_gb=pr.memory_figure(),
            accuracy=float(res.accuracy[i]),
            accuracy_lo=float(res.acc_lo[i]) if res.acc_lo is not None else None,
            accuracy_hi=float(res.acc_hi[i]) if res.acc_hi is not None else None,
            accuracy_interval_how=res.interval_how
            + (
                f"; scaled by the prior's factor {res.variant(i).prior.factor:.3f} and widened by "
                f"+-{float(res.variant(i).prior.widen(res.accuracy[i] / res.variant(i).prior.factor)):.3f}"
                if "accuracy: prior" in res.rests_on(i)
                else ""
            ),
            accuracy_source=res.accuracy_source(i),
            method=pr.method,
            rests_on=res.rests_on(i),
            **_mixture(res),
            **_optimism(res),
            **_chance(res),
            replayed_latency=_replayed(res, i),
        ),
        frontier=frontier_points(res),
        based_on=based_on(res),
        planner=PlannerInputs(prefer=res.prefer, sequences_leave=res.sequences_leave),
        **_offload(res),
        selection=res.why_chosen,
        competitors=competitors(res),
    )


def _replayed(res: PlanResult, i: int) -> dict | None:
    t = res.tables[int(res.table[i])]
    row = t.rows[int(res.row[i])]
    pm = res.perf_models[int(res.table[i])]
    if row.stop_rule is None or row._replay is None or pm is None:
        return None
    from edgekit.plan.stop_candidates import live_latency

    return live_latency(pm, t, row) | {
        "how": f"estimated: each of the table's {len(t.problems)} problems priced from the stopping rule's replayed "
        "steps and rows live (PerfModel.decode_live_s), with its own prompt length"
    }


def _offload(res: PlanResult) -> dict:
    j = res.joint
    if j is None:
        return {}
    return {"offload": j.calibration(res.config(j.candidate)["model_sha256"]), "cloud": CloudRef(**res.cloud)}
