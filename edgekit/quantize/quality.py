"""Quality delta of a quantized variant: perplexity on a fixed text and KL divergence to a reference.

How it is measured (llama.cpp's ``llama-perplexity`` and its ``--kl-divergence`` idea):

- **Text**: ``edgekit/data/texts/us-constitution-1787.txt`` by default (public domain, see the
  NOTICE there), or any UTF-8 file. Tokenized with the model's tokenizer (BOS added when the
  model adds one), cut into windows of ``n_ctx`` tokens; the second half of each window is scored
  (every scored token has at least ``n_ctx/2`` tokens of context): see
  :mod:`edgekit.engines.llamacpp_logits`.
- **Perplexity** ``exp(mean NLL)`` over the scored tokens, from the raw logits (no sampling).
- **Reference, once** (:func:`reference_topk`): an ``.npz`` file with the text's token ids, and per
  scored token the reference model's log-probability of the actual token and its ``top_k`` most
  likely tokens with their log-probabilities; metadata: text sha256, model sha256, vocabulary
  size, BOS rule, window, top_k, n_batch.
- **KL(reference || variant)** per scored token, on the reference's top-k support plus one tail
  bin: ``sum_i p_i log(p_i/q_i) + p_rest log(p_rest/q_rest)``, with ``p_rest = 1 - sum p_i`` and
  ``q_rest = 1 - sum q_i`` (the variant's mass outside the reference's top-k). This is the exact KL
  between the two distributions coarsened to k+1 bins, so it is a **lower bound** of the
  full-vocabulary KL (coarse-graining never increases a KL divergence); the gap is the
  disagreement inside the reference's tail, which holds ``p_rest`` of its mass (the reference
  file's mean tail mass is reported in the note). llama.cpp stores every log-probability in
  16 bits instead (exact KL, a file ~n_vocab/k times larger). Reported: mean and 99th
  percentile over scored tokens, and top-1 agreement (the variant's argmax equals the
  reference's).
- A reference is only used with the same text, tokenizer (token ids of the text, vocabulary
  size, BOS rule) and window: anything else is refused with a one-line error.

Reference and variant are evaluated through the same kernel path (same ``n_batch``): llama.cpp's
CPU kernels for a one-token batch and for a many-token batch differ by rounding that moves a
135M 4-bit model's per-token log-probabilities by up to a few tenths of a nat, so mixing them
would charge kernel noise to the quantization.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edgekit import engines
from edgekit.errors import SchemaError, UsageError
from edgekit.figures import Figure
from edgekit.jsonio import write_atomic
from edgekit.models.integrity import sha256_file
from edgekit.models.variants import find_variant
from edgekit.schemas.quant import QualityReport, card_path_for, load_card

DATA = Path(__file__).resolve().parent.parent / "data" / "texts"
DEFAULT_TEXT = DATA / "us-constitution-1787.txt"
DEFAULT_N_CTX = 512
DEFAULT_TOP_K = 64
MAX_N_BATCH = 512  # one decode per window up to here; logits buffer n_batch x n_vocab floats
REF_KIND = "edgekit-quality-reference"
REF_VERSION = 1
_ARRAYS = ("tokens", "targets", "logprob", "argmax", "top_ids", "top_logprobs")


@dataclass(frozen=True)
class Text:
    name: str  # "edgekit/data/texts/<file>" for a shipped text, else the path as given
    text: str
    sha256: str


def load_text(path: str | Path | None = None) -> Text:
    """The shipped text (default) or a UTF-8 file; sha256 of its bytes."""
    p = Path(path) if path is not None else DEFAULT_TEXT
    if p.is_dir():
        raise UsageError(f"--text {p} is a directory", fix="pass a UTF-8 text file")
    if not p.is_file():
        raise UsageError(
            f"text file {p} does not exist", fix="pass --text FILE (UTF-8), or leave it out for the shipped text"
        )
    data = p.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"text file {p} is not UTF-8 ({e.reason} at byte {e.start})", fix="save it as UTF-8") from None
    if not text.strip():
        raise UsageError(f"text file {p} is empty", fix="pass a text of a few thousand words")
    shipped = p.resolve().parent == DATA.resolve()
    name = f"edgekit/data/texts/{p.name}" if shipped else str(path)
    return Text(name=name, text=text, sha256=hashlib.sha256(data).hexdigest())


def _n_batch(n_ctx: int) -> int:
    return min(n_ctx, MAX_N_BATCH)


def check_n_ctx(n_ctx: object) -> int:
    if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or not 16 <= n_ctx <= 32768:
        raise UsageError(f"--n-ctx must be an integer in 16..32768, got {n_ctx!r}", fix="pass --n-ctx 512")
    return n_ctx


def _open(model: str, n_ctx: int, n_batch: int, threads: int | None):
    """A llama.cpp engine sized for scoring: one sequence, a context of one window."""
    eng = engines.create("llama.cpp", model, n_ctx=n_ctx, max_n=1, n_batch=n_batch, threads=threads)
    if not hasattr(eng, "token_logprobs"):  # pragma: no cover - a plugin registered under the built-in name
        eng.close()
        raise UsageError(f"engine for {model} cannot return token log-probabilities", fix="use the llama.cpp engine")
    return eng


def _vocab_size(eng) -> int | None:
    """Vocabulary size from the GGUF header (``tokenizer.ggml.tokens``: '<array of N strings>')."""
    v = eng.gguf.get("tokenizer.ggml.tokens")
    if isinstance(v, list):
        return len(v)
    m = re.search(r"\d+", str(v)) if v is not None else None
    return int(m.group()) if m else None


def _model_sha256(eng) -> str:
    """The model file's sha256: the store's verified one, else hashed here (a local file)."""
    return eng.model_info.sha256 or sha256_file(eng.path)


def _tokens(eng, text: Text, limit_tokens: int | None) -> list[int]:
    ids = eng.tokenize(text.text, add_special=True)
    if limit_tokens is not None:
        if not isinstance(limit_tokens, int) or limit_tokens < 1:
            raise UsageError(f"token limit must be a positive integer, got {limit_tokens!r}", fix="pass --limit N")
        ids = ids[:limit_tokens]
    return ids


def _ppl_figure(logprob: np.ndarray, source: str) -> Figure:
    nll = -logprob.astype(np.float64)
    mean = float(nll.mean())
    se = float(nll.std(ddof=1) / math.sqrt(len(nll))) if len(nll) > 1 else float("nan")
    lo, hi = math.exp(mean - 1.96 * se), math.exp(mean + 1.96 * se)
    return Figure(
        value=math.exp(mean),
        unit="ppl",
        method="measured",
        reps=1,
        source=source,
        note=f"mean NLL {mean:.4f} nats/token, 95 % interval of the mean over tokens: ppl {lo:.3f}..{hi:.3f}",
    )


def _source(text: Text, n: int, n_ctx: int) -> str:
    return f"llama.cpp logits, {text.name} ({n} scored tokens, windows of {n_ctx})"


# ----------------------------------------------------------------------------- reference
def reference_topk(
    model: str,
    out_path: str | Path,
    *,
    text: str | Path | None = None,
    n_ctx: int = DEFAULT_N_CTX,
    top_k: int = DEFAULT_TOP_K,
    limit_tokens: int | None = None,
    threads: int | None = None,
) -> tuple[Path, QualityReport]:
    """Score ``text`` with the reference ``model`` once and save its top-k distributions to ``out_path`` (.npz).

    Returns the path and the reference's own report (perplexity only). ``limit_tokens`` keeps the
    first N tokens of the text (quick runs and tests)."""
    if not isinstance(top_k, int) or not 1 <= top_k <= 4096:
        raise UsageError(f"--top-k must be in 1..4096, got {top_k!r}", fix="pass --top-k 64")
    check_n_ctx(n_ctx)
    if Path(out_path).is_dir():
        raise UsageError(f"--output {out_path} is a directory", fix="pass a file name such as ref.npz")
    t = load_text(text)
    n_batch = _n_batch(n_ctx)
    eng = _open(model, n_ctx, n_batch, threads)
    try:
        ids = _tokens(eng, t, limit_tokens)
        r = eng.token_logprobs(ids, n_ctx=n_ctx, top_k=top_k)
        mi = eng.model_info
        meta = {
            "kind": REF_KIND,
            "version": REF_VERSION,
            "text_name": t.name,
            "text_sha256": t.sha256,
            "n_text_tokens": len(ids),
            "limit_tokens": limit_tokens,
            "n_scored": int(len(r.targets)),
            "n_ctx": n_ctx,
            "n_batch": n_batch,
            "top_k": top_k,
            "n_vocab": r.n_vocab,
            "add_bos": r.add_bos,
            "model": mi.id,
            "model_path": str(eng.path),
            "model_sha256": _model_sha256(eng),
            "quant": mi.quant,
            "llama_cpp": eng.info.version,
            "threads": eng.info.threads,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
    finally:
        eng.close()
    arrays = {
        "tokens": np.asarray(ids, np.int32),
        "targets": r.targets,
        "logprob": r.logprob,
        "argmax": r.argmax,
        "top_ids": r.top_ids,
        "top_logprobs": r.top_logprobs,
    }
    path = _save_npz(Path(out_path), arrays, meta)
    return path, reference_report(path)


def _save_npz(p: Path, arrays: dict, meta: dict) -> Path:
    """np.savez_compressed through a temp file and a rename (never a half-written reference)."""
    if p.suffix != ".npz":
        p = p.with_name(p.name + ".npz")
    buf = io.BytesIO()
    np.savez_compressed(buf, meta=np.array(json.dumps(meta, sort_keys=True)), **arrays)
    return write_atomic(p, buf.getvalue(), "reference")


@dataclass
class Reference:
    path: Path
    meta: dict
    tokens: np.ndarray
    targets: np.ndarray
    logprob: np.ndarray
    argmax: np.ndarray
    top_ids: np.ndarray
    top_logprobs: np.ndarray


def load_reference(path: str | Path) -> Reference:
    p = Path(path)
    fix = "make it again: edgekit eval --perplexity REFERENCE_MODEL --make-reference -o REF.npz"
    if not p.is_file():
        raise SchemaError(f"reference file {p} does not exist", fix=fix)
    try:
        with np.load(p, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrs = {k: z[k] for k in _ARRAYS}
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        raise SchemaError(f"{p} is not an edgekit quality reference ({type(e).__name__}: {e})", fix=fix) from None
    if meta.get("kind") != REF_KIND or meta.get("version") != REF_VERSION:
        raise SchemaError(f"{p} is not a version-{REF_VERSION} edgekit quality reference", fix=fix)
    n, k = len(arrs["targets"]), int(meta["top_k"])
    if arrs["top_ids"].shape != (n, k) or arrs["top_logprobs"].shape != (n, k) or len(arrs["logprob"]) != n:
        raise SchemaError(f"reference {p} is inconsistent (array shapes)", fix=fix)
    return Reference(path=p, meta=meta, **arrs)


def reference_report(path: str | Path) -> QualityReport:
    """The reference's own perplexity, read back from its file (no model run)."""
    ref = load_reference(path)
    m = ref.meta
    t = Text(name=m["text_name"], text="", sha256=m["text_sha256"])
    tail = 1.0 - np.exp(ref.top_logprobs.astype(np.float64)).sum(axis=1)
    return QualityReport(
        text_name=m["text_name"],
        text_sha256=m["text_sha256"],
        n_tokens=m["n_scored"],
        n_ctx=m["n_ctx"],
        reference=None,
        ppl=_ppl_figure(ref.logprob, _source(t, m["n_scored"], m["n_ctx"])),
        note=f"reference {m['model']} ({m.get('quant')}, sha256 {str(m['model_sha256'])[:12]}); "
        f"top-{m['top_k']} holds {100 * (1 - tail.mean()):.2f} % of its probability on average",
    )


