"""edgekit: language models on edge devices, inside a latency budget."""

__version__ = "0.1.0"

from edgekit.errors import EdgekitError  # noqa: E402


def __getattr__(name):  # lazy: importing edgekit must not load llama.cpp
    if name in ("Runtime", "Result", "Sample"):
        from edgekit import runtime

        return getattr(runtime, name)
    raise AttributeError(name)


__all__ = ["EdgekitError", "Runtime", "Result", "Sample", "__version__"]
