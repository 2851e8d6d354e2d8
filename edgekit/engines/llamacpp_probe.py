"""Which llama.cpp kernel configuration is safe -- and fastest -- on this CPU, for this model?

A native llama.cpp build can crash the process that loads it: on Intel Sapphire Rapids virtual
machines the AMX kernels (an "extra buffer type", like the repacked Q4_0 weights) die with
SIGSEGV at ``ldtilecfg``, in any thread that decodes. A crash cannot be caught in-process, so
before the first load of a model in a process, for a key not seen before -- CPU model and flags,
llama.cpp version and compiled features, the model's tensor types, GPU offload -- a short probe
runs in a **child process** per configuration: it loads the model, prefills, decodes on the main
thread and a batch of rows on a second thread (as the daemon's scheduler does), and reports its
decode speed. A child killed by a signal or hung past the timeout is a verdict, not a crash of
the caller. Verdicts are cached in ``<EDGEKIT_HOME>/probe/`` (``EDGEKIT_PROBE_DIR`` moves it);
later loads cost a file read.

Configurations, fastest-first by default: ``default`` (llama.cpp's extra buffer types: AMX and
repacked weights) and ``plain`` (``use_extra_bufts = False``, llama.cpp's ``--no-repack``). The
first that survives is used; where both survive the faster wins unless within the probe's
noise (10 %). ``EDGEKIT_EXTRA_BUFFERS=auto|on|off`` forces one (it is still probed: a forced
configuration that crashes is refused, never loaded in the caller).

Run as ``python -m edgekit.engines.llamacpp_probe`` this module is the child.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from edgekit.errors import BackendError
from edgekit.host.cpu import cpu_model, isa_flags
from edgekit.host.kernels import CONFIGS, MODES, PROBE_VERSION, probe_dir, requested_mode

if TYPE_CHECKING:
    from edgekit.models.gguf import GGUFInfo

log = logging.getLogger("edgekit.probe")
MARGIN = 1.10  # a later configuration must be this much faster to beat an earlier one
REBUILD = (
    'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON '
    '-DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON" pip install --force-reinstall --no-cache-dir --no-binary '
    'llama-cpp-python "llama-cpp-python>=0.3.36,<0.4"'
)


@dataclass
class Verdict:
    config: str
    ok: bool
    how: str  # "ok", "killed by SIGSEGV", "hung: no answer in 60 s", "exit 1: ..."
    decode_tok_s: float | None = None  # n=1 on one thread, median of 12 steps, measured in the probe
    batch_tok_s: float | None = None  # 4 rows on a second thread
    seconds: float = 0.0

    @property
    def crashed(self) -> bool:
        """Killed by a signal or hung: unsafe to load in the caller. A clean failure (the model does
        not load: unsupported architecture, corrupt tensors) is not a kernel verdict."""
        return self.how.startswith(("killed", "hung"))


@dataclass
class Choice:
    config: str
    use_extra_bufts: bool
    source: str  # "probe", "cache", "memo"
    mode: str  # auto / on / off
    verdicts: list[Verdict] = field(default_factory=list)
    key: dict = field(default_factory=dict)

    def describe(self) -> str:
        v = next((x for x in self.verdicts if x.config == self.config), None)
        speed = f", {v.decode_tok_s:.1f} tok/s in the probe" if v and v.decode_tok_s else ""
        return f"{self.config} ({'extra buffer types on' if self.use_extra_bufts else 'extra buffer types off'}{speed})"

    def as_dict(self) -> dict:
        return {
            "config": self.config,
            "use_extra_bufts": self.use_extra_bufts,
            "source": self.source,
            "mode": self.mode,
            "verdicts": [asdict(v) for v in self.verdicts],
            "key": self.key,
        }


def probe_key(ll, tensor_types: dict, gpu_layers: int, cpu_model: str | None) -> dict:
    info = ll.llama_print_system_info()
    return {
        "probe": PROBE_VERSION,
        "cpu": cpu_model or "?",
        "flags": sorted(k for k, v in isa_flags().items() if v),
        "llama_cpp_python": getattr(ll, "__version__", "?"),
        "system_info": (info.decode(errors="replace") if isinstance(info, bytes) else str(info)).strip(),
        "tensor_types": sorted(int(t) for t in tensor_types),
        "gpu": bool(gpu_layers),
    }


def _key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def _load_cache(path: Path, key: dict) -> dict[str, Verdict]:
    try:
        doc = json.loads(path.read_text())
        if doc.get("version") != PROBE_VERSION or doc.get("key") != key:
            raise ValueError("another version or key")
        return {name: Verdict(**v) for name, v in doc["verdicts"].items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        log.debug("probe cache %s ignored (%s); it will be rewritten", path, e)
        return {}


def _save_cache(path: Path, key: dict, verdicts: dict[str, Verdict]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(
            json.dumps(
                {"version": PROBE_VERSION, "key": key, "verdicts": {n: asdict(v) for n, v in verdicts.items()}},
                indent=1,
            )
        )
        os.replace(tmp, path)
    except OSError as e:  # a read-only home: probe again next time, still safe
        log.debug("probe cache %s not written: %s", path, e)


def timeout_s(model_bytes: int) -> float:
    if os.environ.get("EDGEKIT_PROBE_TIMEOUT"):
        return float(os.environ["EDGEKIT_PROBE_TIMEOUT"])
    return max(60.0, 30.0 + 30.0 * model_bytes / 1e9)  # loading dominates: ~30 s per GB on a slow disk


LLAMA_FIRST = "import llama_cpp, runpy; runpy.run_module('edgekit.engines.llamacpp_probe', run_name='__main__')"


def run_child(
    model: str, config: str, *, threads: int, gpu_layers: int, timeout: float, llama_first: bool = False
) -> Verdict:
    """Probe one configuration in a child process; every outcome is a verdict. ``llama_first``: the
    child loads llama.cpp's libraries before numpy (a diagnosis: a C++ runtime conflict, not a kernel)."""
    head = ["-c", LLAMA_FIRST] if llama_first else ["-m", "edgekit.engines.llamacpp_probe"]
    cmd = [sys.executable, *head, model, config, str(threads), str(gpu_layers)]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:  # subprocess.run kills the child on timeout
        return Verdict(config, False, f"hung: no answer in {timeout:.0f} s", seconds=time.perf_counter() - t0)
    dt = time.perf_counter() - t0
    done = [x for x in (p.stdout or "").strip().splitlines() if x.startswith("{")]
    if p.returncode < 0 and done:  # the probe completed; the child faulted while exiting
        r = json.loads(done[-1])
        return Verdict(
            config,
            True,
            f"ok (then killed by signal {-p.returncode} at exit)",
            decode_tok_s=r.get("decode_tok_s"),
            batch_tok_s=r.get("batch_tok_s"),
            seconds=dt,
        )
    if p.returncode < 0:
        try:
            name = signal.Signals(-p.returncode).name
        except ValueError:
            name = f"signal {-p.returncode}"
        return Verdict(config, False, f"killed by {name}", seconds=dt)
    last = (p.stdout.strip().splitlines() or [""])[-1]
    if p.returncode != 0 or not last.startswith("{"):
        err = " ".join((p.stderr or p.stdout).strip().splitlines()[-1:])[:200]
        return Verdict(config, False, f"exit {p.returncode}: {err or 'no output'}", seconds=dt)
    r = json.loads(last)
    return Verdict(config, True, "ok", decode_tok_s=r.get("decode_tok_s"), batch_tok_s=r.get("batch_tok_s"), seconds=dt)


