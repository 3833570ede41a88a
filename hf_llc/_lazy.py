"""Lazy package exports: a package names its public objects and the submodule of each, and a
submodule is imported only when one of its names is first used (PEP 562 ``__getattr__``).

This keeps ``import hf_llc`` (and so ``hf-llc --help``) free of torch, transformers and the
Trainer stack until they are needed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` whose public ``name`` lives in the submodule
    ``exports[name]`` (relative to the package, e.g. ``".estimator"``).

    The first access imports the submodule and caches the object in the package's namespace,
    so later accesses cost nothing.
    """
    import sys

    def __getattr__(name: str) -> object:
        module_name = exports.get(name)
        if module_name is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module_name, package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
