"""Latency-model validation: predicted vs measured end-to-end latency of configurations that were
not points of the profile sweep, on this machine.

    python benchmarks/perfmodel_validation.py --profile PROFILE.json [--models a,b] [--unprofiled MODEL]
                                              [--reps 3] [--json] [--smoke]

Each configuration (prompt tokens I, budget B, n) runs for real: Runtime.generate on a synthetic
prompt of exactly I tokens (the sweep's filler text), ignore_eos=True so exactly B tokens are
decoded per sample, temperature 0.8, seed 0, aggregate="none", logprobs=True (the default
runtime path). Measured = median Result.timings.total_s over --reps (after one untimed warm-up
per model). Predicted = PerfModel.predict(I, B, n, expected_steps=B).latency_s, from fit() for
profiled models and fit_device(profile).predict_model(ModelInfo from the GGUF header, as the
planner builds it) for --unprofiled. Error = (predicted - measured) / measured; MAPE = mean |error|.
Goal: MAPE <= 10 %.  --smoke: the first 2 configurations per profiled model, 1 for --unprofiled, 1 rep.

    python benchmarks/perfmodel_validation.py --profile PROFILE.json --leave-one-out [--json]

--leave-one-out takes no new measurement: each profiled model is predicted across models from the
others (exactly as --unprofiled and quantized variants are) and compared with its recorded sweep
points (measured) and, for the configurations below, with its own profile fit (a reference).
Goal (cross-model): interval coverage >= 90 %, MAPE <= 15 %. See edgekit/perfmodel/loo.py.

    python benchmarks/perfmodel_validation.py --profile PROFILE.json --models '' --unprofiled MODEL
                                              --variants FOLDER --slices [--slice-blocks 8]

--slices predicts each --unprofiled model and variant from a block-slice estimate made during the run
(`edgekit profile --slices`: a 1-block and a k-block slice of the file swept and extrapolated in depth,
edgekit/profile/slice_estimate.py) instead of across models; the cross-model prediction of the same
configuration is reported beside it (cross_model_*), so both are judged on the same measurements.
"""

from __future__ import annotations

import socket
import statistics
from types import SimpleNamespace

from _common import Col, emit, log, parser, print_table, run_main

from edgekit.errors import UsageError
from edgekit.models.catalog import CATALOG
from edgekit.perfmodel import fit, fit_device
from edgekit.profile.sweep import FILLER
from edgekit.schemas.profile import load_profile

# (prompt tokens I, budget B, parallel samples n); the first two are cheap (--smoke runs them)
CONFIGS = [
    (200, 24, 1),
    (350, 24, 6),
    (200, 48, 3),
    (200, 48, 6),
    (200, 48, 12),  # other n
    (200, 96, 1),
    (700, 48, 1),  # other budgets
    (700, 24, 1),
    (1500, 24, 1),  # other prompt lengths
    (700, 48, 6),
    (1500, 96, 3),
    (200, 96, 12),
    (1500, 48, 12),
    (700, 96, 3),  # mixed
]
UNPROFILED_CONFIGS = [(200, 48, 1), (700, 24, 3), (350, 48, 6), (256, 32, 11)]  # n=11: beyond the swept n <= 8
METHOD = (
    "measured: median Result.timings.total_s over {reps} rep(s) of Runtime.generate(prompt_tokens=<I filler tokens>, "
    "max_tokens=B, n=n, temperature=0.8, seed=0, aggregate='none', extractor=None, logprobs=True, ignore_eos=True), "
    "one untimed warm-up per model; predicted: PerfModel.predict(I, B, n, expected_steps=B).latency_s "
    "(fit() of the model's profile entry; fit_device(profile).predict_model(GGUF ModelInfo) for unprofiled models)"
)


def filler_tokens(rt, n: int) -> list[int]:
    """Exactly n prompt tokens of the profile sweep's filler text (as the sweep's tokens())."""
    base = rt.engine.tokenize(FILLER * 4, add_special=False)
    out: list[int] = []
    while len(out) < n:
        out.extend(base)
    return out[:n]


def gguf_model_info(model_id: str):
    """ModelInfo from the cached GGUF header, built exactly as `edgekit plan` builds it for cross-model estimates."""
    from edgekit.models.store import resolve
    from edgekit.plan.make import catalogue_model_infos

    if model_id not in CATALOG:
        raise UsageError(f"--unprofiled {model_id!r} is not a catalogue model", fix=f"use one of {', '.join(CATALOG)}")
    resolve(model_id)  # pulls it if missing (it is run below anyway)
    info = catalogue_model_infos([SimpleNamespace(model_id=model_id)]).get(model_id)
    if info is None:
        raise UsageError(f"could not read the GGUF header of {model_id}", fix=f"run `edgekit models pull {model_id}`")
    return info


