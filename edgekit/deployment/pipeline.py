"""`deploy()`: what `edgekit deploy` calls -- from a labelled task to a calibrated plan checked on held-out
problems, in one call under a time budget.

Stages: **profile** (this device's profile when one matches, else a quick sweep), **tune** (accuracy
tables on the tune split, problems added while the time allows and the configurations near the best
are not yet separated), **plan**, **calibrate** (the offload threshold on the calibrate split, when a
cloud is given and reachable), **verify** (the plan on the verify split: measured against predicted),
**outputs** (plan.json, report.json, report.md, frontier.png, edgekit.service).

A killed run continues where it stopped (eval, calibration and verify keep their records); a changed
task file or option starts the affected stages over, and the report says which. The finished plan
appears as ``DIR/plan.json`` only at the end: nothing half-done is presented as a deployment.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.calibrate import min_calibration_size
from edgekit.deployment import sizing
from edgekit.deployment.device_profile import complete_profile, find_profile
from edgekit.deployment.report import DeployReport, unit_file
from edgekit.deployment.splits import MIN_VERIFY, Split, make_splits
from edgekit.deployment.verify import VerifyRun, run_verify, summarize
from edgekit.engines.openai import OpenAIEngine
from edgekit.errors import FetchError, UsageError
from edgekit.evaluate.api import evaluate
from edgekit.evaluate.tasks import load_task
from edgekit.jsonio import write_atomic
from edgekit.plan.make import make_plan
from edgekit.plan.offload_threshold import CalibrationRun, calibrate, check_offload_settings
from edgekit.plan.replan import config_label
from edgekit.runtime import Runtime
from edgekit.schemas.checks import check_base_url, check_threads
from edgekit.schemas.options import SamplingOptions
from edgekit.schemas.plan import load_plan
from edgekit.schemas.table import load_table

Progress = Callable[[str, int, int], None]  # (stage, done, total)
TEMPLATE_BUDGET = {"terse": 32, "cot": 192}  # token budget B the tune tables are drawn at, per template
TUNE_BATCH = 10
TARGET_WIDTH = 0.10


@dataclass
class DeployOptions:
    task: str
    target_s: float
    percentile: int = 50
    cloud_url: str | None = None
    cloud_model: str | None = None
    alpha: float | None = None  # default with a cloud: 0.1 (and delta 0.05)
    delta: float | None = None
    offload_budget: float | None = None
    time_budget_s: float = 600.0
    models: Sequence[str] | None = None  # None: catalogue models cached here that fit in memory
    out_dir: str | Path = "deploy"
    template: str = "terse"
    max_tokens: int | None = None  # default: TEMPLATE_BUDGET[template]
    n_samples: int = 8
    profile: str | None = None  # a profile to try first
    threads: int | None = None
    seed: int = 0
    profile_fn: Callable | None = None  # replaces edgekit.profile.sweep.profile_model (tests)


@dataclass
class _State:
    """DIR/deploy-state.json: what earlier runs finished, keyed by the inputs they depended on."""

    path: Path
    fingerprints: dict = field(default_factory=dict)
    tuned: list[str] = field(default_factory=list)
    calibration: dict | None = None

    @classmethod
    def load(cls, out: Path) -> _State:
        p = out / "deploy-state.json"
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
            return cls(p, d.get("fingerprints", {}), d.get("tuned", []), d.get("calibration"))
        except (OSError, ValueError, AttributeError):
            return cls(p)

    def save(self) -> None:
        d = {"fingerprints": self.fingerprints, "tuned": self.tuned, "calibration": self.calibration}
        write_atomic(self.path, json.dumps(d, indent=1).encode(), "deploy state")


def _fp(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _check(o: DeployOptions) -> None:
    if not (isinstance(o.target_s, (int, float)) and math.isfinite(o.target_s) and o.target_s > 0):
        raise UsageError(
            f"the latency target must be a finite number > 0 s, got {o.target_s}", fix="pass e.g. --target 2s"
        )
    if o.percentile not in (50, 95):
        raise UsageError(f"percentile must be 50 or 95, got {o.percentile}", fix="pass --p95 or leave it out")
    if not (math.isfinite(o.time_budget_s) and o.time_budget_s > 0):
        raise UsageError(f"--time-budget must be > 0, got {o.time_budget_s}", fix="pass e.g. --time-budget 10m")
    if o.template not in TEMPLATE_BUDGET:
        raise UsageError(f"unknown template {o.template!r}", fix=f"use one of {', '.join(TEMPLATE_BUDGET)}")
    SamplingOptions.build(n=o.n_samples, max_tokens=o.max_tokens or 1)  # one line on a bad n / budget
    check_threads(o.threads)
    check_offload_settings(o.alpha, o.delta, o.offload_budget)
    if o.cloud_url is not None:
        check_base_url(o.cloud_url, "--cloud-url")
        if not o.cloud_model:
            raise UsageError("--cloud-url needs the cloud's model name", fix="pass --cloud-model NAME")
    out = Path(o.out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder", fix="pass -o DIR naming a folder (new or a deployment's)")


def _reach_cloud(o: DeployOptions, say: Callable[[str], None]) -> OpenAIEngine | None:
    """The cloud engine, or None (with one line) when it does not answer: the deployment goes on local-only."""
    if o.cloud_url is None:
        return None
    eng = OpenAIEngine(o.cloud_model, base_url=o.cloud_url, max_retries=1)
    try:
        list(eng.generate([{"role": "user", "content": "hi"}], SamplingOptions(max_tokens=1)))
    except FetchError as e:
        eng.close()
        say(
            f"warning: the cloud at {o.cloud_url} is unreachable ({e.message}); deploying local-only: no offload, "
            "no offload guarantee (fix: start the server, then run deploy again)"
        )
        return None
    return eng


def _stage_bar(progress: Progress | None, name: str) -> Callable[..., None]:
    return (lambda done, total, *_: progress(name, done, total)) if progress else (lambda *a: None)


def deploy(
    task: str,
    target_s: float,
    *,
    progress: Progress | None = None,
    notice: Callable[[str], None] | None = None,
    **options,
) -> DeployReport:
    """Deploy ``task`` (a labelled ``jsonl:PATH`` or a built-in task) under ``target_s`` seconds; see
    :class:`DeployOptions` for the options. Returns the report (also written to ``out_dir``)."""
    o = DeployOptions(task=task, target_s=target_s, **options)
    say = notice or (lambda m: None)
    t_all = time.monotonic()
    _check(o)
    t = load_task(o.task, template=o.template)  # a bad file: one line (missing labels, duplicate ids, ...)
    if t.kind == "code":
        raise UsageError(
            f"{o.task} is a code task; deploy plans tasks with one extracted answer",
            fix="for code, run `edgekit eval`, `plan` and `serve` step by step",
        )
    budget = o.max_tokens or TEMPLATE_BUDGET[o.template]
    models = sizing.candidates(o.models)
    out = Path(o.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cloud = _reach_cloud(o, say)
    alpha, delta = o.alpha, o.delta
    if cloud is not None and alpha is None and o.offload_budget is None:
        alpha, delta = 0.1, 0.05
    cal_need = (min_calibration_size(alpha, delta) if alpha is not None else MIN_VERIFY) if cloud else None
    splits = make_splits(len(t.problems), cal_need)
    state = _State.load(out)
    rep = DeployReport(
        task=o.task,
        task_sha256=t.sha256,
        target_s=o.target_s,
        percentile=o.percentile,
        out_dir=str(out),
        models=[m.id for m in models],
        splits={},
        time_budget_s=o.time_budget_s,
    )
    if o.cloud_url and cloud is None:
        rep.notes.append(f"the cloud at {o.cloud_url} was unreachable: deployed local-only, no offload guarantee")
    tune_fp = _fp(
        t.sha256, o.template, budget, o.n_samples, o.seed, [(m.id, m.sha256) for m in models], splits["tune"].range
    )
    if state.fingerprints.get("tune") not in (None, tune_fp):
        rep.restarted.append("tune (and every later stage): the task file, the models or the tune options changed")
        say("the task file, the models or the tune options changed: tune, plan, calibrate and verify start over")
        for f in (out / "tables").glob("*"):
            f.unlink()
        # the calibration's partial records belong to the old problems (its settings would refuse them)
        (out / "plan.pending.json.calibration.partial.jsonl").unlink(missing_ok=True)
        state.tuned, state.calibration = [], None
        state.fingerprints = {}
    state.fingerprints["tune"] = tune_fp
    state.save()

    def elapsed() -> float:
        return time.monotonic() - t_all

    # ---- profile
    t0 = time.monotonic()
    choice = find_profile([(m.id, m.sha256) for m in models], out, o.profile)
    if choice.missing:
        say(f"profiling {', '.join(choice.missing)} on this device (quick sweep, about 1-2 min per 0.5B model)")
    profile_path = complete_profile(
        choice, {m.id: m.spec for m in models}, o.profile_fn, _stage_bar(progress, "profile")
    ).resolve()
    rep.profile = {
        "path": str(profile_path),
        "reused_from": str(choice.source) if choice.source else None,
        "measured_now": choice.missing,
        "passed_over": choice.notes,
        "how": (
            f"reused {choice.source} (same CPU, instruction sets, kernel configuration and llama.cpp build)"
            if choice.source and not choice.missing
            else (
                f"{choice.source} matched this device; quick-profiled {', '.join(choice.missing)} into it"
                if choice.source
                else f"no profile of this device found; quick-profiled {', '.join(choice.missing)}"
            )
        )
        + (f"; passed over: {'; '.join(choice.notes)}" if choice.notes else ""),
    }
    rep.stages["profile"] = time.monotonic() - t0

    # ---- size the stages from the profile's predictions
    pms = sizing.perf_models(profile_path, [m.id for m in models])
    tune_problems = t.select(splits["tune"].range).problems
    tok = sizing.prompt_tokens(tune_problems)
    cost = {m.id: sizing.eval_cost_s(pms[m.id], tok, budget, o.n_samples) for m in models}
    fastest = min(sizing.query_s(pm, tok, budget) for pm in pms.values())
    cloud_s = sizing.cloud_s(cloud)
    todo = [m for m in models if m.id not in state.tuned]
    need = sizing.minimum_s(
        [cost[m.id] for m in todo], TUNE_BATCH, fastest, cal_need if cloud else 0, cloud_s, MIN_VERIFY
    )
    left = o.time_budget_s - elapsed()
    if need > left:
        at_least = elapsed() + need
        raise UsageError(
            f"--time-budget {o.time_budget_s:.0f} s is too small for any plan here: it needs at least {at_least:.0f} s "
            f"({TUNE_BATCH} tune problems per model, {cal_need if cloud else 0} to calibrate, {MIN_VERIFY} to verify, "
            f"predicted from {profile_path.name})",
            fix=f"pass --time-budget {math.ceil(at_least / 60)}m or more",
        )

    # ---- tune
    t0 = time.monotonic()
    (out / "tables").mkdir(exist_ok=True)
    tune_s = max(0.0, left - need) * (0.55 if cloud else 0.6) + sum(cost[m.id] for m in todo) * TUNE_BATCH
    tables: list[Path] = []
    bar = _stage_bar(progress, "tune")
    for m in models:
        path = (out / "tables" / f"{sizing.safe(m.id)}.json").resolve()
        tables.append(path)
        if m.id in state.tuned and path.is_file():
            rep.resumed.append(f"tune {m.id}: table from an earlier run ({path.name})")
            continue
        rest = [x for x in models if x.id not in state.tuned]
        share = max(0.0, tune_s - (time.monotonic() - t0)) * cost[m.id] / sum(cost[x.id] for x in rest)
        evaluate(
            o.task,
            m.spec,
            out_path=path,
            n_samples=o.n_samples,
            temperature=0.8,
            seed=o.seed,
            max_tokens=budget,
            split=splits["tune"].range,
            template=o.template,
            threads=o.threads,
            progress=bar,
            target_width=TARGET_WIDTH,
            batch=TUNE_BATCH,
            time_limit_s=share,
        )
        state.tuned.append(m.id)
        state.save()
    tabs = [load_table(p) for p in tables]
    longest = max(tabs, key=lambda x: x.n_problems)
    splits["tune"].used = [p.id for p in longest.problems]
    rep.tables = [
        {"path": str(p), "model": x.model_id, "problems": x.n_problems, "split": x.split} for p, x in zip(tables, tabs)
    ]
    rep.stages["tune"] = time.monotonic() - t0

    # ---- plan
    t0 = time.monotonic()
    pending = (out / "plan.pending.json").resolve()
    res, _ = make_plan(
        profile_path,
        tables,
        o.target_s,
        percentile=o.percentile,
        output=pending,
        plot=out / "frontier.png",
        variants="auto" if o.models is None else None,
    )
    rep.stages["plan"] = time.monotonic() - t0

    # ---- calibrate
    pf = load_plan(pending)
    if cloud is not None:
        t0 = time.monotonic()
        cal = splits["calibrate"]
        cal_fp = _fp(
            pf.chosen.model_dump(mode="json"),
            o.cloud_url,
            o.cloud_model,
            alpha,
            delta,
            o.offload_budget,
            cal.range,
            o.seed,
        )
        lat = float(pf.predicted.latency_s.value)
        count = min(cal.size, max(cal_need or 0, int(max(0.0, o.time_budget_s - elapsed()) * 0.35 / (lat + cloud_s))))
        pf = _calibrated(state, cal_fp, pf, pending, rep, say)
        if pf.offload is None:
            part = pending.with_name(pending.name + ".calibration.partial.jsonl")
            if state.fingerprints.get("calibrate") not in (None, cal_fp) and part.exists():
                part.unlink()
                rep.restarted.append("calibrate: the chosen configuration, the cloud or the risk settings changed")
            run = CalibrationRun(
                plan_path=str(pending),
                task=o.task,
                alpha=alpha,
                delta=delta,
                offload_budget=o.offload_budget,
                split=cal.range,
                limit=count,
                cloud_url=o.cloud_url,
                cloud_model=o.cloud_model,
                threads=o.threads,
                seed=o.seed,
            )
            calibrate(run, _stage_bar(progress, "calibrate"))
            pf = load_plan(pending)
            state.fingerprints["calibrate"] = cal_fp
            state.calibration = {
                "offload": pf.offload.model_dump(mode="json"),
                "cloud": pf.cloud.model_dump(mode="json") if pf.cloud else None,
                "ids": [r["id"] for r in run.records],
            }
            state.save()
        cal.used = list(state.calibration["ids"])
        rep.offload = {
            **{k: v for k, v in pf.offload.model_dump(mode="json").items() if k != "curve"},
            "cloud": {"base_url": o.cloud_url, "model": o.cloud_model},
        }
        rep.stages["calibrate"] = time.monotonic() - t0

    # ---- verify
    t0 = time.monotonic()
    cloud_rt = Runtime(cloud) if cloud is not None and pf.offload is not None else None
    try:
        records = run_verify(
            VerifyRun(
                plan=pf,
                task=o.task,
                split=splits["verify"].range,
                min_problems=MIN_VERIFY,
                time_limit_s=max(0.0, o.time_budget_s - elapsed() - 5.0),
                records_path=out / "verify.jsonl",
                cloud=cloud_rt,
                threads=o.threads,
                seed=o.seed,
                cloud_s_each=(
                    (pf.offload.offload_rate if pf.offload.offload_rate is not None else 1.0) * sizing.cloud_s(cloud)
                    if cloud_rt is not None
                    else 0.0
                ),
            ),
            _stage_bar(progress, "verify"),
        )
    finally:
        if cloud_rt is not None:
            cloud_rt.close()
        elif cloud is not None:
            cloud.close()
    splits["verify"].used = [r["id"] for r in records]
    n_table = load_table(pf.chosen.table_path).n_problems if pf.chosen.table_path else longest.n_problems
    rep.verify = summarize(records, pf, n_table)
    rep.stages["verify"] = time.monotonic() - t0

    # ---- outputs
    t0 = time.monotonic()
    _flags(rep)
    _finish(rep, pf, res, out, pending, splits)
    rep.stages["outputs"] = time.monotonic() - t0
    rep.total_s = elapsed()
    write_atomic(out / "report.json", json.dumps(rep.to_dict(), indent=1, default=str).encode(), "report")
    write_atomic(out / "report.md", rep.to_markdown().encode(), "report")
    return rep


def _calibrated(state: _State, cal_fp: str, pf, pending: Path, rep: DeployReport, say) -> object:
    """The plan with an earlier run's calibration applied when it was made for this very configuration."""
    if state.fingerprints.get("calibrate") != cal_fp or not state.calibration:
        return pf
    from edgekit.schemas.offload import OffloadCalibration
    from edgekit.schemas.plan import CloudRef

    c = state.calibration
    pf = pf.model_copy(
        update={
            "offload": OffloadCalibration(**c["offload"]),
            "cloud": CloudRef(**c["cloud"]) if c.get("cloud") else pf.cloud,
        }
    )
    pf.save(pending)
    rep.resumed.append("calibrate: the threshold an earlier run calibrated for this configuration")
    return pf