# ----------------------------------------------------------------------------- KL
def kl_topk_tail(ref_top_logprobs: np.ndarray, var_logprobs_at: np.ndarray, floor: float = 1e-10) -> np.ndarray:
    """Per row: KL(p || q) over the reference's top-k tokens plus one tail bin (see the module docstring).

    ``ref_top_logprobs``/``var_logprobs_at``: (n, k) log-probabilities of the same token ids under
    the reference and the variant. The tail masses are floored at ``floor`` (float rounding can make
    1 - sum slightly negative); equal inputs give exactly 0."""
    lp = ref_top_logprobs.astype(np.float64)
    lq = var_logprobs_at.astype(np.float64)
    p = np.exp(lp)
    head = (p * (lp - lq)).sum(axis=1)
    p_rest = np.maximum(1.0 - p.sum(axis=1), floor)
    q_rest = np.maximum(1.0 - np.exp(lq).sum(axis=1), floor)
    return np.maximum(head + p_rest * (np.log(p_rest) - np.log(q_rest)), 0.0)


def measure_quality(
    variant_model: str,
    reference: str | Path,
    *,
    text: str | Path | None = None,
    threads: int | None = None,
    reference_name: str | None = None,
) -> QualityReport:
    """Perplexity of ``variant_model`` on the reference's text, KL(reference || variant) and top-1
    agreement, from one pass of the variant. ``text``: the text file, when the reference was not
    made from the shipped one (its sha256 must match)."""
    ref = load_reference(reference)
    m = ref.meta
    if text is None and m["text_name"].startswith("edgekit/data/texts/"):
        text = DATA / Path(m["text_name"]).name
    if text is None:
        raise UsageError(f"the reference was made from {m['text_name']}; pass that text", fix="pass --text FILE")
    t = load_text(text)
    if t.sha256 != m["text_sha256"]:
        raise UsageError(
            f"text mismatch: {t.name} (sha256 {t.sha256[:12]}) is not the reference's text "
            f"{m['text_name']} (sha256 {m['text_sha256'][:12]})",
            fix="pass the text the reference was made from",
        )
    n_ctx = int(m["n_ctx"])
    eng = _open(variant_model, n_ctx, int(m["n_batch"]), threads)
    try:
        mi = eng.model_info
        sha = _model_sha256(eng)
        nv = _vocab_size(eng)
        if nv is not None and nv != m["n_vocab"]:
            raise UsageError(
                f"tokenizer mismatch: the reference ({m['model']}) has a {m['n_vocab']}-token vocabulary, "
                f"{mi.id} has {nv}",
                fix="compare variants of one model family; make a reference from the variant's own base model",
            )
        ids = _tokens(eng, t, m["limit_tokens"])
        if len(ids) != len(ref.tokens) or not np.array_equal(np.asarray(ids, np.int32), ref.tokens):
            diff = next(
                (i for i, (a, b) in enumerate(zip(ids, ref.tokens.tolist())) if a != b), min(len(ids), len(ref.tokens))
            )
            raise UsageError(
                f"tokenizer mismatch: {mi.id} tokenizes {t.name} differently from the reference "
                f"({m['model']}), first at token {diff}",
                fix="compare variants of one model family; make a reference from the variant's own base model",
            )
        r = eng.token_logprobs(ids, n_ctx=n_ctx, top_k=0, at_ids=ref.top_ids)
        if r.n_vocab != m["n_vocab"] or r.add_bos != m["add_bos"]:
            raise UsageError(
                f"tokenizer mismatch: the reference ({m['model']}) has vocabulary {m['n_vocab']} "
                f"(BOS {m['add_bos']}), {mi.id} has {r.n_vocab} (BOS {r.add_bos})",
                fix="compare variants of one model family",
            )
    finally:
        eng.close()
    kl = kl_topk_tail(ref.top_logprobs, r.at_logprobs)
    agree = float((r.argmax == ref.argmax).mean())  # argmax of each (top_ids[:, 0] may order exact ties otherwise)
    n = len(r.targets)
    src = _source(t, n, n_ctx)
    approx = f"on the reference's top-{m['top_k']} tokens + one tail bin: a lower bound of the full-vocabulary KL"
    ref_ppl = math.exp(-float(ref.logprob.astype(np.float64).mean()))
    return QualityReport(
        text_name=t.name,
        text_sha256=t.sha256,
        n_tokens=n,
        n_ctx=n_ctx,
        reference=reference_name
        or m["model"],  # the reference's id (a variant id when it is one: the planner looks it up)
        ppl=_ppl_figure(r.logprob, src),
        kl_mean=Figure(value=float(kl.mean()), unit="nats", method="measured", reps=1, source=src, note=approx),
        kl_p99=Figure(
            value=float(np.quantile(kl, 0.99)), unit="nats", method="measured", reps=1, source=src, note=approx
        ),
        top1_agree=Figure(
            value=agree,
            unit="fraction",
            method="measured",
            reps=1,
            source=src,
            note="share of scored tokens whose argmax equals the reference's",
        ),
        note=f"reference {m['model']} ({m.get('quant')}, {Path(m['model_path']).name}, sha256 "
        f"{str(m['model_sha256'])[:12]}) ppl {ref_ppl:.4f}; variant {mi.id} ({mi.quant}, sha256 {sha[:12]}); "
        f"reference file {ref.path.name}",
    )


