"""Planner: the most accurate configuration that meets a latency target (and caps) on a device.

Candidates = every accuracy table (model x quant x template x temperature) x row (budget B,
k = n, aggregation). Latency is predicted by :mod:`edgekit.perfmodel`, vectorised per table.
p50 uses the point prediction, p95 the upper end of the interval. Assumptions (also written to
the plan's ``based_on``): the prompt length is the table's mean; the batch decodes the row's
``expected_steps`` steps with all n sequences live throughout (``sequences_leave=True`` instead
lets finished sequences leave, using ``mean_tokens``).

Accuracy is measured on a finite eval set, so every candidate carries a 95 % Wilson interval
over the table's problems. The most accurate feasible configuration is chosen unless (``prefer="cheaper"``,
the default) a cheaper one is both statistically tied with it -- paired over the problems their tables share
where they share them (:mod:`edgekit.plan.compare`) -- and cheaper beyond the latency predictions' intervals;
the plan lists the chosen configuration against its feasible competitors (``PlanResult.competitors``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from edgekit.errors import EdgekitError, SchemaError, UsageError
from edgekit.figures import wilson
from edgekit.perfmodel import DeviceModel, PerfModel, Prediction, fit, fit_device
from edgekit.perfmodel.correction import scale_model
from edgekit.perfmodel.cross_model import predict_variant, same_architecture
from edgekit.plan.compare import Comparator, cheapest, choose, pareto
from edgekit.plan.stop_candidates import DEFAULT_STOP_RULES, with_stop_rows
from edgekit.schemas.profile import DeviceProfile, ModelInfo
from edgekit.schemas.table import AccuracyTable

TIE_EPS = 1e-9
VERIFIER_AGGS = ("pass@k", "first_verified")
EXTRACTOR_BY_TASK = {
    "object_counting": "number",
    "gsm8k": "number",
    "date_understanding": "choice",
    "strategyqa": "yesno",
    "humaneval": "code",
    "mbpp": "code",
}


class InfeasibleTarget(EdgekitError):
    """No configuration meets the target / caps. ``result`` holds the candidates for display."""

    def __init__(self, message: str, fix: str | None = None, result: PlanResult | None = None):
        super().__init__(message, fix)
        self.result = result


def extractor_for(task: str, overrides: Mapping[str, str] | Callable[[str], str | None] | None = None) -> str | None:
    if callable(overrides):
        return overrides(task)
    if overrides and task in overrides:
        return overrides[task]
    key = task.replace("/", ":").split(":")[-1].lower()
    return EXTRACTOR_BY_TASK.get(key)


@dataclass
class PlanResult:
    profile: DeviceProfile
    tables: list[AccuracyTable]
    perf_models: list[PerfModel | None]  # one per table (None: a cached variant left out, see notes)
    target_s: float
    percentile: int
    energy_cap_j: float | None
    memory_cap_gb: float | None
    table: np.ndarray  # per candidate: index into tables
    row: np.ndarray  # index into tables[t].rows
    budget: np.ndarray
    n: np.ndarray
    steps: np.ndarray
    mean_tokens: np.ndarray
    accuracy: np.ndarray
    prompt_tokens: np.ndarray
    pred: dict  # perfmodel arrays: prefill_s, decode_s, total_s, lo_s, hi_s, energy_j, memory_bytes
    latency: np.ndarray  # at the percentile
    caps_ok: np.ndarray
    feasible: np.ndarray
    frontier: np.ndarray  # candidate indices on the accuracy/latency Pareto frontier, by latency
    chosen: int | None = None
    profile_path: str | None = None
    table_paths: list[str | None] = field(default_factory=list)
    sequences_leave: bool = False
    extractor_overrides: object = None
    notes: list[str] = field(default_factory=list)
    acc_lo: np.ndarray | None = None  # 95 % Wilson interval over the table's problems
    acc_hi: np.ndarray | None = None
    most_accurate: int | None = None  # the most accurate feasible candidate (may differ from chosen)
    prefer: str = "cheaper"
    joint: object = None  # plan.joint.JointChoice when offload was planned jointly
    cloud: dict | None = None  # base_url, model, latency_s, accuracy_table
    variants: list = field(default_factory=list)  # per table: plan.variant_candidates.Variant or None
    acc_hi_tie: np.ndarray | None = None  # upper end without a prior's widening (ties never favour a prior)
    selection: tuple[int, str] | None = (
        None  # (candidate, why) when the planner took a cheaper one than the most accurate
    )

    @property
    def why_chosen(self) -> str | None:
        """Why the chosen configuration is not the most accurate one (None when it is, or another step chose it)."""
        return self.selection[1] if self.selection and self.selection[0] == self.chosen else None

    warnings: list[str] = field(default_factory=list)  # one line each (tables on different task-file versions)
    comparator: object = None  # plan.compare.Comparator: per-problem scores and paired comparisons (cached)
    _competitors: dict = field(default_factory=dict, repr=False)

    def competitors(self) -> list:
        """The chosen configuration against its feasible competitors (plan.compare.Comparison), paired where the
        tables share problems."""
        from edgekit.plan.compare import competitors

        if self.chosen is None or self.comparator is None:
            return []
        if self.chosen not in self._competitors:
            self._competitors[self.chosen] = competitors(self, self.comparator, self.chosen)
        return self._competitors[self.chosen]

    def optimism(self) -> tuple[float, int] | None:
        """(estimated selection optimism of the chosen table accuracy, out of how many configurations) or None."""
        from edgekit.plan.compare import optimism

        if self.chosen is None or self.comparator is None:
            return None
        key = ("optimism", self.chosen)
        if key not in self._competitors:
            self._competitors[key] = optimism(self, self.comparator, self.chosen)
        return self._competitors[key]

    def chance(self):
        """The chosen configuration against its blind baseline (evaluate.chance.ChanceCheck) or None."""
        return None if self.chosen is None or self.comparator is None else self.comparator.chance(self.chosen)

    def all_warnings(self) -> list[str]:
        """``warnings`` and, when the chosen configuration is not shown above chance, that (plan.compare)."""
        from edgekit.plan.compare import chance_warning

        if self.chosen is None or self.comparator is None:
            return list(self.warnings)
        key = ("chance", self.chosen)
        if key not in self._competitors:
            self._competitors[key] = chance_warning(self, self.comparator, np.nonzero(self.feasible)[0], self.chosen)
        return self.warnings + [w for w in [self._competitors[key]] if w]

    @property
    def interval_how(self) -> str:
        return "95 % Wilson interval over the accuracy table's problems (sampling noise of the eval set only)"

    def __len__(self) -> int:
        return len(self.accuracy)

    def variant(self, i: int):
        return self.variants[int(self.table[i])] if self.variants else None

    def accuracy_source(self, i: int) -> str:
        """How candidate i's accuracy was obtained: the table row, or a labelled prior."""
        v = self.variant(i)
        c = self.config(i)
        row = f"row B={c['budget']} k={c['n']} {c['aggregation']}"
        if c.get("stop_rule"):
            row += f", stopping rule {c['stop_rule']} replayed on its samples"
        if v is not None and v.prior is not None:
            return f"estimated ({v.prior.how}), {row}"
        return f"accuracy table {c['table_path'] or c['task']} {row}"

    def rests_on(self, i: int) -> list[str]:
        """What the candidate's figures rest on besides measurements: cross-model or block-slice latency, an
        accuracy prior."""
        out = []
        if "cross-model" in self.method(i):
            out.append("latency: cross-model estimate")
        elif "block slices" in self.method(i):
            out.append("latency: block-slice estimate")
        v = self.variant(i)
        if v is not None and v.prior is not None:
            out.append("accuracy: prior")
        return out

    def config(self, i: int) -> dict:
        t = self.tables[int(self.table[i])]
        r = t.rows[int(self.row[i])]
        greedy = r.aggregation == "greedy"
        v = self.variant(i)
        return {
            "model_id": t.model_id,
            "model_sha256": t.model_sha256 or self.perf_models[int(self.table[i])].sha256,
            "quant": t.quant,
            "task": t.task,
            "prompt_template": t.prompt_template,
            "answer_format": t.answer_format,
            "temperature": 0.0 if greedy else t.temperature,
            "top_p": t.top_p,
            "budget": r.budget,
            "n": int(self.n[i]),
            "aggregation": r.aggregation,
            "stop_rule": r.stop_rule,
            "extractor": extractor_for(t.task, self.extractor_overrides),
            "backend": t.backend,
            "table_path": self.table_paths[int(self.table[i])] if self.table_paths else None,
            "variant_id": v.card.card.variant_id if v else None,
            "variant_card_sha256": v.card.sha256 if v else None,
            "model_path": str(v.card.card.path) if v else None,
        }

    def label(self, i: int) -> str:
        c = self.config(i)
        rule = f", stop {c['stop_rule']}" if c.get("stop_rule") else ""
        return f"{c['model_id']} B={c['budget']} n={c['n']} ({c['aggregation']}{rule})"

    def prediction(self, i: int) -> Prediction:
        pm = self.perf_models[int(self.table[i])]
        mt = float(self.mean_tokens[i]) if self.sequences_leave else None
        row = self.tables[int(self.table[i])].rows[int(self.row[i])]  # a stopping rule: priced by its live rows
        return pm.predict(
            float(self.prompt_tokens[i]), int(self.budget[i]), int(self.n[i]), float(self.steps[i]), mt, row.live_steps
        )

    def method(self, i: int) -> str:
        return self.perf_models[int(self.table[i])].method_for(float(self.n[i]))


