"""The recipe's help text: the string literal under each field of its dataclasses (cleanrl-style docs).

``agentrl train --help`` prints one line per key, ``key = default  doc``. The docs are read from the
source, so the dataclasses in :mod:`agentrl.train.recipe` stay the one place where a key is explained.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing

import yaml


def field_docs(cls: type) -> dict[str, str]:
    """The string literal under each field of a dataclass (cleanrl-style docs)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, [*body[1:], None], strict=True):
        is_field = isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
        if is_field and isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def describe(cls: type, prefix: str = "") -> list[str]:
    """One line per key of the dataclass ``cls``: ``key = default  doc``, sections in declaration order. A list of
    sections (``env.mix``) shows its entries' keys as ``env.mix[].id`` and so on."""
    lines: list[str] = []
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    default = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        item = (typing.get_args(tp) or (None,))[0]
        if dataclasses.is_dataclass(tp):
            lines.append(f"{prefix}{f.name}:  {docs.get(f.name, '')}")
            lines += describe(tp, prefix + f.name + ".")
            continue
        value = yaml.safe_dump(getattr(default, f.name), default_flow_style=True).strip().removesuffix("...")
        lines.append(f"  {prefix}{f.name} = {value.strip()}  {docs.get(f.name, '')}")
        if typing.get_origin(tp) is list and dataclasses.is_dataclass(item):
            lines += ["  " + line for line in describe(item, f"{prefix}{f.name}[].")]
    return lines