def perplexity(
    model: str,
    *,
    text: str | Path | None = None,
    n_ctx: int = DEFAULT_N_CTX,
    limit_tokens: int | None = None,
    threads: int | None = None,
) -> QualityReport:
    """Perplexity of ``model`` alone (no reference)."""
    check_n_ctx(n_ctx)
    t = load_text(text)
    eng = _open(model, n_ctx, _n_batch(n_ctx), threads)
    try:
        ids = _tokens(eng, t, limit_tokens)
        r = eng.token_logprobs(ids, n_ctx=n_ctx)
        mi, sha = eng.model_info, _model_sha256(eng)
    finally:
        eng.close()
    return QualityReport(
        text_name=t.name,
        text_sha256=t.sha256,
        n_tokens=len(r.targets),
        n_ctx=n_ctx,
        ppl=_ppl_figure(r.logprob, _source(t, len(r.targets), n_ctx)),
        note=f"{mi.id} ({mi.quant}, sha256 {sha[:12]})",
    )


def _card_path(spec: str | Path) -> tuple[str, Path | None]:
    """(what to load, the card to update or None) for a variant id or a file path."""
    card = find_variant(str(spec))
    if card is not None:
        return card.variant_id, card_path_for(card.path)
    cp = card_path_for(spec)
    return str(spec), (cp if cp.is_file() else None)


