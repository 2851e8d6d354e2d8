"""`evaluate()`: what `edgekit eval` calls -- build the sampler (local runtime or an
OpenAI-compatible server) and run the resumable evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from edgekit.errors import UsageError
from edgekit.evaluate.table import AccuracyTable


def default_output(task: str, model: str, template: Optional[str], temperature: float) -> Path:
    safe = lambda s: "".join(c if c.isalnum() or c in ".-_" else "_" for c in s)  # noqa: E731
    return Path("tables") / f"{safe(task)}--{safe(Path(model).stem if model.endswith('.gguf') else model)}--{template or 'default'}--t{temperature:g}.json"


def evaluate(task: str, model: str, *, backend: str = "llama.cpp", base_url: Optional[str] = None,
             api_key: Optional[str] = None, out_path: Optional[str | Path] = None, n_samples: int = 8,
             temperature: float = 0.8, top_p: float = 0.95, seed: int = 0, max_tokens: int = 256,
             limit: Optional[int] = None, split: Optional[str] = None, template: Optional[str] = None,
             threads: Optional[int] = None, resume: bool = True, progress=None, runtime=None) -> AccuracyTable:
    from edgekit.evaluate.runner import run_eval
    from edgekit.evaluate.tasks import load_task
    from edgekit.runtime.aggregate import get_extractor

    t = load_task(task, template=template, split=split, limit=limit)  # bad task -> clear error before loading a model
    out = Path(out_path) if out_path else default_output(task, model, template, temperature)
    if backend == "openai":
        if not base_url:
            raise UsageError("--backend openai needs --base-url", fix="pass --base-url http://host:port/v1")
        from edgekit.evaluate.openai_backend import OpenAIChatSampler

        sampler = OpenAIChatSampler(base_url, model, api_key=api_key)
        try:
            return run_eval(t, sampler, model_id=model, out_path=out, n_samples=n_samples, temperature=temperature,
                            top_p=top_p, seed=seed, max_tokens=max_tokens, backend=sampler.backend_label,
                            resume=resume, progress=progress, get_extractor=get_extractor)
        finally:
            sampler.close()
    if backend not in ("llama.cpp", "llamacpp", "local"):
        raise UsageError(f"unknown backend {backend!r}", fix="use --backend llama.cpp or --backend openai")
    from edgekit.runtime import Runtime

    own = runtime is None
    rt = runtime or Runtime(model, threads=threads, n_ctx=max(4096, 1024 + n_samples * max_tokens), max_n=max(n_samples, 1))
    try:
        return run_eval(t, rt, model_id=rt.model_id, out_path=out, n_samples=n_samples, temperature=temperature,
                        top_p=top_p, seed=seed, max_tokens=max_tokens, sha256=rt.model_info.sha256,
                        quant=rt.model_info.quant, backend="llama.cpp", resume=resume, progress=progress,
                        get_extractor=get_extractor)
    finally:
        if own:
            rt.close()