def off_sweep(mp, I: int, B: int, n: int) -> str:
    """Which of I, B, n are not values of the profile sweep ("" = all three were swept values)."""
    if mp is None:
        return "unprofiled"
    lens = {p.prompt_tokens for p in mp.prefill}
    ns = {d.n for d in mp.decode}
    steps = {d.steps for d in mp.decode}
    return ",".join(k for k, new in (("I", I not in lens), ("B", B not in steps), ("n", n not in ns)) if new)


def measure(rt, I: int, B: int, n: int, reps: int) -> tuple[float, list[float]]:
    toks = filler_tokens(rt, I)
    secs = []
    for _ in range(reps):
        r = rt.generate(
            None,
            prompt_tokens=toks,
            max_tokens=B,
            n=n,
            temperature=0.8,
            seed=0,
            aggregate="none",
            extractor=None,
            logprobs=True,
            ignore_eos=True,
        )
        t = r.timings
        if t.steps != B or t.generated_tokens != n * B or t.prompt_tokens != I:
            log(
                f"  warning: I={I} B={B} n={n} ran {t.prompt_tokens} prompt tokens, {t.steps} steps, "
                f"{t.generated_tokens} tokens (expected {I}, {B}, {n * B})"
            )
        secs.append(t.total_s)
    return statistics.median(secs), secs


