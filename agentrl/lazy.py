"""Lazy re-exports for package ``__init__`` files: a name is imported from its module on first use.

``import agentrl`` stays light (no torch), and a subpackage can offer its public names at its top
(``from agentrl.rollout import make_backend``) without importing every module, and without import
cycles between a package and the modules below it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` that resolves ``exports`` (name -> module) on first access."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
