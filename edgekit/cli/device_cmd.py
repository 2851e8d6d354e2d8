"""`edgekit device`: what this machine is and which sensors it can read."""

from __future__ import annotations

import typer

from edgekit.cli.output import console, print_json


def register(app: typer.Typer) -> None:
    @app.command("device")
    def device(json_out: bool = typer.Option(False, "--json", help="machine-readable output")):
        """CPU, RAM, GPUs, Jetson, llama.cpp build and readable power sensors (with fixes)."""
        from edgekit.cli.render_device import render_device
        from edgekit.device import detect_device

        report = detect_device()
        if json_out:
            return print_json(report)
        console.print(render_device(report))
