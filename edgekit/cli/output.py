"""Shared output helpers: human (rich) or --json."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

console = Console()
err_console = Console(stderr=True)


def print_json(obj: Any) -> None:
    if hasattr(obj, "model_dump"):
        obj = obj.model_dump(mode="json")
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def stop_progress(bar, failed: bool) -> None:
    """Stop a rich progress bar. On success it stays (its last state); on an error or Ctrl-C it is
    removed, so that the one-line error is all that stderr shows. ``Progress.stop()`` is avoided on
    failure: on a non-terminal stderr it prints a blank line."""
    if failed:
        bar.live.transient = True
        bar.live.stop()
    else:
        bar.stop()


class PullProgress:
    """A rich progress bar fed by edgekit.models.store's progress callback; shown only once a
    download actually starts (a cached model prints nothing)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar = None
        self.task = None

    def __enter__(self):
        return self

    def __call__(self, desc: str, advance: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=err_console,
            )
            self.bar.__enter__()
            self.task = self.bar.add_task(desc, total=total)
        self.bar.update(self.task, description=desc, advance=advance, total=total)

    def __exit__(self, exc_type, *exc):
        if self.bar is not None:
            stop_progress(self.bar, failed=exc_type is not None)