def evaluate_variants(
    reference: str | Path,
    variants: Sequence[str | Path],
    *,
    text: str | Path | None = None,
    threads: int | None = None,
    write_cards: bool = True,
) -> dict[str, QualityReport]:
    """``edgekit quantize --eval``: measure every variant (id or path) against one reference file;
    where a variant has a card (``<file>.card.json``), store the report in it (``card.quality``)."""
    out: dict[str, QualityReport] = {}
    for spec in variants:
        model, card_p = _card_path(spec)
        card = load_card(card_p) if card_p is not None else None
        rep = measure_quality(model, reference, text=text, threads=threads)
        out[str(spec)] = rep
        if write_cards and card is not None:
            card.quality = rep
            card.save(card_p)
    return out


def evaluate_quantized(
    source: str,
    variants: Sequence[str | Path],
    out_dir: str | Path,
    *,
    limit_tokens: int | None = None,
    threads: int | None = None,
) -> tuple[Path, QualityReport, dict[str, QualityReport]]:
    """Make a reference from ``source`` (saved in ``out_dir`` as ``<source>.quality-ref.npz``, reusable with
    ``edgekit eval --perplexity VARIANT --reference``), record its own perplexity in its card when it
    is a variant (e.g. the F16 reference), then measure and record every variant against it."""
    model, src_card = _card_path(source)
    stem = Path(model).name.removesuffix(".gguf")
    ref_path, ref_rep = reference_topk(
        model, Path(out_dir) / f"{stem}.quality-ref.npz", limit_tokens=limit_tokens, threads=threads
    )
    if src_card is not None:
        card = load_card(src_card)
        card.quality = ref_rep
        card.save(src_card)
    others = [v for v in variants if str(v) != str(source)]
    return ref_path, ref_rep, evaluate_variants(ref_path, others, threads=threads)
