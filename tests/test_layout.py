"""The package layout shows the loop: lower stages never import higher ones, and nothing imports in a circle.

Every import of an agentrl module (at module level or inside a function) is read from the source with
``ast``, so an import hidden in a function body cannot break the rule unnoticed either.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"agentrl": ROOT / "agentrl", "agentrl.tools": ROOT / "tools", "agentrl.environments": ROOT / "environments"}

# The stage of each part of the package, lowest first. A module may import its own stage and lower ones.
STAGES = [
    ("agentrl.errors", "agentrl.lazy", "agentrl.faults", "agentrl.redact"),
    ("agentrl.assets", "agentrl.models", "agentrl.quantize"),
    ("agentrl.chat.parsing",),
    ("agentrl.tools",),
    ("agentrl.envs",),
    ("agentrl.chat",),  # templates, rendering, token-exact conversations, doctor
    ("agentrl.environments",),
    ("agentrl.rollout",),
    ("agentrl.envs.checker",),  # check_env plays an AgentEnv's agent code through the rollout engine
    ("agentrl.eval.loop", "agentrl.eval.stats"),  # the trainer evaluates before and after training
    ("agentrl.train",),
    ("agentrl.eval",),  # eval runs, reports, plots and the viewer
    ("agentrl.cli", "agentrl.__main__", "agentrl.testing"),
]
STAGES.append(("agentrl",))  # agentrl/__init__.py re-exports the public names of several stages
PACKAGE_INITS = {"agentrl"}  # re-exports the public names of several stages, by design


def _modules() -> dict[str, Path]:
    out = {}
    for package, root in SOURCES.items():
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def _stage(module: str) -> int:
    best, rank = -1, None
    for i, prefixes in enumerate(STAGES):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best and (p != "agentrl" or module == p):
                best, rank = len(p), i
    assert rank is not None, f"{module} has no stage in tests/test_layout.py"
    return rank


def _imports(path: Path, known: set[str]) -> set[str]:
    """The agentrl modules ``path`` imports (``from agentrl.x import y`` counts y when it is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("agentrl")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("agentrl"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known}
    # Lazy re-exports in an __init__ name their module as a string.
    if path.name == "__init__.py":
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in known:
                found.add(node.value)
    return {m for m in found if m in known}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(p, set(modules)) - {m} for m, p in modules.items()}


def test_lower_stages_never_import_higher_ones(graph):
    bad = [
        f"{m} (stage {_stage(m)}) imports {d} (stage {_stage(d)})"
        for m, deps in graph.items()
        if m not in PACKAGE_INITS
        for d in deps
        if _stage(d) > _stage(m)
        and not m.startswith(d + ".")  # a package's __init__ may re-export its children
        and not d.startswith(m + ".")
    ]
    assert not bad, "\n".join(bad)


def test_no_module_imports_another_in_a_circle(graph):
    # Packages' __init__ files re-export their children; the cycle rule is about the modules themselves.
    edges = {
        m: {d for d in deps if not m.startswith(d + ".") and not d.startswith(m + ".")} for m, deps in graph.items()
    }
    edges = {m: {d for d in deps if d not in PACKAGE_INITS} for m, deps in edges.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for d in sorted(edges.get(m, ())):
            if state.get(d) == 1:
                cycle = [*path[path.index(d) :], d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        path.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_production_code_never_imports_the_test_assets(graph):
    users = sorted(m for m, deps in graph.items() if "agentrl.testing" in deps)
    assert users == [], users


def test_no_module_is_much_over_600_lines():
    long = {m: n for m, p in _modules().items() if (n := len(p.read_text().splitlines())) > 600}
    assert not long, long


def test_public_names_stay_at_the_top():
    import agentrl
    import agentrl.tools

    for name in ("make", "register", "Env", "ToolEnv", "tool", "Task", "check_env", "InfraError", "MaxTurns"):
        assert hasattr(agentrl, name), name
    for name in ("LocalSandbox", "E2BSandbox", "python_tool", "calculator", "tool", "InfraError"):
        assert getattr(agentrl.tools, name) is not None, name
