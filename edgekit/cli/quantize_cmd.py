"""`edgekit quantize SOURCE --to Q8_0,Q4_K_M | --dequantize`: quantized variants with cards."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from edgekit.cli.output import print_json
from edgekit.errors import UsageError


def register(app: typer.Typer) -> None:
    @app.command("quantize")
    def quantize_cmd(
        source: str = typer.Argument(
            ..., help="catalogue id, variant id (e.g. smollm2-135m-instruct-f16) or .gguf path"
        ),
        to: str | None = typer.Option(
            None, "--to", help="comma-separated types: Q8_0,Q6_K,Q5_K_M,Q4_K_M,Q4_0,Q3_K_M,Q2_K ..."
        ),
        dequantize: bool = typer.Option(
            False,
            "--dequantize",
            help="write an F16 reference of a quantized source (with --to: then quantize that reference)",
        ),
        threads: int = typer.Option(0, "--threads", help="quantizer threads (0: all cores)"),
        imatrix: Path | None = typer.Option(
            None, "--imatrix", help="importance matrix from llama-imatrix (.gguf or .dat)"
        ),
        allow_requantize: bool = typer.Option(
            False, "--allow-requantize", help="quantize an already-quantized source (quality is capped by it)"
        ),
        force: bool = typer.Option(False, "--force", help="remake outputs that already exist"),
        json_out: bool = typer.Option(False, "--json", help="machine-readable output (the cards)"),
        eval_: bool = typer.Option(
            False,
            "--eval",
            "--quality",
            help="then measure each variant's quality against the source: "
            "perplexity on a fixed text, KL divergence, top-1 agreement (stored in the cards)",
        ),
        eval_tokens: int | None = typer.Option(
            None, "--eval-tokens", help="with --eval: first N tokens of the text (default: all of it, ~5,800)"
        ),
    ):
        """Make quantized variants in the model cache, each with a card (source checksum, type, size,
        tools, sha256) and usable by id everywhere (`edgekit run --model ID`, `edgekit models list`)."""
        from edgekit.quantize import dequantize as make_reference
        from edgekit.quantize import parse_targets, quantize

        if not to and not dequantize:
            raise UsageError("nothing to make", fix="pass --to Q8_0,Q4_K_M and/or --dequantize")
        targets = parse_targets(to) if to else []  # a bad type fails before any work
        if eval_tokens is not None:
            from edgekit.quantize.quality import DEFAULT_N_CTX

            if not eval_:
                raise UsageError("--eval-tokens needs --eval", fix="add --eval, or drop --eval-tokens")
            if eval_tokens < DEFAULT_N_CTX:
                raise UsageError(
                    f"--eval-tokens must be at least one window ({DEFAULT_N_CTX}), got {eval_tokens}",
                    fix=f"pass --eval-tokens {DEFAULT_N_CTX} or more, or leave it out for the whole text",
                )

        def warn(msg: str) -> None:
            print(f"warning: {msg}", file=sys.stderr, flush=True)

        results = []
        src = source
        if dequantize:
            ref = make_reference(source, force=force)
            results.append(ref)
            src = ref.variant_id
        if targets:
            results += quantize(
                src,
                targets,
                threads=threads,
                allow_requantize=allow_requantize,
                imatrix=imatrix,
                force=force,
                warn=warn,
            )
        if eval_:
            from edgekit.models.variants import variants_dir
            from edgekit.quantize.quality import DEFAULT_TOP_K, evaluate_quantized

            ref_path, ref_rep, reps = evaluate_quantized(
                src, [r.variant_id for r in results], variants_dir(), limit_tokens=eval_tokens, threads=threads or None
            )
            for r in results:  # the cards now hold the reports
                r.card.quality = ref_rep if r.variant_id == src else reps.get(r.variant_id, r.card.quality)
        if json_out:
            return print_json(
                {
                    "variants": [
                        {
                            "action": r.action,
                            "seconds": round(r.seconds, 2),
                            "card_path": str(r.card_path),
                            "card": r.card.model_dump(mode="json"),
                        }
                        for r in results
                    ]
                }
            )
        for r in results:
            what = {
                "exists": "already made (card and sha256 match; --force remakes it)",
                "made": f"made in {r.seconds:.1f} s",
                "remade": f"remade in {r.seconds:.1f} s (the old one was incomplete or corrupt)",
                "forced": f"remade in {r.seconds:.1f} s (--force)",
            }.get(r.action, r.action)
            print(f"{r.variant_id}  {r.type}  {r.size_bytes / 1e6:.0f} MB  {what}  {r.path}")
            for n in r.card.notes:
                print(f"  note: {n}")
            q = r.card.quality if eval_ else None
            if q is not None and q.kl_mean is not None:
                print(
                    f"  quality: ppl {q.ppl.value:.4f}, KL mean {q.kl_mean.value:.5f} nats (p99 {q.kl_p99.value:.4f}), "
                    f"top-1 agreement {100 * q.top1_agree.value:.1f} % vs {q.reference} ({q.n_tokens} tokens, measured)"
                )
            elif q is not None:
                print(f"  quality: ppl {q.ppl.value:.4f} (reference; {q.n_tokens} tokens, measured)")
        if eval_:
            print(
                f"quality reference: {ref_path} (source ppl {ref_rep.ppl.value:.4f} on {ref_rep.text_name}; "
                f"KL is on its top-{DEFAULT_TOP_K} tokens + a tail bin, a lower bound)"
            )