def validate_model(model_id: str, pm, configs, reps: int, threads, mp, alt=None) -> list[dict]:
    """``alt``: a second prediction of the same model (the cross-model one, with --slices), reported beside."""
    from edgekit.runtime import Runtime

    n_ctx = -(-(max(I + n * B for I, B, n in configs) + 64) // 256) * 256
    max_n = max(n for _, _, n in configs)
    log(f"{model_id}: loading (n_ctx={n_ctx}, max_n={max_n}, threads={threads or 'default'})")
    rows = []
    with Runtime(model_id, threads=threads, n_ctx=n_ctx, max_n=max_n) as rt:
        measure(rt, 64, 8, max_n, 1)  # warm-up (page cache, buffers), not timed
        for I, B, n in configs:
            pr = pm.predict(I, B, n, expected_steps=B)
            pred = pr.latency_s
            meas, secs = measure(rt, I, B, n, reps)
            err = 100.0 * (pred - meas) / meas
            rows.append(
                {
                    "config": f"I={I} B={B} n={n}",
                    "predicted_s": pred,
                    "measured_s": meas,
                    "error_pct": err,
                    "lo_s": pr.latency_lo_s,
                    "hi_s": pr.latency_hi_s,
                    "covered": pr.latency_lo_s <= meas <= pr.latency_hi_s,
                    "model": model_id,
                    "profiled": mp is not None,
                    "off_sweep": off_sweep(mp, I, B, n),
                    "prompt_tokens": I,
                    "budget": B,
                    "n": n,
                    "samples_s": secs,
                    "method": pm.method,
                }
            )
            if alt is not None:
                pa = alt.predict(I, B, n, expected_steps=B)
                rows[-1].update(
                    {
                        "cross_model_predicted_s": pa.latency_s,
                        "cross_model_error_pct": 100.0 * (pa.latency_s - meas) / meas,
                        "cross_model_covered": pa.latency_lo_s <= meas <= pa.latency_hi_s,
                    }
                )
            log(f"  {rows[-1]['config']:<22} predicted {pred:7.3f} s  measured {meas:7.3f} s  error {err:+6.1f} %")
    return rows


def variant_models(profile, profile_path: str, folder: str):
    """(variant file, PerfModel) for every card in ``folder`` whose file exists, predicted as `edgekit plan` does:
    anchored on the profiled base model when its architecture matches, else across models from its GGUF facts."""
    from pathlib import Path

    from edgekit.perfmodel.cross_model import predict_variant, same_architecture
    from edgekit.plan.variant_candidates import list_variant_cards, variant_info

    dm = fit_device(profile, profile_path)
    complete = {m.model.id: m for m in profile.measured_models()}
    out = []
    for lc in list_variant_cards(folder):
        c = lc.card
        p = Path(c.path) if Path(c.path).is_absolute() else lc.path.parent / c.path
        if not p.is_file() or any(m.model.sha256 == c.sha256 for m in complete.values()):
            continue  # no file to run, or profiled (its own entry is validated with --models)
        base = complete.get(c.base_model)
        info = variant_info(lc, base.model if base else None)
        if base is not None and same_architecture(info, base.model):
            out.append((str(p), predict_variant(dm, info, base.model, fit(base, profile_path)), c.variant_id))
        else:
            out.append((str(p), dm.predict_model(info), c.variant_id))
    return out


def slice_model(profile, spec: str, blocks: int):
    """(PerfModel fitted to a block-slice estimate of ``spec`` made now, seconds it took); the profile is not
    changed."""
    import time

    from edgekit.profile.slice_estimate import estimate_by_slices

    t0 = time.perf_counter()
    est = estimate_by_slices(spec, blocks=blocks, existing=profile.model_copy(deep=True))
    mp = est.models[-1]
    assert mp.estimate is not None
    return fit(mp, "block slices (made by this benchmark)"), time.perf_counter() - t0


def mape(rows: list[dict]):
    return statistics.fmean(abs(r["error_pct"]) for r in rows) if rows else None


def main(argv=None) -> int:
    ap = parser(__doc__, reps=3)
    ap.add_argument("--profile", required=True, help="device profile JSON measured on this machine")
    ap.add_argument(
        "--models",
        default=None,
        help="comma-separated profiled models to validate (default: every catalogue model in the profile; '' = none)",
    )
    ap.add_argument(
        "--unprofiled",
        default=None,
        help="a catalogue model NOT in the profile (cross-model estimate; needs >= 2 profiled models)",
    )
    ap.add_argument(
        "--variants",
        default=None,
        help="folder of variant cards (edgekit quantize): each variant with a file is run and compared "
        "with its prediction (anchored on its profiled base, else cross-model)",
    )
    ap.add_argument(
        "--slices",
        action="store_true",
        help="predict --unprofiled and --variants from a block-slice estimate made now (edgekit profile "
        "--slices), the cross-model prediction reported beside it",
    )
    ap.add_argument("--slice-blocks", type=int, default=8)
    ap.add_argument(
        "--leave-one-out",
        action="store_true",
        help="no new timing: predict each profiled model from the others, compare with its recorded points",
    )
    ap.add_argument(
        "--smoke", action="store_true", help="tiny run: 2 configurations per profiled model, 1 unprofiled, 1 rep"
    )
    return run(ap.parse_args(argv))


def run_leave_one_out(a) -> int:
    from edgekit.perfmodel.loo import leave_one_out

    out = leave_one_out(load_profile(a.profile), CONFIGS + UNPROFILED_CONFIGS, a.profile)
    out["goal"] = {"coverage": 0.90, "mape_pct": 15.0}
    out["meets_goal"] = all(out[k]["coverage"] >= 0.90 and out[k]["mape_pct"] <= 15.0 for k in ("points", "configs"))
    emit(out, a.json, lambda: print_loo(out))
    return 0


def print_loo(out: dict) -> None:
    covered = Col("covered", lambda r: "y" if r["covered"] else "N")
    print_table(
        out["rows"], ["model", "kind", "config", "predicted_s:.4f", "measured_s:.4f", "error_pct:+.1f", covered]
    )
    for k, what in (
        ("points", "recorded sweep points (measured)"),
        ("configs", "configurations vs the model's own fit"),
    ):
        s = out[k]
        print(
            f"{what}: MAPE {s['mape_pct']:.1f} %, interval coverage {100 * s['coverage']:.0f} % over {s['n']} "
            f"(max |error| {s['max_abs_error_pct']:.1f} %)"
        )
    for m, v in out["per_model"].items():
        print(
            f"  {m} from {', '.join(v['from'])}: points MAPE {v['points']['mape_pct']:.1f} % cov "
            f"{100 * v['points']['coverage']:.0f} %; configs MAPE {v['configs']['mape_pct']:.1f} % cov "
            f"{100 * v['configs']['coverage']:.0f} %"
        )
    print(f"goal: coverage >= 90 %, MAPE <= 15 %: {'met' if out['meets_goal'] else 'NOT met'}")
    print(f"method: {out['method']}")


def run(a) -> int:
    if a.leave_one_out:
        return run_leave_one_out(a)
    if a.reps < 1:
        raise UsageError(f"--reps must be >= 1 (got {a.reps})")
    profile = load_profile(a.profile)
    if profile.kind != "measured":
        log(
            f"warning: {a.profile} is a {profile.kind} profile; its predictions are for {profile.device.name}, "
            "not this machine"
        )
    elif profile.device.hostname and profile.device.hostname != socket.gethostname():
        log(f"warning: {a.profile} was measured on host {profile.device.hostname}, this is {socket.gethostname()}")
    in_profile = [m.model.id for m in profile.models]
    if a.models is None:
        models = [m for m in in_profile if m in CATALOG]
    else:
        models = [m.strip() for m in a.models.split(",") if m.strip()]
        missing = [m for m in models if m not in in_profile]
        if missing:
            raise UsageError(
                f"profile {a.profile} has no model {', '.join(missing)} (has: {', '.join(in_profile)})",
                fix="pick --models from the profile, or profile them with `edgekit profile`",
            )
    if not models and not a.unprofiled and not a.variants:
        raise UsageError(
            f"nothing to validate: profile {a.profile} has no catalogue model and no --unprofiled was given"
        )
    if a.unprofiled and a.unprofiled in in_profile:
        raise UsageError(
            f"--unprofiled {a.unprofiled} is in the profile", fix="pick a catalogue model the profile lacks"
        )
    reps = 1 if a.smoke else a.reps
    configs = CONFIGS[:2] if a.smoke else CONFIGS
    rows: list[dict] = []
    for mid in models:
        mp = profile.model(mid)
        rows += validate_model(mid, fit(mp, a.profile), configs, reps, mp.threads, mp)
    threads = next((m.threads for m in profile.models if m.threads), None)
    ucfg = UNPROFILED_CONFIGS[:1] if a.smoke else UNPROFILED_CONFIGS
    slice_s: dict[str, float] = {}

    def check(spec: str, label: str, cross) -> None:
        nonlocal rows
        if a.slices:
            pm, slice_s[label] = slice_model(profile, spec, a.slice_blocks)
            log(f"{label}: {pm.method} ({slice_s[label]:.1f} s)")
            rows += validate_model(label, pm, ucfg, reps, threads, None, alt=cross)
        else:
            log(f"{label}: {cross.method}")
            rows += validate_model(label, cross, ucfg, reps, threads, None)

    if a.unprofiled:
        dm = fit_device(profile, a.profile)  # raises a clear error with < 2 usable models
        check(a.unprofiled, a.unprofiled, dm.predict_model(gguf_model_info(a.unprofiled)))
    if a.variants:
        for path, pm, vid in variant_models(profile, a.profile, a.variants):
            check(vid, path, pm)
    prof = [r for r in rows if r["profiled"]]
    unprof = [r for r in rows if not r["profiled"]]
    out = {
        "mape": mape(rows),
        "mape_profiled": mape(prof),
        "mape_unprofiled": mape(unprof),
        "rows": rows,
        "coverage_unprofiled": (sum(r["covered"] for r in unprof) / len(unprof)) if unprof else None,
        "slices": a.slices,
        "slice_seconds": slice_s or None,
        "profile": a.profile,
        "reps": reps,
        "smoke": a.smoke,
        "method": METHOD.format(reps=reps),
    }
    cm = [r for r in unprof if "cross_model_error_pct" in r]
    if cm:
        out["cross_model_mape"] = statistics.fmean(abs(r["cross_model_error_pct"]) for r in cm)
        out["cross_model_coverage"] = sum(r["cross_model_covered"] for r in cm) / len(cm)
    emit(out, a.json, lambda: print_run(out))
    return 0


def print_run(out: dict) -> None:
    rows, slice_s = out["rows"], out["slice_seconds"] or {}
    prof = [r for r in rows if r["profiled"]]
    unprof = [r for r in rows if not r["profiled"]]
    print_table(rows, ["model", "config", "off_sweep", "predicted_s:.3f", "measured_s:.3f", "error_pct:+.1f"])
    fmt = lambda x: "n/a" if x is None else f"{x:.1f} %"
    print(
        f"MAPE {fmt(out['mape'])} over {len(rows)} configurations "
        f"(profiled {fmt(out['mape_profiled'])} over {len(prof)}, "
        f"unprofiled {fmt(out['mape_unprofiled'])} over {len(unprof)}); goal: <= 10 %"
    )
    if out["slices"] and unprof:
        print(
            f"block-slice estimates: MAPE {fmt(out['mape_unprofiled'])}, interval coverage "
            f"{100 * out['coverage_unprofiled']:.0f} % over {len(unprof)}; slicing took "
            + ", ".join(f"{k.split('/')[-1]} {v:.0f} s" for k, v in slice_s.items())
        )
        print(
            f"cross-model predictions of the same runs: MAPE {out['cross_model_mape']:.1f} %, interval coverage "
            f"{100 * out['cross_model_coverage']:.0f} %"
        )
    elif unprof:
        print(
            f"cross-model interval coverage {100 * out['coverage_unprofiled']:.0f} % over {len(unprof)} "
            "(goal: >= 90 %, cross-model MAPE <= 15 %)"
        )
    print(f"method: {out['method']}")


if __name__ == "__main__":
    run_main(main)