_memo: dict[str, Choice] = {}


def choose(
    model: str, *, model_bytes: int, tensor_types: dict, gpu_layers: int, threads: int, cpu_model: str | None, ll
) -> Choice:
    """The kernel configuration to load ``model`` with (probing in children where not cached)."""
    mode = requested_mode()
    key = probe_key(ll, tensor_types, gpu_layers, cpu_model)
    if os.environ.get("EDGEKIT_PROBE", "").strip().lower() == "off":  # the user vouches for the configuration
        cfg = MODES[mode] or "default"
        return Choice(cfg, CONFIGS[cfg], "unprobed (EDGEKIT_PROBE=off)", mode, [], key)
    h = _key_hash(key)
    if (h, mode) in _memo:
        c = _memo[(h, mode)]
        return Choice(c.config, c.use_extra_bufts, "memo", mode, c.verdicts, key)
    path = probe_dir() / f"{h}.json"
    verdicts = _load_cache(path, key)
    wanted = list(CONFIGS) if MODES[mode] is None else [MODES[mode]]
    missing = [c for c in wanted if c not in verdicts]
    for c in missing:
        log.info("probing llama.cpp kernels %r for this CPU and model in a child process", c)
        verdicts[c] = run_child(model, c, threads=threads, gpu_layers=gpu_layers, timeout=timeout_s(model_bytes))
    if missing:  # a clean failure is about this file, not the kernels: not cached under a key other files share
        _save_cache(path, key, {c: v for c, v in verdicts.items() if v.ok or v.crashed})
    ordered = [verdicts[c] for c in wanted]
    ok = [v for v in ordered if v.ok]
    safe = [v for v in ordered if not v.ok and not v.crashed]
    if not ok and safe:  # nothing crashed; the load itself fails: the caller's load gives its own error
        return Choice(
            safe[0].config,
            CONFIGS[safe[0].config],
            "probe (the model did not load: " + safe[0].how + ")",
            mode,
            ordered,
            key,
        )
    if not ok:
        what = "; ".join(f"{v.config}: {v.how}" for v in ordered)
        if mode != "auto":
            raise BackendError(
                f"EDGEKIT_EXTRA_BUFFERS={mode} crashes in the probe ({what}); not loaded",
                fix="unset EDGEKIT_EXTRA_BUFFERS (auto picks a configuration that works)",
            )
        if run_child(
            model, "plain", threads=threads, gpu_layers=gpu_layers, timeout=timeout_s(model_bytes), llama_first=True
        ).ok:
            # seen on an H200 host: a CUDA build made with another g++ than the system's crashes in its tokenizer
            # whenever numpy's libraries were loaded first -- not a kernel choice
            raise BackendError(
                f"llama.cpp crashes here only when numpy's libraries are loaded before it ({what}; the same "
                "configuration survives when llama_cpp is imported first): a C++ runtime (libstdc++) "
                "conflict of this llama-cpp-python build, not a kernel choice",
                fix="preload the system C++ runtime: export LD_PRELOAD=$(g++ -print-file-name=libstdc++.so.6), "
                "or rebuild llama-cpp-python with the system compiler: CC=/usr/bin/gcc CXX=/usr/bin/g++ "
                "pip install --force-reinstall --no-cache-dir --no-binary llama-cpp-python "
                "'llama-cpp-python>=0.3.36,<0.4'",
            )
        raise BackendError(
            f"every llama.cpp kernel configuration crashed on this CPU ({what})",
            fix=f"rebuild llama-cpp-python without the failing kernels: {REBUILD}",
        )
    best = ok[0]
    for v in ok[1:]:
        if (v.decode_tok_s or 0) > MARGIN * (best.decode_tok_s or 0):
            best = v
    choice = Choice(best.config, CONFIGS[best.config], "probe" if missing else "cache", mode, ordered, key)
    _memo[(h, mode)] = choice
    return choice


