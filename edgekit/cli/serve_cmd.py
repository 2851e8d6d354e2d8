"""`edgekit serve`: the model (or a plan) behind an OpenAI-compatible HTTP API on this device."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer

from edgekit.cli.options import CloudModel, CloudUrl, Engine, Model, Offload, Priority, Threads
from edgekit.cli.output import PullProgress
from edgekit.host.threads import set_priority
from edgekit.schemas.options import SamplingOptions


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        model: Model = None,
        plan: str | None = typer.Option(
            None, "--plan", help="plan file from `edgekit plan`: model, prompt, sampling, latency target, offload"
        ),
        host: str = typer.Option(
            "127.0.0.1", "--host", help="address to bind; anything but loopback exposes the model to the network"
        ),
        port: int = typer.Option(8080, "--port", help="TCP port (0: any free port)"),
        api_key: str | None = typer.Option(
            None,
            "--api-key",
            envvar="EDGEKIT_API_KEY",
            show_envvar=True,
            help="require 'Authorization: Bearer <key>' on every request (prefer the env var)",
        ),
        max_queue: int = typer.Option(
            16, "--max-queue", help="requests that may wait behind the one being generated; more get 503 + Retry-After"
        ),
        max_n: int = typer.Option(8, "--max-n", help="most samples per request (decoded in one batch)"),
        max_seqs: int = typer.Option(
            8,
            "--max-seqs",
            help="llama.cpp: rows decoded together across concurrent requests "
            "(continuous batching; a request takes n rows, at least --max-n in all); 1: one request at a time",
        ),
        prefix_cache: int | None = typer.Option(
            None,
            "--prefix-cache",
            help="llama.cpp: KV cells kept for recent prompts' prefixes, reused by requests that start the same "
            "way; 0: off [default: half of --ctx, at most 8192]",
        ),
        system_prompt_file: str | None = typer.Option(
            None,
            "--system-prompt-file",
            help="pin this system prompt's KV cells in the prefix cache at start-up (requests with this system "
            "message then prefill only their own part)",
        ),
        max_tokens_cap: int = typer.Option(1024, "--max-tokens-cap", help="largest max_tokens a request may ask for"),
        max_prompt_tokens: int = typer.Option(2048, "--max-prompt-tokens", help="longest prompt, in tokens"),
        max_body_bytes: int = typer.Option(1 << 20, "--max-body-bytes", help="largest request body (413 above)"),
        deadline: float | None = typer.Option(
            None,
            "--deadline",
            help="default per-request deadline in seconds [default: the plan's latency target, else none]",
        ),
        stop_rule: str | None = typer.Option(
            None,
            "--stop-rule",
            help="default stopping rule of a request's vote: none | decided | beta:<c> | adaptive:<n0>,<n_max> "
            "[default: the plan's, else none]",
        ),
        ctx: int = typer.Option(
            4096,
            "--ctx",
            help="context size in tokens (KV cells), shared by every request in flight: "
            "a request waits until its prompt + n x max_tokens fit",
        ),
        threads: Threads = None,
        priority: Priority = "normal",
        engine: Engine = "llama.cpp",
        base_url: str | None = typer.Option(None, "--base-url", help="openai engine: the upstream server"),
        cloud_url: CloudUrl = None,
        cloud_model: CloudModel = None,
        offload: Offload = None,
        log_prompts: bool = typer.Option(
            False, "--log-prompts", help="log prompts and answers (off: only sizes, timings, sources)"
        ),
        drain_timeout: float = typer.Option(
            120.0, "--drain-timeout", help="seconds SIGTERM waits for requests in flight"
        ),
        replan: bool = typer.Option(
            False,
            "--replan",
            help=(
                "with --plan: re-plan automatically when the live-corrected latency of the configuration in force "
                "exceeds the target (SIGHUP and POST /admin/replan re-plan on demand)"
            ),
        ),
        replan_margin: float = typer.Option(
            0.2, "--replan-margin", help="--replan acts when the corrected latency is above target x (1 + margin)"
        ),
        replan_after: int = typer.Option(5, "--replan-after", help="... for this many consecutive requests"),
        live_alpha: float = typer.Option(
            0.2, "--live-alpha", help="weight of the newest request in the live correction (EWMA)"
        ),
    ):
        """Serve the model over an OpenAI-compatible API: /v1/chat/completions, /v1/completions, /v1/models, /healthz, /metrics."""  # noqa: E501 - one line: the command's help
        from edgekit.errors import UsageError
        from edgekit.serve.daemon import ServeConfig, check_serve_deps, prepare, run

        check_serve_deps()
        from edgekit.serve.live import LiveSettings
        from edgekit.serve.service import Limits

        for name, v, lo in (
            ("--max-n", max_n, 1),
            ("--max-seqs", max_seqs, 1),
            ("--max-tokens-cap", max_tokens_cap, 1),
            ("--max-prompt-tokens", max_prompt_tokens, 1),
            ("--max-body-bytes", max_body_bytes, 64),
            ("--max-queue", max_queue, 0),
            ("--port", port, 0),
        ):
            if v < lo:
                raise UsageError(f"{name} must be >= {lo}, got {v}", fix=f"pass {name} {lo} or more")
        if prefix_cache is not None and prefix_cache < 0:
            raise UsageError(f"--prefix-cache must be >= 0 tokens, got {prefix_cache}", fix="pass 0 to turn it off")
        system_prompt = None
        if system_prompt_file is not None:
            try:
                system_prompt = Path(system_prompt_file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise UsageError(
                    f"cannot read --system-prompt-file {system_prompt_file}: {e}", fix="pass a UTF-8 text file"
                ) from None
            if not system_prompt.strip():
                raise UsageError(f"--system-prompt-file {system_prompt_file} is empty", fix="pass a non-empty file")
            if prefix_cache == 0:
                raise UsageError("--system-prompt-file needs the prefix cache", fix="drop --prefix-cache 0")
        if port > 65535:
            raise UsageError(f"--port must be <= 65535, got {port}", fix="pass --port 8080")
        if replan and not plan:
            raise UsageError(
                "--replan needs a plan (it re-runs the planner on the plan's profile and tables)",
                fix="pass --plan plan.json",
            )
        if not (0 < live_alpha <= 1):
            raise UsageError(f"--live-alpha must be in (0, 1], got {live_alpha}", fix="pass --live-alpha 0.2")
        if not (0 < replan_margin < 1) or replan_after < 1:
            raise UsageError(
                f"--replan-margin must be in (0, 1) and --replan-after >= 1, got {replan_margin}, {replan_after}",
                fix="pass --replan-margin 0.2 --replan-after 5",
            )
        if deadline is not None and not deadline > 0:
            raise UsageError(f"--deadline must be > 0 seconds, got {deadline}", fix="pass --deadline 2")
        set_priority(priority)  # before any thread starts: llama.cpp's threads inherit it
        logging.basicConfig(
            level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        logging.getLogger("edgekit.llama_cpp").setLevel(logging.WARNING)
        limits = Limits(
            max_queue=max_queue,
            max_body_bytes=max_body_bytes,
            max_prompt_tokens=max_prompt_tokens,
            max_tokens_cap=max_tokens_cap,
            max_n=max_n,
            deadline_s=deadline,
            stop_rule=stop_rule,
        )
        if stop_rule is not None:
            SamplingOptions.build(stop_rule=stop_rule)  # a misspelt rule fails here, before the model loads
        cfg = ServeConfig(
            model=model,
            plan=plan,
            engine=engine,
            engine_options={"base_url": base_url} if base_url else {},
            host=host,
            port=port,
            api_key=api_key or None,
            log_prompts=log_prompts,
            limits=limits,
            threads=threads,
            n_ctx=ctx,
            max_seqs=max_seqs,
            cloud_url=cloud_url,
            cloud_model=cloud_model,
            offload=offload,
            drain_timeout_s=drain_timeout,
            prefix_cache=prefix_cache,
            system_prompt=system_prompt,
            live=LiveSettings.from_env(alpha=live_alpha, auto_replan=replan, margin=replan_margin, after=replan_after),
        )
        with PullProgress() as p:
            sock, svc = prepare(cfg, progress=p)
        return run(cfg, sock, svc)
