"""`edgekit models list | pull ID | path ID | rm ID`."""

from __future__ import annotations

import typer
from rich.table import Table

from edgekit import models
from edgekit.cli.output import PullProgress, console, print_json

app = typer.Typer(help="List, fetch, locate and remove models.", no_args_is_help=True)


@app.command("list")
def list_cmd(json_out: bool = typer.Option(False, "--json", help="machine-readable output")):
    """The catalogue and what is cached locally."""
    rows = models.list_models()
    if json_out:
        return print_json({"cache": str(models.cache_root()), "models": rows})
    t = Table(title=f"models (cache: {models.cache_root()})")
    for c in ("id", "arch", "quant", "size", "cached", "license"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["id"] + (" (default)" if r["default"] else ""), r["arch"], r["quant"], f"{r['size_bytes'] / 1e6:.0f} MB",
                  "yes" if r["cached"] else "no", r["license"])
    console.print(t)
    console.print("Also: any local .gguf path, or hf:<owner>/<repo>/<file.gguf> (Hugging Face Hub).")


@app.command("pull")
def pull_cmd(model_id: str, force: bool = typer.Option(False, help="fetch again even if cached")):
    """Fetch a catalogue model (verified sha256, atomic write)."""
    e = models.lookup(model_id)
    with PullProgress() as p:
        path = models.pull(e, progress=p, force=force)
    console.print(f"{model_id}: {path} (sha256 verified; licence: {e.license})")


@app.command("path")
def path_cmd(model_id: str):
    """Print the local path of a model (pulls nothing)."""
    r = models.resolve(model_id, pull_if_missing=False)
    print(r.path)


@app.command("rm")
def rm_cmd(model_id: str):
    """Remove a model from the cache."""
    removed = models.remove(model_id)
    console.print(f"{model_id}: {'removed' if removed else 'was not cached'}")
