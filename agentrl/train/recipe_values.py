"""Checking recipe values: YAML data against the recipe dataclasses' type hints, and the rules of env.mix,
in one-line errors.

Everything here reads values a user wrote (a YAML file, ``key=value`` overrides), so nothing may raise
anything but :class:`~agentrl.errors.RecipeError`, and every message stays on one line however odd
the value: values are shown by a capped ``repr`` and keys with line breaks are quoted.
"""

from __future__ import annotations

import math
import types
import typing
from typing import Any

import yaml

from agentrl.errors import RecipeError, UserError


def show(value: Any) -> str:
    """``repr(value)`` for a message: one line (repr escapes line breaks), capped, and never raising."""
    try:
        text = repr(value)
    except Exception:  # a structure too deep to repr
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


def key_text(key: str) -> str:
    """A key as the user wrote it, or its repr when it holds line breaks or other unprintable characters."""
    return key if key.isprintable() else repr(key)


def _check_plain(key: str, value: Any) -> None:
    """``value`` is a tree of YAML data: no cycles (YAML anchors can build them), so it can be hashed and logged."""
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(value, False)]
    while stack:
        node, leaving = stack.pop()
        if not isinstance(node, (dict, list)):
            continue
        if leaving:
            on_path.discard(id(node))
            continue
        if id(node) in on_path:
            raise RecipeError(f"{key}: a value may not contain itself (a YAML anchor used inside its own value)")
        on_path.add(id(node))
        stack.append((node, True))
        stack.extend((child, False) for child in (node.values() if isinstance(node, dict) else node))


def check_type(key: str, value: Any, tp: Any) -> Any:
    """``value`` as the type hint ``tp`` of recipe key ``key`` wants it (an int as a float, ...), or RecipeError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return check_type(key, value, arg)
            except RecipeError as exc:
                errors.append(str(exc))
        raise RecipeError(errors[0] if errors else f"{key}: bad value {show(value)}")
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{key}: expected a list, got {show(value)}")
        (item,) = typing.get_args(tp)
        return [check_type(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{key}: expected a mapping, got {show(value)}")
        # YAML allows any scalar as a key ({1: x}); these mappings become keyword arguments, which are strings.
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise RecipeError(f"{key}: keys must be strings, got {show(bad[0])}")
        _check_plain(key, value)
        return dict(value)
    if tp is Any:
        _check_plain(key, value)
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return _finite(key, float(value))
        except OverflowError:  # an int with hundreds of digits
            raise RecipeError(f"{key}: {show(value)} is out of range") from None
    if tp is float and isinstance(value, str):
        # PyYAML reads 1e-5 (no dot) as a string; accept any float literal.
        try:
            return _finite(key, float(value))
        except ValueError:
            pass
    if tp is float and isinstance(value, float):
        return _finite(key, value)
    if tp is bool and not isinstance(value, bool):
        raise RecipeError(f"{key}: expected true or false, got {show(value)}")
    if tp is int and isinstance(value, bool):
        raise RecipeError(f"{key}: expected an integer, got {show(value)}")
    if not isinstance(value, tp):
        raise RecipeError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {show(value)}")
    return value


def _finite(key: str, value: float) -> float:
    # NaN passes every range check of the recipe (all comparisons are false) and inf is no setting: refuse both.
    if not math.isfinite(value):
        raise RecipeError(f"{key}: expected a finite number, got {value!r}")
    return value


def unbuildable_value(text: str) -> str | None:
    """``"grpo.steps (line 3)"``: where the first value of a YAML document sits that raises when it is built.

    PyYAML raises a bare ValueError, without a position, for a date like 2024-02-30 or an int over 4300
    digits; building the composed document's scalars one by one finds the key to name.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError):
        return None
    builder = yaml.SafeLoader("")
    stack: list[tuple[Any, str]] = [(root, "")]
    seen: set[int] = set()  # an anchor used inside its own value makes the node graph a cycle
    while stack:
        node, where = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key, value in reversed(node.value):
                name = key.value if isinstance(key, yaml.ScalarNode) else "?"
                stack += [(value, f"{where}.{name}" if where else str(name)), (key, where or "recipe")]
        elif isinstance(node, yaml.SequenceNode):
            stack += [(item, f"{where}[{i}]") for i, item in reversed(list(enumerate(node.value)))]
        elif isinstance(node, yaml.ScalarNode):
            try:
                builder.construct_object(node)
            except ValueError:
                return f"{key_text(where or 'recipe')[:80]} (line {node.start_mark.line + 1})"
            except yaml.YAMLError:
                continue
    return None


def check_mix(env: Any) -> None:
    """Each entry of env.mix names a known environment with a positive weight under a name of its own; the
    names are filled in (the id by default) and env.id/env.kwargs emptied, since the entries replace them."""
    from agentrl.envs.registry import spec

    names: dict[str, int] = {}
    for i, entry in enumerate(env.mix):
        key = f"env.mix[{i}]"
        if not entry.id:
            raise RecipeError(f"{key}.id: give the environment's id (see agentrl envs) or module:Class")
        if entry.weight <= 0:
            raise RecipeError(f"{key}.weight: must be positive, got {show(entry.weight)}")
        try:
            spec(entry.id)
        except UserError as exc:
            raise RecipeError(f"{key}.id: {exc}") from None
        name = entry.name or entry.id
        if "/" in name:
            given = "" if entry.name else f" (its id holds one: give {key} a name)"
            raise RecipeError(f"{key}.name: {show(name)} may not contain '/'{given}")
        if name in names:
            raise RecipeError(f"{key}.name: {show(name)} already names env.mix[{names[name]}]; give each entry a "
                              "name of its own (name: ...)")  # fmt: skip
        names[name] = i
        entry.name = name
    if env.mix:
        env.id, env.kwargs = "", {}


def check_mcp(env: Any) -> None:
    """Each MCP server of env.mcp (and of each mix entry) is a mapping with a command or a url and known keys.
    Checked here, before anything starts: the servers themselves start when the environments are built."""
    from agentrl.tools.mcp_tools import server_from

    where = [("env.mcp", env.mcp)] + [(f"env.mix[{i}].mcp", e.mcp) for i, e in enumerate(env.mix)]
    for key, servers in where:
        for i, server in enumerate(servers):
            try:
                server_from(server)
            except (UserError, TypeError, ValueError) as exc:
                raise RecipeError(f"{key}[{i}]: {exc}") from None


def refuse_beside_mix(env: Any) -> None:
    """env.mix replaces env.id and env.kwargs; both given is a recipe that says two things (empty values, as a
    printed mixed recipe holds them, are fine)."""
    if not isinstance(env, dict) or not env.get("mix"):
        return
    given = [k for k in ("id", "kwargs", "mcp") if env.get(k) not in (None, "", {}, [])]
    if given:
        raise RecipeError(
            f"env.{given[0]} and env.mix together: a mixed run names each environment in env.mix (id, weight, "
            f"kwargs and mcp per entry); remove env.{given[0]}"
        )