def choose_for(path: str, *, threads: int = 1, gpu_layers: int = 0, info: GGUFInfo | None = None) -> Choice:
    """:func:`choose` for a GGUF file: what any llama.cpp user in this process (a bare ``llama_cpp.Llama``,
    ``python -m llama_cpp.server``, edgekit's engine) should set ``use_extra_bufts`` to on this CPU.
    info: the file's checked header when the caller has read it already."""
    from edgekit.engines.llamacpp_core import ll  # applies the thread policy first
    from edgekit.models.gguf import check_gguf

    info = check_gguf(path) if info is None else info
    return choose(
        path,
        model_bytes=info.file_size,
        tensor_types=info.extra.get("tensor_types", {}),
        gpu_layers=gpu_layers,
        threads=threads,
        cpu_model=cpu_model(),
        ll=ll,
    )


# -- the child -----------------------------------------------------------------------------------
def _fault(config: str, numpy_first: bool) -> None:
    """Test hook: EDGEKIT_PROBE_FAULT="segv:plain,hang:default" makes this child really die by a
    signal (reads address 0) or hang, for that configuration; "numpyfirst:*" dies only when numpy
    was loaded before llama_cpp (the C++ runtime conflict seen on an H200 host)."""
    for item in (os.environ.get("EDGEKIT_PROBE_FAULT") or "").split(","):
        if item.startswith("numpyfirst:") and numpy_first:
            import ctypes

            ctypes.string_at(0)
        kind, _, cfg = item.partition(":")
        if cfg in (config, "*"):
            if kind == "segv":
                import ctypes

                ctypes.string_at(0)
            if kind == "hang":
                time.sleep(10_000)


