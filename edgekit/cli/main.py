"""Entry point and the one error->message table.

Every :class:`~edgekit.errors.EdgekitError` becomes ``error: <message> (fix: <fix>)`` on stderr
and exit code 2; Ctrl-C becomes exit code 130 and one line starting ``interrupted`` (commands that
keep partial work, profile and eval, say where it went). Errors from
libraries that a user can cause (files, permissions, encodings) are mapped by ``ERROR_TABLE``.
Anything else is a bug: a one-line message and exit 1. ``EDGEKIT_DEBUG=1`` re-raises so the
traceback shows.
"""

from __future__ import annotations

import functools
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


# Ctrl-C: exit 130 and exactly one stderr line starting "interrupted". A command that says what it
# kept (profile, eval) prints its own line and raises typer.Exit(130); any other gets this one.
INTERRUPTED = "interrupted (Ctrl-C) (fix: run the command again)"
_interrupt = {"reported": False}


def _reports_interrupts(callback):
    @functools.wraps(callback)  # typer reads the parameters through __wrapped__
    def wrapper(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except KeyboardInterrupt:
            print(INTERRUPTED, file=sys.stderr)
            _interrupt["reported"] = True
            raise typer.Exit(130) from None
        except typer.Exit as e:
            if e.exit_code == 130:  # the command reported it
                _interrupt["reported"] = True
            raise

    wrapper._edgekit_interrupts = True  # type: ignore[attr-defined]
    return wrapper


def _register():
    from edgekit.cli import (
        calibrate_cmd,
        deploy_cmd,
        device_cmd,
        eval_cmd,
        models_cmd,
        plan_cmd,
        profile_cmd,
        quantize_cmd,
        run_cmd,
        serve_cmd,
    )

    app.add_typer(models_cmd.app, name="models")
    for mod in (run_cmd, device_cmd, profile_cmd, plan_cmd, eval_cmd, calibrate_cmd, deploy_cmd, quantize_cmd):
        mod.register(app)
    serve_cmd.register(app)
    for info in [*app.registered_commands, *models_cmd.app.registered_commands]:
        if info.callback is not None and not getattr(info.callback, "_edgekit_interrupts", False):
            info.callback = _reports_interrupts(info.callback)


def _one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split()) or type(exc).__name__
    return msg[:400]


# Errors from libraries, mapped to a message and a fix (the rest are bugs).
ERROR_TABLE: list[tuple[type, str]] = [
    (MemoryError, "out of memory (fix: use a smaller model, fewer samples (--n) or a smaller --max-tokens)"),
    (PermissionError, "permission denied: {e} (fix: choose a writable path or run with the needed rights)"),
    (FileNotFoundError, "file not found: {e} (fix: check the path)"),
    (IsADirectoryError, "expected a file, got a directory: {e} (fix: pass a file path)"),
    (
        NotADirectoryError,
        "expected a folder, got a file: {e} (fix: check the path, and that EDGEKIT_HOME names a folder)",
    ),
    (UnicodeError, "text is not valid UTF-8: {e} (fix: save or pass it as UTF-8, e.g. `iconv -f latin1 -t utf-8`)"),
    (OSError, "system error: {e} (fix: check disk space, paths and permissions)"),
]


def _command(argv: list[str]) -> str:
    """The (sub)command a command line names: "edgekit run", "edgekit models pull", or "edgekit"."""
    words = [a for a in argv if not a.startswith("-")][:2]
    if not words or words[0] not in {c.name for c in app.registered_commands} | {"models"}:
        return "edgekit"
    cmd = f"edgekit {words[0]}"
    if words[0] == "models" and len(words) > 1:
        from edgekit.cli import models_cmd

        if words[1] in {c.name for c in models_cmd.app.registered_commands}:
            cmd += f" {words[1]}"
    return cmd


def _usage_line(e: BaseException, argv: list[str]) -> str:
    """Typer/Click usage errors (bad --seed abc, a missing option, an unknown command) as one line."""
    msg = " ".join(str(getattr(e, "format_message", lambda: str(e))()).split()) or "bad command line"
    return f"error: {msg} (fix: see `{_command(argv)} --help`)"


def _error_line(e: EdgekitError, argv: list[str]) -> str:
    """``error: <what> (fix: <how>)``; an error raised without a fix still names where to look."""
    if e.fix:
        return f"error: {e.one_line()}"
    return f"error: {e.one_line()} (fix: see `{_command(argv)} --help`; EDGEKIT_DEBUG=1 shows where it was raised)"


def _host_warnings() -> None:
    """edgekit.host's warnings (another edgekit process computing here) as one 'warning:' line each."""
    import logging

    lg = logging.getLogger("edgekit.host")
    if not lg.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("warning: %(message)s"))
        lg.addHandler(h)
        lg.setLevel(logging.WARNING)
        lg.propagate = False


def main(argv: list[str] | None = None) -> None:
    debug = bool(os.environ.get("EDGEKIT_DEBUG"))
    _register()
    _host_warnings()
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        rv = app(args=args, standalone_mode=False)
    except EdgekitError as e:
        if debug:
            raise
        print(_error_line(e, args), file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:  # outside a command (while parsing, importing)
        rv = 130
    except Exception as e:
        if hasattr(e, "exit_code") and hasattr(e, "format_message"):  # click/typer usage errors
            if type(e).__name__ == "NoArgsIsHelpError":  # the help was printed
                sys.exit(0)
            print(_usage_line(e, args), file=sys.stderr)
            sys.exit(2)
        if debug:
            raise
        for kind, template in ERROR_TABLE:
            if isinstance(e, kind):
                print("error: " + template.format(e=_one_line(e)), file=sys.stderr)
                sys.exit(2)
        print(
            f"internal error: {type(e).__name__}: {_one_line(e)} (set EDGEKIT_DEBUG=1 for the traceback and report it)",
            file=sys.stderr,
        )
        sys.exit(1)
    if rv == 130:  # typer turns Ctrl-C (KeyboardInterrupt / Abort) into 130 without a word
        if not _interrupt["reported"]:
            print(INTERRUPTED, file=sys.stderr)
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
