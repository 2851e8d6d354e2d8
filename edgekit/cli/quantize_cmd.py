"""`edgekit quantize SOURCE --to Q8_0,Q4_K_M | --dequantize`: quantized variants with cards."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from edgekit.cli.output import print_json
from edgekit.errors import UsageError


def register(app: typer.Typer) -> None:
    @app.command("quantize")
    def quantize_cmd(
        source: str = typer.Argument(..., help="catalogue id, variant id (e.g. smollm2-135m-instruct-f16) or .gguf path"),
        to: Optional[str] = typer.Option(None, "--to", help="comma-separated types: Q8_0,Q6_K,Q5_K_M,Q4_K_M,Q4_0,Q3_K_M,Q2_K ..."),
        dequantize: bool = typer.Option(False, "--dequantize", help="write an F16 reference of a quantized source "
                                        "(with --to: then quantize that reference)"),
        threads: int = typer.Option(0, "--threads", help="quantizer threads (0: all cores)"),
        imatrix: Optional[Path] = typer.Option(None, "--imatrix", help="importance matrix from llama-imatrix (.gguf or .dat)"),
        allow_requantize: bool = typer.Option(False, "--allow-requantize", help="quantize an already-quantized source "
                                              "(quality is capped by it)"),
        force: bool = typer.Option(False, "--force", help="remake outputs that already exist"),
        json_out: bool = typer.Option(False, "--json", help="machine-readable output (the cards)"),
    ):
        """Make quantized variants in the model cache, each with a card (source checksum, type, size,
        tools, sha256) and usable by id everywhere (`edgekit run --model ID`, `edgekit models list`)."""
        from edgekit.quantize import dequantize as make_reference
        from edgekit.quantize import parse_targets, quantize

        if not to and not dequantize:
            raise UsageError("nothing to make", fix="pass --to Q8_0,Q4_K_M and/or --dequantize")
        targets = parse_targets(to) if to else []  # a bad type fails before any work

        def warn(msg: str) -> None:
            print(f"warning: {msg}", file=sys.stderr, flush=True)

        results = []
        src = source
        if dequantize:
            ref = make_reference(source, force=force)
            results.append(ref)
            src = ref.variant_id
        if targets:
            results += quantize(src, targets, threads=threads, allow_requantize=allow_requantize, imatrix=imatrix,
                                force=force, warn=warn)
        if json_out:
            return print_json({"variants": [{"action": r.action, "seconds": round(r.seconds, 2),
                                             "card_path": str(r.card_path), "card": r.card.model_dump(mode="json")}
                                            for r in results]})
        for r in results:
            what = {"exists": "already made (card and sha256 match; --force remakes it)",
                    "made": f"made in {r.seconds:.1f} s", "remade": f"remade in {r.seconds:.1f} s (the old one was "
                    "incomplete or corrupt)", "forced": f"remade in {r.seconds:.1f} s (--force)"}.get(r.action, r.action)
            print(f"{r.variant_id}  {r.type}  {r.size_bytes / 1e6:.0f} MB  {what}  {r.path}")
            for n in r.card.notes:
                print(f"  note: {n}")
