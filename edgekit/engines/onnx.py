"""The ONNX Runtime engine: a folder made by ``edgekit quantize SOURCE --to onnx-int8``.

The folder holds ``model.onnx`` (optimum's ``text-generation-with-past`` graph: ``input_ids``,
``attention_mask``, ``position_ids``, ``past_key_values.<i>.key/value`` in, ``logits`` and
``present.<i>.key/value`` out), the Hugging Face tokenizer files (its chat template included),
``config.json`` and ``generation_config.json``; its card sits beside it (``<folder>.card.json``).

Private to this engine: chat templating (the tokenizer's ``apply_chat_template``), tokenisation,
and decoding. The prompt runs once (batch 1); when the graph's batch axis is dynamic (every optimum
export), its KV cache is tiled to n rows and each step decodes one token for every live sample in
one ``session.run`` -- finished rows leave the batch. A graph with a fixed batch of 1 decodes the n
samples one after another from the same prompt KV (``capabilities.batched_n`` says which). Sampling
(top-k, top-p, min-p, temperature; greedy at 0) is numpy with one seeded generator per sample
(``SeedSequence(seed).spawn(n)``, as the llama.cpp engine); logprobs are read from the raw logits.
No grammar or JSON-schema sampling: such requests are refused before any work.

Needs the ``onnx`` extra (``pip install 'edgekit[onnx]'``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.engines.base import (
    Cancel,
    Capabilities,
    Engine,
    EngineInfo,
    Event,
    Prompt,
    TokenPrompt,
    chat_messages,
    plain_text,
)
from edgekit.errors import BackendError, ChecksumMismatch, ContextOverflow, ModelNotFound, UsageError
from edgekit.host.cpu import int8_u8s8_saturates, isa_flags
from edgekit.models.folder_hash import folder_sha256, onnx_files
from edgekit.models.variants import variants_dir
from edgekit.schemas.options import MAX_N_CAP, SamplingOptions
from edgekit.schemas.profile import ModelInfo
from edgekit.schemas.quant import card_path_for, load_card

INSTALL = "pip install 'edgekit[onnx]' --extra-index-url https://download.pytorch.org/whl/cpu"
PREFILL_CHUNK = 256  # prompt tokens per forward
END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>", "</s>")


def find_folder(model: str) -> Path:
    """A folder path, a variant id (``<cache>/models/variants/<id>``) or a base model id (its
    ``-onnx-int8`` variant)."""
    p = Path(model).expanduser()
    variants = variants_dir()
    for cand in (p, variants / model, variants / f"{model}-onnx-int8"):
        if os.sep not in model or cand == p:
            if (cand / "model.onnx").is_file():
                return cand.resolve()
    raise ModelNotFound(
        f"no ONNX model folder for {model!r} (looked for model.onnx in {p} and under {variants})",
        fix=f"export one: `edgekit quantize {model} --to onnx-int8`, or pass the exported folder's path",
    )


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def log_softmax_at(logits: np.ndarray, toks: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of ``logits`` (rows x vocab) at ``toks``."""
    m = logits.max(axis=-1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(logits - m).sum(axis=-1))
    return logits[np.arange(len(toks)), toks] - lse


def sample(logits: np.ndarray, o: SamplingOptions, rng: np.random.Generator) -> int:
    """One token from one row of logits: llama.cpp's chain order (top-k, top-p, min-p, temperature)."""
    t = o.effective_temperature
    if t <= 0:
        return int(np.argmax(logits))
    x = logits.astype(np.float64)
    if 0 < o.top_k < x.size:
        idx = np.argpartition(-x, o.top_k)[: o.top_k]
        idx = idx[np.argsort(-x[idx], kind="stable")]
    else:
        idx = np.argsort(-x, kind="stable")
    v = x[idx]
    if o.top_p < 1.0:
        c = np.cumsum(_softmax(v))
        keep = int(np.searchsorted(c, o.top_p)) + 1
        idx, v = idx[:keep], v[:keep]
    if o.min_p > 0:
        p = _softmax(v)
        m = p >= o.min_p * p[0]
        idx, v = idx[m], v[m]
    return int(idx[rng.choice(len(v), p=_softmax(v / t))])


