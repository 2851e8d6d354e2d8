"""Options that several commands declare alike, one definition each (``Annotated`` aliases; the
default stays with the command: ``priority: Priority = "normal"``)."""

from __future__ import annotations

from typing import Annotated

import typer

from edgekit.models.catalog import DEFAULT_MODEL

Model = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help=f"catalogue id, .gguf path or hf:<owner>/<repo>/<file> [default: the plan's, else {DEFAULT_MODEL}]",
    ),
]
Engine = Annotated[str, typer.Option("--engine", help="llama.cpp | openai | a plugin's name")]
Threads = Annotated[int | None, typer.Option(help="CPU threads (default: the usable CPUs, adaptive to other load)")]
Priority = Annotated[
    str,
    typer.Option(
        "--priority",
        help="normal | nice | batch | idle: lower the model's CPU priority so a robot's control loops keep precedence",
    ),
]
GpuLayers = Annotated[
    int | None,
    typer.Option(
        "--gpu-layers",
        help="llama.cpp: layers offloaded to the GPU (-1: all; a CUDA/Metal build); default 0, CPU only",
    ),
]
CloudUrl = Annotated[
    str | None,
    typer.Option(
        "--cloud-url",
        help="offload low-confidence queries to this OpenAI-compatible server (key: EDGEKIT_CLOUD_API_KEY)",
    ),
]
CloudModel = Annotated[str | None, typer.Option("--cloud-model", help="the cloud's model name")]
Offload = Annotated[str | None, typer.Option("--offload", help="never | auto | always [default: auto with a cloud]")]
OffloadBudget = Annotated[
    float | None, typer.Option("--offload-budget", help="at most this share of queries offloaded")
]
