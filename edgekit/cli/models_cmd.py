"""`edgekit models list | pull ID | verify [ID] | path ID | rm ID`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from edgekit import models
from edgekit.cli.output import PullProgress, console, print_json
from edgekit.errors import ChecksumMismatch
from edgekit.models.catalog import CATALOG
from edgekit.models.gguf import check_gguf

app = typer.Typer(help="List, fetch, verify, locate and remove models.", no_args_is_help=True)

_STYLE = {"verified": "green", "unverified": "yellow", "corrupt": "bold red", "missing": "dim"}


@app.command("list")
def list_cmd(
    json_out: bool = typer.Option(False, "--json", help="machine-readable output"),
    verify: bool = typer.Option(False, "--verify", help="re-hash every cached file (default: stat vs manifest only)"),
):
    """The catalogue and each model's cache status: verified, unverified, corrupt or missing."""
    rows = models.list_models(verify=verify)
    variants = models.variant_rows(verify=verify)
    if json_out:
        return print_json(
            {
                "cache": str(models.cache_root()),
                "checked": "sha256" if verify else "manifest",
                "models": rows,
                "variants": variants,
            }
        )
    t = Table(title=f"models (cache: {models.cache_root()})")
    for c in ("id", "arch", "quant", "size", "status", "license"):
        t.add_column(c)
    for r in rows:
        st = r["status"]
        t.add_row(
            r["id"] + (" (default)" if r["default"] else ""),
            r["arch"],
            r["quant"],
            f"{r['size_bytes'] / 1e6:.0f} MB",
            f"[{_STYLE[st]}]{st.upper() if st == 'corrupt' else st}[/]",
            r["license"],
        )
    console.print(t)
    how = (
        "sha256 re-hashed now"
        if verify
        else "size/mtime/inode against each file's sha256 manifest; `--verify` re-hashes"
    )
    console.print(
        f"status: {how}. unverified: not hashed since it changed or was cached (the next load or "
        "`edgekit models verify` hashes it)."
    )
    for r in rows:
        if r["status"] == "corrupt":
            console.print(
                f"[bold red]{r['id']} is corrupt[/]: {r['status_reason']} (fix: `edgekit models pull {r['id']}`)",
                soft_wrap=True,
                markup=True,
                highlight=False,
            )
    if variants:
        v = Table(title=f"variants (edgekit quantize; {models.variants_dir()})")
        for c in ("id", "base model", "type", "size", "status", "made from"):
            v.add_column(c)
        for r in variants:
            st = r["status"]
            src = r["source"] + (f" (dequantized {r['dequantized_from']})" if r["dequantized_from"] else "")
            v.add_row(
                r["id"],
                r["base_model"],
                r["type"],
                f"{r['size_bytes'] / 1e6:.0f} MB",
                f"[{_STYLE[st]}]{st.upper() if st == 'corrupt' else st}[/]",
                src,
            )
        console.print(v)
        for r in variants:
            if r["status"] in ("corrupt", "missing"):
                console.print(
                    f"[bold red]variant {r['id']} is {r['status']}[/]: {r['status_reason']} (fix: "
                    f"`edgekit quantize {r['source']} --to {r['type']} --force`)",
                    soft_wrap=True,
                    highlight=False,
                )
    console.print("Also: any local .gguf path, or hf:<owner>/<repo>/<file.gguf> (Hugging Face Hub).")


@app.command("pull")
def pull_cmd(model_id: str, force: bool = typer.Option(False, help="fetch again even if cached and intact")):
    """Fetch a catalogue model (verified sha256, atomic write). A cached copy is re-hashed: kept
    if intact, re-fetched if corrupt."""
    e = models.lookup(model_id)
    with PullProgress() as p:
        res = models.pull_model(e, progress=p, force=force)
    print(f"{model_id}: {res.path} ({res.describe()}; licence: {e.license})")


@app.command("verify")
def verify_cmd(
    model: str | None = typer.Argument(None, help="catalogue id, .gguf path or hf: spec (default: every cached model)"),
    json_out: bool = typer.Option(False, "--json", help="machine-readable output"),
    record_new: bool = typer.Option(
        False, "--record", help="hf:/local file: record its current sha256 as the good one"
    ),
):
    """Re-hash cached models (sha256) against the catalogue / recorded hash. Exit 2 if any is corrupt."""
    if model and not model.startswith("hf:") and model not in CATALOG and Path(model).exists():
        check_gguf(Path(model))  # a directory or a file that is not a GGUF model is refused, never reported "ok"
    checks = models.verify_models(model, record_new=record_new)
    bad = [c for c in checks if c.status == models.CORRUPT]
    if json_out:
        print_json(
            {
                "cache": str(models.cache_root()),
                "ok": not bad,
                "models": [
                    {
                        "id": c.model_id,
                        "path": str(c.path),
                        "status": _verdict(c),
                        "reason": c.reason,
                        "sha256": c.sha256,
                        "expected_sha256": c.expected_sha256,
                        "seconds": round(c.hash_s, 3),
                        "fix": c.fix() if c.status == models.CORRUPT else None,
                    }
                    for c in checks
                ],
            }
        )
    else:
        if not checks:
            print(f"no cached models to verify in {models.cache_root()}")
        for c in checks:
            v = _verdict(c)
            if v == "CORRUPT":
                print(f"CORRUPT  {c.model_id}  {c.path}: {c.reason} (fix: {c.fix()})")
            elif v == "missing":
                print(f"missing  {c.model_id}  {c.path}: {c.reason}")
            else:
                extra = " (hash recorded now: first verify)" if v == "recorded" else ""
                print(f"{v:<8} {c.model_id}  sha256 {c.sha256[:12]}…  {c.hash_s:.2f} s{extra}")
    if bad:
        ids = ", ".join(c.model_id for c in bad)
        fixes = "; ".join(c.fix() for c in bad)
        raise ChecksumMismatch(f"{len(bad)} of {len(checks)} model files corrupt: {ids}", fix=fixes)


def _verdict(c) -> str:
    if c.status == models.CORRUPT:
        return "CORRUPT"
    if c.status == models.VERIFIED:
        return "recorded" if c.reason.startswith("hash recorded now") else "ok"
    return c.status


@app.command("path")
def path_cmd(model_id: str):
    """Print the local path of a model (pulls nothing; refuses a corrupt one)."""
    r = models.resolve(model_id, pull_if_missing=False)
    print(r.path)


@app.command("rm")
def rm_cmd(model_id: str):
    """Remove a model or a quantized variant (and its manifest, and card) from the cache."""
    removed = models.remove(model_id)
    console.print(f"{model_id}: {'removed' if removed else 'was not cached'}")
