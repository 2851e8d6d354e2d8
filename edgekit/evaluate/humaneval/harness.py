"""The checker program: :mod:`.wire`, :mod:`.worker` and :mod:`.judge` bundled into one ``python -c`` source.

Inside the sandbox edgekit is not importable (its directory is not mounted), so the parent passes
the three modules' sources on the command line: a few lines of bootstrap register them as the
submodules of a package that lives only in the checker's memory (their relative imports resolve
there) and call ``judge.main``. The three stay standard library only.
"""

from __future__ import annotations

from pathlib import Path

MODULES = ("wire", "worker", "judge")  # in import order
PACKAGE = "edgekit_checker"  # the package name inside the checker process

_BOOT = """import sys, types
pkg = types.ModuleType({package!r})
pkg.__path__ = []
sys.modules[{package!r}] = pkg
for name, src in {sources!r}:
    mod = types.ModuleType({package!r} + "." + name)
    mod.__package__ = {package!r}
    sys.modules[mod.__name__] = mod
    setattr(pkg, name, mod)
    exec(compile(src, name + ".py", "exec", dont_inherit=True, optimize=0), mod.__dict__)
pkg.judge.main()
"""

_source: str | None = None


def checker_source() -> str:
    """The checker's ``-c`` program (read once, then cached)."""
    global _source
    if _source is None:
        here = Path(__file__).parent
        sources = tuple((name, (here / f"{name}.py").read_text(encoding="utf-8")) for name in MODULES)
        _source = _BOOT.format(package=PACKAGE, sources=sources)
    return _source
