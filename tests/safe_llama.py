"""Bare llama-cpp-python in tests, loaded the way edgekit's kernel probe found safe on this CPU.

On an Intel AMX virtual machine a bare ``llama_cpp.Llama`` (or ``python -m llama_cpp.server``)
with llama.cpp's default extra buffer types dies by SIGSEGV. Tests that use the bare library (the
reference loops and the loopback "cloud" server) go through :func:`patch_defaults`, which sets
``use_extra_bufts`` in llama-cpp-python's default model parameters to what the probe chose.

Run as a script it is ``python -m llama_cpp.server`` with that patch:
``python tests/safe_llama.py --model PATH ...``.
"""

from __future__ import annotations

import runpy
import sys


def patch_defaults(model_path: str) -> str:
    """Patch llama-cpp-python's default model parameters in this process; returns the configuration."""
    import llama_cpp.llama_cpp as lc

    from edgekit.engines.llamacpp_probe import choose_for

    choice = choose_for(str(model_path), threads=2)
    orig = getattr(lc.llama_model_default_params, "_edgekit_orig", lc.llama_model_default_params)

    def params():
        p = orig()
        p.use_extra_bufts = choice.use_extra_bufts
        return p

    params._edgekit_orig = orig  # type: ignore[attr-defined]
    lc.llama_model_default_params = params
    return choice.config


if __name__ == "__main__":
    patch_defaults(sys.argv[sys.argv.index("--model") + 1])
    sys.argv = ["llama_cpp.server"] + sys.argv[1:]
    runpy.run_module("llama_cpp.server", run_name="__main__")
