"""One error hierarchy. Every user-facing error carries a one-line message and the fix.

The CLI maps :class:`EdgekitError` to ``error: <message> (fix: <fix>)`` and exit code 2;
anything else is a bug (exit 1). ``EDGEKIT_DEBUG=1`` shows tracebacks.
"""

from __future__ import annotations


class EdgekitError(Exception):
    """A problem the user can fix. ``fix`` names how."""

    exit_code = 2

    def __init__(self, message: str, fix: str | None = None):
        super().__init__(message)
        self.message = message
        self.fix = fix

    def one_line(self) -> str:
        msg = " ".join(self.message.split())
        return f"{msg} (fix: {self.fix})" if self.fix else msg


class UsageError(EdgekitError):
    """Bad argument value."""


class ModelNotFound(EdgekitError):
    pass


class ChecksumMismatch(EdgekitError):
    pass


class GGUFError(EdgekitError):
    """Not a GGUF, truncated, or an unsupported architecture."""


class ContextOverflow(EdgekitError):
    pass


class FetchError(EdgekitError):
    """A download failed (offline, registry error, hub unreachable)."""


class SchemaError(EdgekitError):
    """A profile, accuracy table or plan file is malformed or mismatched."""


class BackendError(EdgekitError):
    """The inference backend is missing or failed."""


class DeadlineUnmeetable(EdgekitError):
    """A request that can no longer finish by its deadline, refused before it ran (the daemon: 503)."""

    def __init__(self, message: str, fix: str | None = None, retry_after_s: float = 1.0):
        super().__init__(message, fix)
        self.retry_after_s = retry_after_s


class SensorError(EdgekitError):
    """A power or thermal sensor failed or vanished."""
