"""`edgekit serve`: load once, bind (loopback by default), serve until SIGTERM, drain, exit 0.

Order of failure: a plan that does not load, bad flags or a port that cannot be bound fail before
the model loads, each as one :class:`EdgekitError` line (exit 2 from the CLI). SIGTERM (or Ctrl-C)
drains: requests already admitted finish, new ones get 503 with Retry-After, then the process
exits 0; a second signal stops at once. Prompts and answers are logged only with ``log_prompts``.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from edgekit import engines
from edgekit.errors import UsageError
from edgekit.runtime import Runtime
from edgekit.runtime.query import Query, build_offload, check_plan_model
from edgekit.schemas.options import SamplingOptions
from edgekit.schemas.plan import load_plan
from edgekit.serve.live import LiveSettings
from edgekit.serve.service import Limits, Service

log = logging.getLogger("edgekit.serve")


@dataclass
class ServeConfig:
    model: str | None = None  # default: the plan's model, else the catalogue default
    plan: str | None = None
    engine: str = "llama.cpp"
    engine_options: dict = field(default_factory=dict)  # e.g. base_url for the openai engine
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    log_prompts: bool = False
    limits: Limits = field(default_factory=Limits)
    threads: int | None = None
    n_ctx: int = 4096
    max_seqs: int = (
        8  # llama.cpp: rows decoded together across requests (continuous batching); 1 = one request at a time
    )
    cloud_url: str | None = None
    cloud_model: str | None = None
    offload: str | None = None
    drain_timeout_s: float = 120.0
    prefix_cache: int | None = None  # llama.cpp: KV cells kept for recent prompt prefixes (None: half the context)
    system_prompt: str | None = None  # pinned in the prefix cache at start-up (--system-prompt-file)
    live: LiveSettings = field(default_factory=LiveSettings.from_env)  # live latency model, --replan


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_serve_deps() -> None:
    missing = []
    for mod in ("fastapi", "uvicorn", "prometheus_client"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise UsageError(f"edgekit serve needs {', '.join(missing)}", fix="pip install 'edgekit[serve]'")


def bind(host: str, port: int) -> socket.socket:
    """Bind before the model loads, so a taken port fails fast (and --port 0 picks a free one)."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise UsageError(
            f"cannot resolve --host {host!r}: {e.strerror}", fix="pass an IP address, e.g. 127.0.0.1"
        ) from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise UsageError(
            f"cannot listen on {host}:{port}: {e.strerror or e}",
            fix="choose another --port, or stop the process that holds it",
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def load(cfg: ServeConfig, progress: Any = None) -> Service:
    """The plan (if any), the engine and the warm Runtime, wrapped in a Service."""
    plan = load_plan(cfg.plan) if cfg.plan else None
    lim = cfg.limits
    base = SamplingOptions()
    model = cfg.model
    if plan is not None:
        if model is not None and model not in (plan.chosen.model_id, plan.planned_model()):
            raise UsageError(
                f"--plan runs {plan.chosen.model_id}, but -m names {model}",
                fix="drop -m (the plan names its model) or re-plan for that model",
            )
        model = plan.planned_model()
        note = check_plan_model(plan, model)
        if note:
            log.warning("%s", note)
        base = plan.chosen.options
        if base.aggregate == "first_verified":
            raise UsageError(
                "the plan aggregates with first_verified, which needs a verifier for every request",
                fix="re-plan with majority voting, or use the library with a verifier",
            )
        lim.max_n = max(lim.max_n, base.n)
        if base.max_tokens > lim.max_tokens_cap:
            log.warning("raising --max-tokens-cap to the plan's budget of %d", base.max_tokens)
            lim.max_tokens_cap = base.max_tokens
    if model is None:
        from edgekit.models.catalog import DEFAULT_MODEL

        model = DEFAULT_MODEL
    off = build_offload(
        Query(
            prompt="",
            model=model,
            plan=cfg.plan,
            cloud_url=cfg.cloud_url,
            cloud_model=cfg.cloud_model,
            offload=cfg.offload,
        ),
        plan,
        base,
    )
    opts = {"threads": cfg.threads, "n_ctx": cfg.n_ctx, "max_n": lim.max_n, "progress": progress, **cfg.engine_options}
    if engines.canonical(cfg.engine) == "llama.cpp":
        opts["max_seqs"] = cfg.max_seqs
        opts["prefix_cache"] = cfg.prefix_cache if cfg.prefix_cache is not None else min(cfg.n_ctx // 2, 8192)
    elif cfg.system_prompt is not None:
        raise UsageError(
            "--system-prompt-file pins KV cells: the llama.cpp engine only", fix="drop it, or use llama.cpp"
        )
    if cfg.system_prompt is not None and cfg.max_seqs < 2:
        raise UsageError("--system-prompt-file needs continuous batching", fix="pass --max-seqs 2 or more")
    engine = engines.create(cfg.engine, model, **{k: v for k, v in opts.items() if v is not None})
    if cfg.system_prompt is not None:
        try:
            t0 = time.perf_counter()
            n = engine.pin_prefix(cfg.system_prompt, base)  # type: ignore[attr-defined]
            log.info(
                "system prompt pinned in the prefix cache: %d tokens prefilled in %.2f s", n, time.perf_counter() - t0
            )
        except BaseException:
            engine.close()
            raise
    rt = Runtime(engine, offload=off)
    return Service(
        rt, limits=lim, plan=plan, plan_path=cfg.plan, base_options=base, log_prompts=cfg.log_prompts, live=cfg.live
    )


def _server_class() -> Any:
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn, but the first SIGTERM/SIGINT drains (503 to new requests) instead of closing the socket."""

        def __init__(self, config: Any, svc: Service, drain_timeout_s: float):
            super().__init__(config)
            self.svc = svc
            self.drain_timeout_s = drain_timeout_s
            self.drain_deadline: float | None = None

        def handle_exit(self, sig: int, frame: Any) -> None:  # not re-raised after shutdown: exit 0
            if self.svc.draining:
                log.warning("second signal: stopping now")
                self.should_exit = self.force_exit = True
                return
            self.svc.draining = True
            self.drain_deadline = time.monotonic() + self.drain_timeout_s
            log.info("signal %d: draining %d request(s) in flight; new requests get 503", sig, self.svc.admitted)

        async def on_tick(self, counter: int) -> bool:
            if self.svc.draining and not self.should_exit:
                if self.svc.idle:
                    self.should_exit = True
                elif self.drain_deadline is not None and time.monotonic() > self.drain_deadline:
                    log.warning(
                        "drain timeout (%.0f s): stopping with %d request(s) in flight",
                        self.drain_timeout_s,
                        self.svc.admitted,
                    )
                    self.should_exit = True
            return await super().on_tick(counter)

    return DrainingServer


def prepare(cfg: ServeConfig, progress: Any = None) -> tuple[socket.socket, Service]:
    """Everything that can fail with a one-line reason: deps, flags, plan, port, model."""
    check_serve_deps()
    if cfg.limits.max_queue < 0:
        raise UsageError(f"--max-queue must be >= 0, got {cfg.limits.max_queue}", fix="pass --max-queue 16")
    if not is_loopback(cfg.host) and not cfg.api_key:
        print(
            f"warning: listening on {cfg.host} without an API key: anyone who can reach this port can use the "
            "model (set EDGEKIT_API_KEY or --api-key)",
            file=sys.stderr,
        )
    if cfg.plan:
        load_plan(cfg.plan)  # fail fast, before binding
    sock = bind(cfg.host, cfg.port)
    try:
        return sock, load(cfg, progress)
    except BaseException:
        sock.close()
        raise


def run(cfg: ServeConfig, sock: socket.socket, svc: Service) -> int:
    """Serve until a signal, drain, free the model; 0 on a clean stop."""
    try:
        import uvicorn

        from edgekit.serve.app import build_app

        app = build_app(svc, api_key=cfg.api_key)
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=10,
            timeout_keep_alive=5,
            lifespan="off",
        )
        server = _server_class()(config, svc, cfg.drain_timeout_s)
        if hasattr(signal, "SIGHUP"):  # re-plan at the corrected speed, off the event loop
            signal.signal(
                signal.SIGHUP,
                lambda sig, frame: threading.Thread(
                    target=svc.live.replan, args=("sighup",), name="edgekit-replan", daemon=True
                ).start(),
            )
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(
            f"edgekit serve: {svc.model_id} on http://{shown}:{port}/v1 (queue {cfg.limits.max_queue}, "
            f"{'batching ' + str(svc.slots) + ' rows' if svc.slots > 1 else 'one request at a time'}, "
            f"auth {'on' if cfg.api_key else 'off'}, load {svc.rt.load_s:.2f} s)",
            file=sys.stderr,
            flush=True,
        )
        server.run(sockets=[sock])
    finally:
        sock.close()
        svc.rt.close()  # a request still running (drain timeout) is cancelled at its next decode step
        svc.close()
    print("edgekit serve: stopped", file=sys.stderr, flush=True)
    return 0


def serve(cfg: ServeConfig, progress: Any = None) -> int:
    sock, svc = prepare(cfg, progress)
    return run(cfg, sock, svc)
