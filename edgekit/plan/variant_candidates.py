"""Quantized variants as planner candidates: card listing, accuracy prior, model facts.

A variant (``edgekit quantize`` output, described by a :class:`~edgekit.schemas.quant.VariantCard`)
becomes candidates when its ``base_model`` has an accuracy table:

- accuracy: a table for that exact variant (``model_id == variant_id`` or ``model_sha256 == card.sha256``)
  when one is given; else a **prior** from each base table (:func:`accuracy_prior`), labelled
  ``estimated (prior from <base table> and KL=... vs <reference>)`` with a widened interval;
- speed and memory: the profile's entry for the variant (matched by sha256 or id) when profiled, else
  a cross-model prediction from its GGUF facts (:mod:`edgekit.perfmodel.cross_model`); memory = file size
  + KV cache + overhead.

Where variant cards come from is decided in one place, :func:`list_variant_cards` (a directory of
``*.card.json``; default ``<EDGEKIT_HOME>/models/variants``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import EdgekitError, UsageError
from edgekit.models.variants import variants_dir
from edgekit.schemas.profile import ModelInfo
from edgekit.schemas.quant import VariantCard, load_card
from edgekit.schemas.table import AccuracyTable

# The prior (heuristic, see accuracy_prior): retained share of the base accuracy = exp(-PRIOR_C * dKL)
PRIOR_C = 5.0  # per nat of mean token KL
PRIOR_MIN_WIDEN = 0.02  # absolute accuracy added to each side of the interval, at least
PPL_WIDEN_FACTOR = 2.0  # a perplexity ratio is a weaker proxy of KL: its widening is doubled
NO_REPORT_KL = 0.10  # assumed KL (nats) of a variant with no usable quality report ...
NO_REPORT_WIDEN = 0.25  # ... and its (wide) interval widening


@dataclass
class LoadedCard:
    card: VariantCard
    path: Path
    sha256: str  # of the card file as read (recorded in the plan)


@dataclass
class AccuracyPrior:
    factor: float  # multiplies the base table's accuracy (and its Wilson interval)
    floor: float  # half-width added on each side: mult * max(floor, base accuracy * (1 - factor))
    how: str  # "prior from <base table> and KL=... vs <reference>"
    kl: float | None = None  # the KL delta used (nats); None when assumed
    mult: float = 1.0

    def widen(self, base_accuracy):
        """Absolute half-width added on each side of the (scaled) Wilson interval; vectorised."""
        import numpy as np

        return self.mult * np.maximum(self.floor, np.asarray(base_accuracy, float) * (1 - self.factor))


@dataclass
class Variant:
    card: LoadedCard
    table: AccuracyTable  # a copy of the base table renamed to the variant, or the variant's own table
    table_path: str | None  # the base table's path (prior) or the variant's own table's path
    info: ModelInfo  # for the cross-model prediction when the profile lacks the variant
    prior: AccuracyPrior | None = None  # None: accuracy measured in the variant's own table
    table_index: int | None = None  # index of the variant's own table among the tables passed


def default_variants_dir() -> Path:
    """Where ``edgekit quantize`` writes variants (one definition: :func:`edgekit.models.variants.variants_dir`)."""
    return variants_dir()


def list_variant_cards(directory: str | Path | None = None, skipped: list | None = None) -> list[LoadedCard]:
    """Every ``*.card.json`` under ``directory`` (default: the quantize cache), sorted by path.
    The one place where the planner learns which variants exist. With ``skipped`` (a list), an
    unreadable card is recorded there ("path: why") instead of raising."""
    d = Path(directory) if directory is not None else default_variants_dir()
    if directory is not None and not d.is_dir():
        raise UsageError(
            f"--variants {d} is not a folder", fix="pass the folder edgekit quantize wrote (with *.card.json)"
        )
    out = []
    for p in sorted(d.rglob("*.card.json")) if d.is_dir() else []:
        try:
            raw = p.read_bytes()
            out.append(LoadedCard(card=load_card(p), path=p, sha256=hashlib.sha256(raw).hexdigest()))
        except (EdgekitError, OSError) as e:
            if skipped is None:
                raise
            skipped.append(f"{p}: {e}")
    return out


def _kl(fig) -> float | None:
    v = None if fig is None else fig.value
    return float(v) if v is not None and math.isfinite(v) and v >= 0 else None


def accuracy_prior(
    card: VariantCard, by_id: Mapping[str, VariantCard], base_card: VariantCard | None, base_label: str
) -> AccuracyPrior:
    """Heuristic accuracy prior of a variant relative to its base model's table (not a measurement).

    dKL = KL(ref || variant) - KL(ref || table's file), both measured against the same reference on the
    same text (the table's own file counts as KL 0 when no card reports it: a conservative, larger dKL);
    a negative dKL (the variant is closer to the reference than the tabled file) is not credited: 0.

        accuracy = base * exp(-PRIOR_C * dKL)                PRIOR_C = 5 / nat
        interval = Wilson(base) * exp(-PRIOR_C * dKL) widened on each side by
                   max(PRIOR_MIN_WIDEN, base - accuracy)      (the predicted drop may be 0 or double)

    The widening never helps a prior: the planner's "cheaper" tie rule compares a prior's point
    estimate, not its upper end, with the best candidate's lower end.

    Rationale: mean token KL is the per-token divergence of the next-token distributions; over a
    generated answer the chance that the variant leaves the base's path grows with it, so the retained
    share of the base's correct answers falls roughly exponentially. c = 5 makes a Q4_K_M-like KL of
    0.02-0.05 nats cost 10-22 % of the accuracy relative, and 0.3 nats (Q2_K on a small model) 78 %,
    which is more pessimistic than published llama.cpp quantization results at 7B scale (deliberately:
    small models degrade faster). Without KL, ln(ppl_variant / ppl_reference) stands in for dKL and the
    widening is doubled. With no usable quality report: dKL = NO_REPORT_KL and widening NO_REPORT_WIDEN.
    """
    q = card.quality
    ref = q.reference if q is not None and q.reference else "the reference"
    base_kl = _kl(base_card.quality.kl_mean) if base_card is not None and base_card.quality is not None else None
    base_note = f" minus the table file's KL={base_kl:.4g}" if base_kl is not None else ""
    kl = _kl(q.kl_mean) if q is not None else None
    if kl is not None:
        d = max(kl - (base_kl or 0.0), 0.0)
        f = math.exp(-PRIOR_C * d)
        return AccuracyPrior(
            f,
            PRIOR_MIN_WIDEN,
            f"prior from {base_label} and KL={kl:.4g} nats vs {ref}"
            f"{base_note} (heuristic: accuracy x exp(-{PRIOR_C:g} x dKL))",
            d,
        )
    ppl = q.ppl.value if q is not None and q.ppl is not None else None
    ref_card = by_id.get(q.reference) if q is not None and q.reference else None
    ref_ppl = ref_card.quality.ppl.value if ref_card is not None and ref_card.quality is not None else None
    if ppl and ref_ppl and ppl > 0 and ref_ppl > 0:
        d = max(math.log(ppl / ref_ppl), 0.0)
        f = math.exp(-PRIOR_C * d)
        return AccuracyPrior(
            f,
            PRIOR_MIN_WIDEN,
            f"prior from {base_label} and ln(ppl ratio)={d:.4g} ({ppl:.4g} vs {ref_ppl:.4g} for {ref}; "
            f"no KL: interval widened x{PPL_WIDEN_FACTOR:g}) (heuristic: accuracy x exp(-{PRIOR_C:g} x d))",
            d,
            PPL_WIDEN_FACTOR,
        )
    f = math.exp(-PRIOR_C * NO_REPORT_KL)
    return AccuracyPrior(
        f,
        NO_REPORT_WIDEN,
        f"prior from {base_label} with no quality report: assumed KL={NO_REPORT_KL:g} "
        f"nats and +-{NO_REPORT_WIDEN:.0%} (heuristic; measure it with edgekit quantize --quality)",
    )


def variant_info(lc: LoadedCard, base: ModelInfo | None) -> ModelInfo:
    """The variant's facts for a cross-model prediction: its GGUF header when the file is readable,
    else its base model's architecture with the card's size and type."""
    c = lc.card
    p = Path(c.path)
    if not p.is_absolute():
        p = lc.path.parent / p
    if c.format == "gguf" and p.is_file():
        from edgekit.models.gguf import read_gguf

        g = read_gguf(p)
        return ModelInfo(
            id=c.variant_id, sha256=c.sha256, quant=c.type, n_params=base.n_params if base else None, **g.shape()
        )
    upd = {"id": c.variant_id, "sha256": c.sha256, "quant": c.type, "size_bytes": c.size_bytes}
    return base.model_copy(update=upd) if base is not None else ModelInfo(**upd)


def variant_candidates(
    cards: Sequence[LoadedCard],
    tables: Sequence[AccuracyTable],
    table_paths: Sequence[str | None],
    base_infos: Mapping[str, ModelInfo],
) -> list[Variant]:
    """One Variant per (card, own table) or (card, base table): what the planner adds as candidates."""
    by_id = {lc.card.variant_id: lc.card for lc in cards}
    by_sha = {lc.card.sha256: lc.card for lc in cards}
    out: list[Variant] = []
    for lc in cards:
        c = lc.card
        own = [
            i
            for i, t in enumerate(tables)
            if t.model_id == c.variant_id or (t.model_sha256 and t.model_sha256 == c.sha256)
        ]
        base_info = base_infos.get(c.base_model)
        info = variant_info(lc, base_info)
        if own:
            out += [Variant(lc, tables[i], table_paths[i], info, None, i) for i in own]
            continue
        for i, t in enumerate(tables):
            if t.model_id != c.base_model or (t.model_sha256 and t.model_sha256 == c.sha256):
                continue
            label = table_paths[i] or f"the {t.model_id} table"
            prior = accuracy_prior(c, by_id, by_sha.get(t.model_sha256 or ""), label)
            vt = t.model_copy(update={"model_id": c.variant_id, "quant": c.type, "model_sha256": c.sha256})
            out.append(Variant(lc, vt, table_paths[i], info, prior))
    return out
