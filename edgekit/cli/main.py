"""Entry point and the one error->message table.

Every :class:`~edgekit.errors.EdgekitError` becomes ``error: <message> (fix: <fix>)`` on stderr
and exit code 2. Anything else is a bug: a one-line message and exit 1. ``EDGEKIT_DEBUG=1``
re-raises so the traceback shows.
"""

from __future__ import annotations

import os
import sys

import typer

from edgekit.errors import EdgekitError

app = typer.Typer(
    name="edgekit",
    help="Put language models on edge devices and keep them inside a latency budget.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register():
    from edgekit.cli import device_cmd, eval_cmd, models_cmd, plan_cmd, profile_cmd, run_cmd

    app.add_typer(models_cmd.app, name="models")
    for mod in (run_cmd, device_cmd, profile_cmd, plan_cmd, eval_cmd):
        mod.register(app)


def _one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split()) or type(exc).__name__
    return msg[:400]


# Errors from libraries, mapped to a message and a fix (the rest are bugs).
ERROR_TABLE: list[tuple[type, str]] = [
    (MemoryError, "out of memory (fix: use a smaller model, fewer samples (--n) or a smaller --max-tokens)"),
    (PermissionError, "permission denied: {e} (fix: choose a writable path or run with the needed rights)"),
    (FileNotFoundError, "file not found: {e} (fix: check the path)"),
    (IsADirectoryError, "expected a file, got a directory: {e} (fix: pass a file path)"),
    (OSError, "system error: {e} (fix: check disk space, paths and permissions)"),
]


def main(argv: list[str] | None = None) -> None:
    debug = bool(os.environ.get("EDGEKIT_DEBUG"))
    _register()
    try:
        app(args=argv, standalone_mode=True)
    except EdgekitError as e:
        if debug:
            raise
        print(f"error: {e.one_line()}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001
        if debug:
            raise
        for kind, template in ERROR_TABLE:
            if isinstance(e, kind):
                print("error: " + template.format(e=_one_line(e)), file=sys.stderr)
                sys.exit(2)
        print(f"internal error: {type(e).__name__}: {_one_line(e)} (set EDGEKIT_DEBUG=1 for the traceback and report it)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