def _child(model: str, config: str, threads: int, gpu_layers: int) -> dict:
    numpy_first = (
        "numpy" in sys.modules and "llama_cpp" not in sys.modules
    )  # numpy's libraries loaded before llama.cpp's
    from edgekit.host.threads import apply_before_load

    apply_before_load()
    import threading

    import llama_cpp as ll
    import numpy as np

    quiet = ll.llama_log_callback(lambda *a: None)  # kept referenced: llama.cpp calls it during the load
    ll.llama_log_set(quiet, None)
    ll.llama_backend_init()
    mp = ll.llama_model_default_params()
    mp.n_gpu_layers = gpu_layers
    mp.use_extra_bufts = CONFIGS[config]
    m = ll.llama_model_load_from_file(model.encode(), mp)
    if not m:
        raise SystemExit("llama.cpp could not load the model")
    cp = ll.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max, cp.kv_unified = 512, 128, 128, 4, True
    cp.n_threads = cp.n_threads_batch = threads
    ctx = ll.llama_init_from_model(m, cp)
    if not ctx:
        raise SystemExit("llama.cpp could not create a context")
    vocab = ll.llama_model_get_vocab(m)
    n_vocab = ll.llama_vocab_n_tokens(vocab)
    rng = np.random.default_rng(0)
    prompt = [int(t) for t in rng.integers(100, min(n_vocab, 20000), 48)]
    batch = ll.llama_batch_init(128, 0, 4)

    def decode(tokens, pos, seqs) -> None:
        batch.n_tokens = len(tokens)
        for i, (t, p, s) in enumerate(zip(tokens, pos, seqs)):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = t, p, 1, 1
            batch.seq_id[i][0] = s
        if ll.llama_decode(ctx, batch) != 0:
            raise SystemExit("llama_decode failed")

    _fault(config, numpy_first)
    decode(prompt, range(len(prompt)), [0] * len(prompt))  # prefill: matrix-matrix kernels
    steps = []
    ll.llama_set_n_threads(ctx, 1, 1)  # timed on one thread: a fair comparison even when other work shares the CPU
    for j in range(12):  # n=1 decode on the main thread: matrix-vector kernels
        t0 = time.perf_counter()
        decode([prompt[j]], [len(prompt) + j], [0])
        steps.append(time.perf_counter() - t0)
    ll.llama_set_n_threads(ctx, threads, threads)
    mem = ll.llama_get_memory(ctx)
    for s in range(1, 4):
        ll.llama_memory_seq_cp(mem, 0, s, -1, -1)
    out: dict = {}

    def rows() -> None:  # 4 rows per step on another thread, as the daemon's scheduler decodes
        t0 = time.perf_counter()
        for j in range(6):
            decode([prompt[j]] * 4, [len(prompt) + 12 + j] * 4, [0, 1, 2, 3])
        out["batch_s"] = time.perf_counter() - t0

    th = threading.Thread(target=rows)
    th.start()
    th.join()
    ll.llama_batch_free(batch)
    ll.llama_free(ctx)
    ll.llama_model_free(m)
    steps.sort()
    return {"decode_tok_s": round(1.0 / steps[len(steps) // 2], 2), "batch_tok_s": round(24 / out["batch_s"], 2)}


if __name__ == "__main__":
    _model, _config, _threads, _gpu = sys.argv[1:5]
    print(json.dumps(_child(_model, _config, int(_threads), int(_gpu))), flush=True)
    os._exit(0)  # the verdict is in; skip native teardown (CUDA's static destructors can fault at exit)