class OnnxEngine(Engine):
    """An exported ONNX causal LM (KV cache) in ONNX Runtime on CPU."""

    name = "onnx"

    def __init__(
        self,
        model: str,
        *,
        threads: int | None = None,
        max_n: int = 16,
        n_ctx: int | None = None,
        verify: str | None = None,
        **_: Any,
    ):
        """``model``: exported folder, variant id or base model id. ``verify="full"`` re-hashes the
        onnx files against the card's sha256 (default: sizes, and the hash when a file is newer than its
        card). ``threads``: intra-op threads."""
        if not isinstance(max_n, int) or not 1 <= max_n <= MAX_N_CAP:
            raise UsageError(
                f"max_n must be in 1..{MAX_N_CAP}, got {max_n!r}", fix=f"pass max_n between 1 and {MAX_N_CAP}"
            )
        try:
            import onnxruntime as ort
            from transformers import AutoTokenizer
        except ImportError as e:
            raise BackendError(
                f"the onnx engine needs onnxruntime and transformers ({e.name} is missing)", fix=INSTALL
            ) from e
        self._closed = False
        self._sess = None
        folder = find_folder(model)
        self.path = folder
        card = load_card(card_path_for(folder)) if card_path_for(folder).is_file() else None
        files = onnx_files(folder)
        size = sum(p.stat().st_size for p in files)
        sha = card.sha256 if card else None
        # sizes on every load; the full hash when asked, or when a file changed after its card was written (the card
        # is written last by the export), so a same-size damaged or edited file is never used as the exported one
        changed = (
            card is not None
            and max(max(p.stat().st_mtime_ns, p.stat().st_ctime_ns) for p in files)
            > card_path_for(folder).stat().st_mtime_ns
        )
        if card is not None and (
            size != card.size_bytes or ((verify == "full" or changed) and folder_sha256(folder) != card.sha256)
        ):
            raise ChecksumMismatch(
                f"ONNX variant {card.variant_id} ({folder}) does not match its card "
                f"({'sha256' if size == card.size_bytes else 'size'} differs)",
                fix=f"remake it: `edgekit quantize {card.source.model_id or card.source.path} --to onnx-int8 --force`",
            )
        _check_int8_range(card, folder)
        cfg = json.loads((folder / "config.json").read_text())
        gen = (
            json.loads((folder / "generation_config.json").read_text())
            if (folder / "generation_config.json").is_file()
            else {}
        )
        t0 = time.perf_counter()
        self.tok = AutoTokenizer.from_pretrained(str(folder))
        so = ort.SessionOptions()
        threads = threads or _default_threads()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.log_severity_level = 3
        try:
            self._sess = ort.InferenceSession(str(folder / "model.onnx"), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # a corrupt or foreign graph: one line
            raise BackendError(
                f"onnxruntime could not load {folder / 'model.onnx'} ({type(e).__name__})",
                fix="remake the folder with `edgekit quantize SOURCE --to onnx-int8 --force`",
            ) from e
        self.load_s = time.perf_counter() - t0
        ins = {i.name: i for i in self._sess.get_inputs()}
        self._past = sorted((k for k in ins if k.startswith("past_key_values.")), key=_layer_key)
        self._present = [k.replace("past_key_values.", "present.") for k in self._past]
        if not self._past or "input_ids" not in ins:
            raise BackendError(
                f"{folder / 'model.onnx'} has no KV-cache inputs (past_key_values.*)",
                fix="export with the KV cache: `edgekit quantize SOURCE --to onnx-int8`",
            )
        shp = ins[self._past[0]].shape
        self._kv_heads, self._head_dim = int(shp[1]), int(shp[3])
        self._kv_dtype = np.float16 if "float16" in ins[self._past[0]].type else np.float32
        self._has_pos = "position_ids" in ins
        self._has_mask = "attention_mask" in ins
        self.batched = not isinstance(ins["input_ids"].shape[0], int) or ins["input_ids"].shape[0] != 1
        n_ctx_train = cfg.get("max_position_embeddings")
        n_ctx = n_ctx or min(n_ctx_train or 8192, 8192)
        self._eos = self._end_ids(gen, cfg)
        n_layer = len(self._past) // 2
        mid = card.variant_id if card else folder.name
        self.model_info = ModelInfo(
            id=mid,
            sha256=sha,
            arch=cfg.get("model_type"),
            quant=card.type if card else "onnx",
            size_bytes=size,
            n_layer=n_layer,
            n_embd=cfg.get("hidden_size"),
            n_head_kv=self._kv_heads,
            n_embd_head=self._head_dim,
            kv_bytes_per_token=2.0 * n_layer * self._kv_heads * self._head_dim * np.dtype(self._kv_dtype).itemsize,
            n_ctx_train=n_ctx_train,
        )
        self.info = EngineInfo(
            name=self.name,
            model=mid,
            version=ort.__version__,
            build="cpu",
            threads=threads,
            n_ctx=n_ctx,
            extra={"batched_n": self.batched, "providers": self._sess.get_providers(), "path": str(folder)},
        )
        self.capabilities = Capabilities(  # no json_schema / grammar (the defaults)
            max_n=max_n, batched_n=self.batched, token_count=True, token_input=True, logprobs=True, n_ctx=n_ctx
        )

    def _end_ids(self, gen: dict, cfg: dict) -> set[int]:
        ids: set[int] = set()
        for src in (gen.get("eos_token_id"), cfg.get("eos_token_id"), self.tok.eos_token_id):
            ids.update(src if isinstance(src, list) else [src] if src is not None else [])
        special = set(self.tok.all_special_tokens) | {
            t.content for t in self.tok.added_tokens_decoder.values() if t.special
        }
        ids.update(self.tok.convert_tokens_to_ids(t) for t in END_TOKENS if t in special)
        return {int(i) for i in ids if i is not None and int(i) >= 0}

    # -- text ------------------------------------------------------------------------------
    def _live(self):
        if self._closed or self._sess is None:
            raise UsageError("engine is closed", fix="create a new Runtime/engine; do not use one after close()")
        return self._sess

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return list(self.tok(text, add_special_tokens=add_special)["input_ids"])

    def detokenize(self, tokens: list[int]) -> str:
        return self.tok.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def chat_template(self) -> str | None:
        return self.tok.chat_template

    def prompt_ids(self, prompt: Prompt, options: SamplingOptions) -> list[int]:
        if isinstance(prompt, TokenPrompt):
            return list(prompt.ids)
        messages = chat_messages(prompt, options)
        if not options.chat or not self.tok.chat_template:
            return self.tokenize(plain_text(messages), add_special=True)
        text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        bos = self.tok.bos_token
        add = bool(getattr(self.tok, "add_bos_token", False)) and not (bos and text.startswith(bos))
        return self.tokenize(text, add_special=add)

    def count_tokens(self, prompt: Prompt, options: SamplingOptions) -> int:
        return len(self.prompt_ids(prompt, options))

    def check_fits(self, n_prompt: int, max_tokens: int) -> None:
        need, n_ctx = n_prompt + max_tokens, self.info.n_ctx or 0
        if need > n_ctx:
            raise ContextOverflow(
                f"prompt ({n_prompt} tokens) + a {max_tokens}-token budget = {need} tokens exceeds "
                f"the context of {n_ctx}",
                fix=f"lower --max-tokens, shorten the prompt, or raise --ctx (>= {need})",
            )

    # -- model -----------------------------------------------------------------------------
    def _run(self, ids: np.ndarray, past: list[np.ndarray], start: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """One forward of ``ids`` (rows x k) after ``start`` cached positions: (last logits, presents)."""
        rows, k = ids.shape
        feed = {"input_ids": ids.astype(np.int64)}
        if self._has_mask:
            feed["attention_mask"] = np.ones((rows, start + k), dtype=np.int64)
        if self._has_pos:
            feed["position_ids"] = np.tile(np.arange(start, start + k, dtype=np.int64), (rows, 1))
        feed.update(zip(self._past, past))
        out = self._live().run(None, feed)
        return out[0], out[1:]

    def _empty_past(self) -> list[np.ndarray]:
        return [np.zeros((1, self._kv_heads, 0, self._head_dim), dtype=self._kv_dtype) for _ in self._past]

    # -- generation ------------------------------------------------------------------------
    def generate(self, prompt: Prompt, options: SamplingOptions, cancel: Cancel | None = None) -> Iterator[Event]:
        self._live()
        self.check(options)
        ids = self.prompt_ids(prompt, options)
        if not ids:
            raise UsageError("empty prompt", fix="pass a non-empty prompt")
        self.check_fits(len(ids), options.max_tokens)
        return self._stream(ids, options, cancel)

    def _stream(self, prompt: list[int], o: SamplingOptions, cancel: Cancel | None) -> Iterator[Event]:
        n, P = o.n, len(prompt)
        seeds = np.random.SeedSequence(o.seed).spawn(n)
        rngs = [np.random.default_rng(s) for s in seeds]
        past = self._empty_past()
        for start in range(0, P, PREFILL_CHUNK):  # chunks bound the logits buffer (chunk x vocab floats)
            if cancel is not None and cancel():
                for s in range(n):
                    yield Event("finish", seq=s, text="", reason="cancelled", tokens=0)
                return
            logits, past = self._run(np.asarray([prompt[start : start + PREFILL_CHUNK]]), past, start)
        yield Event("prefill", prompt_tokens=P)
        last = logits[:, -1, :]
        groups = [list(range(n))] if self.batched else [[s] for s in range(n)]
        for g in groups:
            rows = len(g)
            yield from self._steps(
                g, np.repeat(last, rows, axis=0), [np.repeat(p, rows, axis=0) for p in past], P, o, rngs, cancel
            )

    def _steps(
        self,
        seqs: list[int],
        logits: np.ndarray,
        past: list[np.ndarray],
        P: int,
        o: SamplingOptions,
        rngs: list,
        cancel: Cancel | None,
    ) -> Iterator[Event]:
        live = list(seqs)  # live[j] is the sample in batch row j
        toks_so_far: dict[int, list[int]] = {s: [] for s in seqs}
        texts = {s: "" for s in seqs}
        max_stop = max((len(x) for x in o.stop), default=0)
        step = 0
        while live:
            toks = np.array([sample(logits[j], o, rngs[s]) for j, s in enumerate(live)], dtype=np.int64)
            lps = log_softmax_at(logits.astype(np.float64), toks) if o.logprobs else None
            keep: list[int] = []
            for j, s in enumerate(live):
                t = int(toks[j])
                if not o.ignore_eos and t in self._eos:
                    yield Event(
                        "finish", seq=s, text=self.detokenize(toks_so_far[s]), reason="stop", tokens=len(toks_so_far[s])
                    )
                    continue
                toks_so_far[s].append(t)
                full = self.detokenize(toks_so_far[s])
                piece = "" if full.endswith("\ufffd") or not full.startswith(texts[s]) else full[len(texts[s]) :]
                if piece:
                    texts[s] = full
                yield Event("token", seq=s, token=t, text=piece, logprob=float(lps[j]) if lps is not None else None)
                count = len(toks_so_far[s])
                if max_stop:
                    start = max(0, len(full) - len(piece) - max_stop - 8)  # the first occurrence: see llamacpp_core
                    at = [i for i in (full.find(x, start) for x in o.stop) if i >= 0]
                    if at:
                        cut = min(at)
                        yield Event("finish", seq=s, text=full[:cut], reason="stop", tokens=count)
                        continue
                if count >= o.max_tokens:
                    yield Event("finish", seq=s, text=full, reason="budget", tokens=count)
                    continue
                keep.append(j)
            if not keep:
                break
            if cancel is not None and cancel():
                for j in keep:
                    s = live[j]
                    yield Event(
                        "finish",
                        seq=s,
                        text=self.detokenize(toks_so_far[s]),
                        reason="cancelled",
                        tokens=len(toks_so_far[s]),
                    )
                break
            if len(keep) < len(live):  # finished rows leave the batch
                past = [p[keep] for p in past]
            live = [live[j] for j in keep]
            logits, past = self._run(toks[keep][:, None], past, P + step)
            logits = logits[:, -1, :]
            step += 1

    def score(self, prompt_ids: list[int], continuation_ids: list[int]) -> list[float]:
        """Raw-model logprobs of each ``continuation_ids`` token after ``prompt_ids`` (teacher-forced, one forward)."""
        if not prompt_ids or not continuation_ids:
            raise UsageError("score needs a non-empty prompt and continuation", fix="pass token ids for both")
        self.check_fits(len(prompt_ids), len(continuation_ids))
        seq = list(prompt_ids) + list(continuation_ids)
        rows, k = 1, len(seq)
        feed = {"input_ids": np.asarray([seq], dtype=np.int64)}
        if self._has_mask:
            feed["attention_mask"] = np.ones((rows, k), dtype=np.int64)
        if self._has_pos:
            feed["position_ids"] = np.arange(k, dtype=np.int64)[None]
        feed.update(zip(self._past, self._empty_past()))
        logits = self._live().run(["logits"], feed)[0][0]
        at = logits[len(prompt_ids) - 1 : len(seq) - 1].astype(np.float64)
        return [float(x) for x in log_softmax_at(at, np.asarray(continuation_ids))]

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._sess = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _check_int8_range(card, folder: Path, procfs_root: str | Path = "/proc") -> None:
    """Refuse a dynamically quantized variant whose weights use the full int8 range on a CPU whose
    onnxruntime int8 kernels overflow on them (:func:`edgekit.host.cpu.int8_u8s8_saturates`): it would
    load and answer, with garbage. Variants made by this edgekit record ``reduce_range: true``."""
    if card is None or card.type != "onnx-int8" or card.params.get("reduce_range"):
        return
    if int8_u8s8_saturates(isa_flags(procfs_root)):
        raise BackendError(
            f"ONNX variant {card.variant_id} ({folder}) has int8 weights in the full 8-bit range, which onnxruntime's "
            "int8 kernels on this CPU (x86 without VNNI) overflow: its output here would be garbage",
            fix=f"remake it with 7-bit weights: `edgekit quantize {card.source.model_id or card.source.path} "
            "--to onnx-int8 --force`",
        )


def _layer_key(name: str) -> tuple[int, int]:
    parts = name.split(".")
    return int(parts[1]), 0 if parts[2] == "key" else 1


def _default_threads() -> int:
    try:
        import psutil

        return max(1, psutil.cpu_count(logical=False) or os.cpu_count() or 1)
    except Exception:
        return max(1, os.cpu_count() or 1)
