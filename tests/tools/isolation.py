"""Skip a test only when this machine cannot give the isolation level it needs, and say why.

The decision comes from ``probe()``, which actually starts bubblewrap and loads seccomp and Landlock,
so a level the machine supports is never skipped.
"""

import pytest

from agentrl.tools.sandbox import Isolation, probe
from agentrl.tools.sandbox.local import _explain


def require_level(level: str) -> None:
    facts = probe()
    if facts["level"] < Isolation.parse(level):
        pytest.skip(f"isolation '{level}' is impossible on this machine: {_explain(facts)}")