def _fmt_caps(e, m) -> str:
    parts = ([f"energy <= {e:g} J"] if e is not None else []) + ([f"memory <= {m:g} GB"] if m is not None else [])
    return ", ".join(parts)


def plan(
    profile: DeviceProfile,
    tables: Sequence[AccuracyTable],
    latency_target_s: float,
    percentile: int = 50,
    energy_cap_j: float | None = None,
    memory_cap_gb: float | None = None,
    model_map: Mapping[str, str] | None = None,
    *,
    profile_path: str | None = None,
    table_paths: Sequence[str | None] | None = None,
    model_infos: Mapping[str, ModelInfo] | None = None,
    sequences_leave: bool = False,
    extractor_kinds=None,
    prefer: str = "cheaper",
    variants: Sequence = (),
    perf_scale: tuple[float, float] | None = None,
    stop_rules: Sequence[str] = DEFAULT_STOP_RULES,
) -> PlanResult:
    """Pick the most accurate configuration meeting ``latency_target_s`` at ``percentile`` (50 or 95).
    ``perf_scale`` = (prefill, decode): the device runs that much slower than profiled (live correction)."""
    if not latency_target_s or not math.isfinite(latency_target_s) or latency_target_s <= 0:
        raise UsageError(
            f"latency target must be a finite number > 0 s, got {latency_target_s}", fix="pass e.g. --latency-target 2s"
        )
    if prefer not in ("cheaper", "most-accurate"):
        raise UsageError(f"prefer must be 'cheaper' or 'most-accurate', got {prefer!r}", fix="pass --prefer cheaper")
    if percentile not in (50, 95):
        raise UsageError(f"percentile must be 50 or 95, got {percentile}", fix="pass --percentile 50 or 95")
    for name, cap in (("energy cap", energy_cap_j), ("memory cap", memory_cap_gb)):
        if cap is not None and (not math.isfinite(cap) or cap <= 0):
            raise UsageError(
                f"{name} must be a finite number > 0, got {cap}", fix=f"omit the {name} or pass a positive value"
            )
    if not tables:
        raise UsageError("no accuracy tables given", fix="pass at least one table built by `edgekit eval`")
    tpaths = list(table_paths) if table_paths else [None] * len(tables)
    tables = list(tables)
    # quantized variants (plan.variant_candidates): their own tables, or base tables renamed with an accuracy prior
    var_of: list = [None] * len(tables)
    model_infos = dict(model_infos or {})
    bases = {v.table.model_id: v.card.card.base_model for v in variants}
    for v in variants:
        model_infos.setdefault(v.table.model_id, v.info)
        if v.table_index is not None:
            var_of[v.table_index] = v
        else:
            tables.append(v.table)
            tpaths.append(v.table_path)
            var_of.append(v)
    factor = np.array([v.prior.factor if v is not None and v.prior else 1.0 for v in var_of])
    ppath = profile_path or "(profile)"
    notes: list[str] = []
    for ti, t in enumerate(tables):  # stopping rules: replayed rows, one more knob (plan.stop_candidates)
        tables[ti], note = with_stop_rows(t, stop_rules)
        if note:
            notes.append(note)
    cache: dict[str, PerfModel] = {}
    device: list[DeviceModel] = []

    def resolve(t: AccuracyTable, tpath: str | None) -> PerfModel:
        mapped = model_map is not None and t.model_id in model_map
        pid = model_map[t.model_id] if mapped else t.model_id
        complete = profile.complete_models()  # a partial entry (interrupted sweep) is never used as if complete
        mp = None
        # a measured entry (by id, then by file hash) before an estimate from block slices of the same file
        for entries in (profile.measured_models(), [m for m in complete if m.estimate is not None]):
            mp = next((m for m in entries if m.model.id == pid), None)
            if (
                mp is not None
                and t.model_sha256
                and mp.model.sha256
                and mp.model.sha256 != t.model_sha256
                and not mapped
                and (t.quant or "").lower() == (mp.model.quant or t.quant or "").lower()
            ):
                # the same name and type, another file (a variant remade with --force, a re-downloaded model):
                # its timings are not this file's (another type is the error below)
                msg = (
                    f"profile entry {mp.model.id!r} is of another file (sha256 {mp.model.sha256[:12]}…, the table's "
                    f"is {t.model_sha256[:12]}…): not used for it"
                )
                if msg not in notes:
                    notes.append(msg)
                mp = None
            if mp is None and t.model_sha256:
                mp = next((m for m in entries if m.model.sha256 == t.model_sha256), None)
            if mp is not None:
                break
        part = next((m for m in profile.partial_models() if m.model.id == pid), None)
        if mp is None and part is not None:
            raise SchemaError(
                f"profile {ppath} has only a partial entry for {pid} (the sweep stopped early: "
                f"{'; '.join((part.gaps or [])[:2])})",
                fix=f"complete it: `edgekit profile --model {pid} --append --output {ppath}`",
            )
        ids = ", ".join(m.model.id for m in complete) or "none"
        tname = tpath or f"for task {t.task}"
        if mp is not None:
            if t.quant and mp.model.quant and t.quant.lower() != mp.model.quant.lower() and not mapped:
                raise SchemaError(
                    f"accuracy table {tname} is for {t.model_id!r} {t.quant}, profile {ppath} measured "
                    f"{mp.model.id!r} {mp.model.quant}",
                    fix=f"profile the {t.quant} file, or map it explicitly with --model-map {t.model_id}=<id>",
                )
            if mp.model.id not in cache:
                cache[mp.model.id] = fit(mp, profile_path)
            return cache[mp.model.id]
        if len(profile.measured_models()) >= 2:
            info = model_infos.get(t.model_id)
            if info is None:
                raise SchemaError(
                    f"accuracy table {tname} is for model {t.model_id!r}, which profile {ppath} lacks "
                    f"(has: {ids}); a cross-model estimate needs its size and parameter count",
                    fix=f"profile it (`edgekit profile --model {t.model_id}`) or pass its model info",
                )
            if not device:
                device.append(fit_device(profile, profile_path))
            key = "cross:" + t.model_id
            base = next((m for m in complete if m.model.id == bases.get(t.model_id)), None)
            if key not in cache and base is not None and same_architecture(info, base.model) and base.model.size_bytes:
                if base.model.id not in cache:
                    cache[base.model.id] = fit(base, profile_path)
                cache[key] = predict_variant(device[0], info, base.model, cache[base.model.id])
            if key not in cache:
                cache[key] = device[0].predict_model(info)
                notes.append(f"{t.model_id}: {cache[key].method}; interval {cache[key].interval_how}")
            return cache[key]
        raise SchemaError(
            f"accuracy table {tname} is for model {t.model_id!r} but profile {ppath} has only {ids}",
            fix=f"run `edgekit profile --model {t.model_id}` on this device, or map it with "
            f"--model-map {t.model_id}=<profile model id>",
        )

    pms: list[PerfModel | None] = []
    for t, p, v in zip(tables, tpaths, var_of):
        try:
            pms.append(resolve(t, p))
        except SchemaError as e:
            if v is None:  # a table the user named: its error is the answer
                raise
            pms.append(None)  # a variant found in the cache: left out, said why
            notes.append(f"variant {t.model_id} left out: {e.message}")
    if perf_scale is not None:
        pms = [None if pm is None else scale_model(pm, *perf_scale) for pm in pms]
        notes.append(
            f"device speed scaled by a live correction: prefill x{perf_scale[0]:.3g}, decode x{perf_scale[1]:.3g} "
            "(measured on the served model, assumed to hold for every model)"
        )
    cols: dict[str, list] = {k: [] for k in ("table", "row", "budget", "n", "steps", "mean", "acc", "I", "P")}
    skipped = 0
    for ti, t in enumerate(tables):
        if pms[ti] is None:
            continue
        for ri, r in enumerate(t.rows):
            if r.aggregation in VERIFIER_AGGS and not t.has_verifier:
                skipped += 1
                continue
            n = 1 if r.aggregation == "greedy" else r.k
            for k, v in zip(
                cols,
                (ti, ri, r.budget, n, r.expected_steps, r.mean_tokens, r.accuracy, t.prompt_tokens_mean, t.n_problems),
            ):
                cols[k].append(v)
    if skipped:
        notes.append(f"{skipped} pass@k/first_verified row(s) skipped: their tables have no verifier")
    if not cols["acc"]:
        raise UsageError(
            "no plannable rows in the accuracy tables", fix="evaluate majority/greedy rows, or a task with a verifier"
        )
    A = {k: np.asarray(v, dtype=int if k in ("table", "row") else float) for k, v in cols.items()}
    base_acc = A["acc"]
    A["acc"] = base_acc * factor[A["table"]]
    pred = {
        k: np.empty(len(A["acc"]))
        for k in ("prefill_s", "decode_s", "total_s", "lo_s", "hi_s", "energy_j", "memory_bytes")
    }
    for ti, pm in enumerate(pms):
        sel = np.nonzero(A["table"] == ti)[0]
        if sel.size == 0 or pm is None:
            continue
        out = pm.predict_arrays(
            A["I"][sel],
            A["steps"][sel],
            A["n"][sel],
            A["budget"][sel],
            A["mean"][sel] if sequences_leave else None,
            [tables[ti].rows[int(ri)].live_steps for ri in A["row"][sel]],  # stopping rules: priced per live row
        )
        for k in pred:
            pred[k][sel] = out[k]
    lat = pred["total_s"] if percentile == 50 else pred["hi_s"]
    caps_ok = np.ones(lat.shape, bool)
    if energy_cap_j is not None:
        caps_ok &= np.nan_to_num(pred["energy_j"], nan=np.inf) <= energy_cap_j
        if np.isnan(pred["energy_j"]).any():
            notes.append("candidates with unavailable energy are excluded by the energy cap")
    if memory_cap_gb is not None:
        caps_ok &= np.nan_to_num(pred["memory_bytes"], nan=np.inf) <= memory_cap_gb * 1e9
    feasible = caps_ok & (lat <= latency_target_s)
    frontier = pareto(lat, A["acc"], np.nonzero(caps_ok)[0], pred["energy_j"])
    res = PlanResult(
        profile=profile,
        tables=list(tables),
        perf_models=pms,
        target_s=float(latency_target_s),
        percentile=percentile,
        energy_cap_j=energy_cap_j,
        memory_cap_gb=memory_cap_gb,
        table=A["table"],
        row=A["row"],
        budget=A["budget"],
        n=A["n"],
        steps=A["steps"],
        mean_tokens=A["mean"],
        accuracy=A["acc"],
        prompt_tokens=A["I"],
        pred=pred,
        latency=lat,
        caps_ok=caps_ok,
        feasible=feasible,
        frontier=frontier,
        profile_path=profile_path,
        table_paths=tpaths,
        sequences_leave=sequences_leave,
        extractor_overrides=extractor_kinds,
        notes=notes,
        prefer=prefer,
        variants=var_of,
    )
    res.comparator = cmp = Comparator(res)
    for a in range(len(tables)):  # tables of the same task on different versions of its file: one warning each
        for b in range(a + 1, len(tables)):
            w = cmp.table_pairing(a, b).warning
            if w and w not in res.warnings:
                res.warnings.append(w)
    lo, hi = wilson(base_acc, A["P"])
    f, w = factor[A["table"]], np.zeros(len(base_acc))
    is_prior = np.array([var_of[t] is not None and var_of[t].prior is not None for t in A["table"]], bool)
    for ti, v in enumerate(var_of):
        if v is not None and v.prior is not None:
            sel = A["table"] == ti
            w[sel] = v.prior.widen(base_acc[sel])
    res.acc_lo, res.acc_hi = np.clip(lo * f - w, 0, 1), np.clip(hi * f + w, 0, 1)
    res.acc_hi_tie = np.where(is_prior, A["acc"], res.acc_hi)  # a prior never wins a tie on its widened upper end
    if not caps_ok.any():
        raise InfeasibleTarget(
            f"no configuration meets the caps ({_fmt_caps(energy_cap_j, memory_cap_gb)})",
            fix="raise the caps, or evaluate smaller models / budgets / n",
            result=res,
        )
    if not feasible.any():
        cand = np.nonzero(caps_ok)[0]
        f = int(cand[np.argmin(lat[cand])])
        caps = _fmt_caps(energy_cap_j, memory_cap_gb)
        raise InfeasibleTarget(
            f"no configuration meets {latency_target_s:g} s at p{percentile}{' within ' + caps if caps else ''}; "
            f"the fastest is {res.label(f)} at {lat[f]:.3g} s",
            fix=f"raise the target to at least {lat[f]:.3g} s, or evaluate a smaller model or shorter budgets",
            result=res,
        )
    idx = np.nonzero(feasible)[0]
    res.most_accurate = best = cheapest(idx[A["acc"][idx] >= A["acc"][idx].max() - TIE_EPS], lat, pred["energy_j"])
    res.chosen, why = choose(res, res.comparator, idx, best, pareto(lat, A["acc"], idx, pred["energy_j"]))
    res.selection = (res.chosen, why) if why else None
    if why:
        notes.append(why)
    return res
