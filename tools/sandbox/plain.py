"""A strict codec for plain values crossing the sandbox boundary.

Only these types, checked with ``type(x) is T`` so that subclasses (an ``int`` with a lying
``__eq__``) are refused: ``None``, ``bool``, ``int``, ``float``, ``str``, ``list``, ``tuple``,
``dict``, ``set``, ``frozenset``. Containers are encoded with a type tag so that a tuple does not
come back as a list and a set is compared as a set. Decoding only ever builds those types, so the
trusted side compares values whose ``==`` it knows.

This module is stdlib-only because sandbox children import it.
"""

from __future__ import annotations

import math
from typing import Any

MAX_DEPTH = 100
MAX_ITEMS = 1_000_000


class NotPlain(TypeError):
    """The value contains something other than the plain types."""


def encode(value: Any) -> Any:
    """Turn a plain value into JSON-safe tagged data; raise :class:`NotPlain` for anything else."""
    budget = [MAX_ITEMS]

    def enc(x: Any, depth: int) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise NotPlain(f"value has more than {MAX_ITEMS} items")
        if depth > MAX_DEPTH:
            raise NotPlain(f"value is nested deeper than {MAX_DEPTH}")
        t = type(x)
        if x is None or t is bool or t is str:
            return x
        if t is int:
            return x if -(2**53) <= x <= 2**53 else {"int": str(x)}
        if t is float:
            return x if math.isfinite(x) else {"float": repr(x)}
        if t is list:
            return [enc(v, depth + 1) for v in x]
        if t is tuple:
            return {"tuple": [enc(v, depth + 1) for v in x]}
        if t is set or t is frozenset:
            items = [enc(v, depth + 1) for v in x]
            return {t.__name__: items}
        if t is dict:
            return {"dict": [[enc(k, depth + 1), enc(v, depth + 1)] for k, v in x.items()]}
        raise NotPlain(f"values of type {t.__name__} cannot be compared safely; return plain data")

    return enc(value, 0)


def decode(data: Any) -> Any:
    """Inverse of :func:`encode` for data from an untrusted source; raises ValueError on anything odd."""

    def dec(x: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise ValueError("encoded value is nested too deeply")
        t = type(x)
        if x is None or t in (bool, int, float, str):
            return x
        if t is list:
            return [dec(v, depth + 1) for v in x]
        if t is dict and len(x) == 1:
            ((tag, v),) = x.items()
            if tag == "int" and type(v) is str:
                return int(v)
            if tag == "float" and v in ("nan", "inf", "-inf"):
                return float(v)
            if tag == "tuple" and type(v) is list:
                return tuple(dec(i, depth + 1) for i in v)
            if tag in ("set", "frozenset") and type(v) is list:
                items = [dec(i, depth + 1) for i in v]
                return set(items) if tag == "set" else frozenset(items)
            if tag == "dict" and type(v) is list:
                out = {}
                for pair in v:
                    if type(pair) is not list or len(pair) != 2:
                        raise ValueError("malformed dict entry")
                    out[dec(pair[0], depth + 1)] = dec(pair[1], depth + 1)
                return out
        raise ValueError(f"malformed encoded value of type {t.__name__}")

    return dec(data, 0)


def strict_equal(expected: Any, got: Any, *, rel_tol: float = 1e-9, abs_tol: float = 0.0) -> bool:
    """Type-strict equality of plain values.

    Types must match exactly, except that an ``int`` may stand where a ``float`` is expected
    (``2`` for ``2.0``); floats compare with ``math.isclose``; ``bool`` never equals ``int``.
    Unhashable set members or dict keys cannot occur: decoding would have failed.
    """
    te, tg = type(expected), type(got)
    if te is float and tg in (float, int):
        if math.isnan(expected):
            return tg is float and math.isnan(got)
        return math.isclose(expected, float(got), rel_tol=rel_tol, abs_tol=abs_tol)
    if te is not tg:
        return False
    if te in (list, tuple):
        return len(expected) == len(got) and all(
            strict_equal(a, b, rel_tol=rel_tol, abs_tol=abs_tol) for a, b in zip(expected, got, strict=True)
        )
    if te is dict:
        return expected.keys() == got.keys() and all(
            strict_equal(expected[k], got[k], rel_tol=rel_tol, abs_tol=abs_tol) for k in expected
        )
    return expected == got  # None, bool, int, str, set, frozenset of plain hashables