def _flags(rep: DeployReport) -> None:
    v = rep.verify
    if v["acc_contradicted"]:
        rep.flags.append(
            f"accuracy: measured {v['acc']:.1%} on {v['problems']} held-out problems lies outside the predicted "
            f"{v['acc_pred_lo']:.1%}..{v['acc_pred_hi']:.1%}"
        )
    if v["p50_contradicted"]:
        rep.flags.append(
            f"latency: measured p50 {v['p50_s']:.2f} s lies outside the predicted {v['p50_pred_lo_s']:.2f}.."
            f"{v['p50_pred_hi_s']:.2f} s"
        )
    if v["p95_contradicted"]:
        rep.flags.append(f"latency: measured p95 {v['p95_s']:.2f} s exceeds the predicted p95 {v['p95_pred_s']:.2f} s")
    if not v["meets_target"]:
        rep.flags.append(
            f"target: measured p{rep.percentile} "
            f"{v['p95_s' if rep.percentile == 95 else 'p50_s']:.2f} s misses the {rep.target_s:g} s target"
        )


def _finish(rep: DeployReport, pf, res, out: Path, pending: Path, splits: dict[str, Split]) -> None:
    """plan.json (with the verify figures), edgekit.service; the report's plan and frontier sections."""
    v = rep.verify
    pr = pf.predicted.model_copy(
        update={
            "heldout_accuracy": v["acc"],
            "heldout_accuracy_lo": v["acc_lo"],
            "heldout_accuracy_hi": v["acc_hi"],
            "heldout_how": f"edgekit deploy verify: {v['problems']} held-out problems (split {splits['verify'].range})",
        }
    )
    pf = pf.model_copy(update={"predicted": pr, "verify": {**v, "flags": list(rep.flags)}})
    plan_path = out / "plan.json"
    pf.save(plan_path)
    pending.unlink(missing_ok=True)
    unit = out / "edgekit.service"
    write_atomic(unit, unit_file(plan_path, os.environ.get("EDGEKIT_HOME")).encode(), "systemd unit")
    rep.splits = {k: s.to_dict() for k, s in splits.items()}
    rep.plan = {
        "config": config_label(pf),
        "accuracy": pr.accuracy,
        "accuracy_lo": pr.accuracy_lo,
        "accuracy_hi": pr.accuracy_hi,
        "latency_s": float(pr.latency_s.value),
        "latency_lo_s": pr.latency_lo_s,
        "latency_hi_s": pr.latency_hi_s,
        "latency_method": pr.method,
        "why": ([pf.selection] if pf.selection else [])
        + [
            f"vs {c.config}: {c.verdict} ({c.diff * 100:+.1f} pts [{c.diff_lo * 100:+.1f}, {c.diff_hi * 100:+.1f}], "
            f"{'paired' if c.paired else 'unpaired'}; saves {c.latency_saving_s:+.2f} s)"
            for c in pf.competitors[:6]
        ],
        "competitors": [c.model_dump(mode="json") for c in pf.competitors],
        "notes": list(res.notes),
    }
    rep.frontier = [f.model_dump(mode="json") for f in pf.frontier]
    rep.outputs = {
        "plan": str(plan_path),
        "report": str(out / "report.md"),
        "report_json": str(out / "report.json"),
        "frontier": str(out / "frontier.png"),
        "systemd_unit": str(unit),
        "profile": rep.profile["path"],
        "verify_records": str(out / "verify.jsonl"),
    }


__all__ = ["DeployOptions", "deploy"]
