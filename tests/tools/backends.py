"""The sandboxes that the grading, hack and attack tests run against: the same tests, every backend.

``strong`` and ``standard`` are :class:`LocalSandbox` at those isolation levels (skipped, with the
reason, where this machine cannot give them); ``e2b`` is :class:`E2BSandbox` over the fake E2B service
of ``e2b_fake``, whose kernel runs the code in a process tree of its own. A test whose claim rests on
local isolation (seccomp, Landlock, rlimits, bubblewrap) calls :func:`local_only`: the fake E2B VM is a
plain process on this host, so such a test would say nothing about E2B, whose VM is remote.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from e2b_fake import install
from isolation import require_level

from agentrl.tools.sandbox import LocalSandbox, Sandbox

LOCAL_LEVELS = ["strong", "standard"]
ALL = [*LOCAL_LEVELS, "e2b"]


@contextlib.contextmanager
def open_sandbox(kind: str, **local: Any) -> Iterator[Sandbox]:
    """A sandbox of ``kind`` ("strong", "standard", "auto" or "e2b"); ``local`` goes to LocalSandbox
    (``timeout`` to both)."""
    if kind == "e2b":
        from agentrl.tools.sandbox.e2b import E2BSandbox

        patch = pytest.MonkeyPatch()  # module-scoped fixtures cannot use the monkeypatch fixture
        fake = install(patch)
        sb: Sandbox = E2BSandbox(timeout=local.get("timeout", 10.0), creations_per_second=1000.0)
        try:
            yield sb
        finally:
            sb.close()
            fake.shutdown()
            patch.undo()
        return
    if kind != "auto":
        require_level(kind)
    sb = LocalSandbox(isolation=kind, strict=kind != "auto", **local)
    try:
        yield sb
    finally:
        sb.close()


def local_only(sandbox: Sandbox, why: str) -> None:
    """Skip this test on E2B: what it checks is a property of local isolation (``why`` says which)."""
    if sandbox.backend != "local":
        pytest.skip(f"local isolation only: {why}")
