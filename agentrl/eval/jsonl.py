"""Reading trajectory JSONL files back, when a line may be corrupt.

Trajectory files are appended to while a run is going, so a crash can leave the last line cut short,
and a disk or a hand edit can damage any line. One reader serves everything that reads them back
(``agentrl view``, ``agentrl eval`` resuming a run), so a damaged line is handled the same way
everywhere: it is never silently used and never a traceback. Each bad line is reported with its
number and why it was rejected:

* not valid UTF-8 (the file is read as bytes, so undecodable bytes cannot stop the reading);
* not JSON, JSON nested too deeply, a number too large to read;
* JSON that is not an object, or (with ``check``) an object that is not a trajectory row.

What happens to it is the caller's choice, by ``strict``:

* ``strict=False``: the line is skipped with a :class:`CorruptLineWarning`,
  ``"{path}:{lineno}: skipped a corrupt line ({reason})"``;
* ``strict=True``: :class:`~agentrl.errors.UserError` ``"{path}:{lineno}: corrupt line ({reason}) ..."``,
  except for the file's last line when it is not JSON at all: that is how a crash in the middle of a
  write leaves a file, so it is dropped with the warning above.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

from agentrl.errors import UserError

RowCheck = Callable[[dict[str, Any]], "str | None"]


class CorruptLineWarning(UserWarning):
    """A line of a JSONL file was skipped because it could not be read as a row."""


class _Corrupt(Exception):
    def __init__(self, reason: str, cut_short: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.cut_short = cut_short  # what a crash mid-write leaves: bytes that do not parse at all


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def read_jsonl(
    path: str | os.PathLike[str],
    *,
    check: RowCheck | None = None,
    strict: bool = False,
    replace_surrogates: bool = False,
) -> list[dict[str, Any]]:
    """The JSON objects of the file at ``path``, one per non-blank line, in order.

    Args:
        path: The file; a missing file reads as no rows.
        check: Returns why an object is not a valid row, or None when it is; rejected rows count as corrupt.
        strict: Refuse a corrupt line with a UserError instead of skipping it (see the module docstring).
        replace_surrogates: Replace lone surrogates (``"\\ud800"`` is valid JSON) with U+FFFD in every
            string, for callers that encode the rows' text as UTF-8.
    """
    name = os.fspath(path)
    rows: list[dict[str, Any]] = []
    pending: tuple[int, str] | None = None  # a line that is fatal in a strict read unless it is the last one
    try:
        # Binary lines: JSONL separates rows by \n only (str.splitlines would also split on \x1c, \u2028, ...),
        # and undecodable bytes become a reason to reject one line instead of an error that stops the reading.
        with open(name, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                if pending is not None:
                    raise UserError(f"{name}:{pending[0]}: corrupt line ({pending[1]})")
                try:
                    row = _parse(raw, check, replace_surrogates)
                except _Corrupt as bad:
                    if strict and bad.cut_short:
                        pending = (lineno, bad.reason)
                    elif strict:
                        raise UserError(f"{name}:{lineno}: corrupt line ({bad.reason})") from None
                    else:
                        _warn(name, lineno, bad.reason)
                    continue
                rows.append(row)
    except FileNotFoundError:
        return []
    except IsADirectoryError:
        raise UserError(f"{name}: is a directory, not a JSONL file") from None
    except OSError as exc:
        raise UserError(f"{name}: cannot read it ({exc.strerror or exc})") from None
    if pending is not None:  # the last line, cut short by a crash in the middle of writing it
        _warn(name, *pending)
    return rows


def _warn(name: str, lineno: int, reason: str) -> None:
    # stacklevel 3: the warning points at the code that called read_jsonl.
    warnings.warn(f"{name}:{lineno}: skipped a corrupt line ({reason})", CorruptLineWarning, stacklevel=3)


def _parse(raw: bytes, check: RowCheck | None, replace_surrogates: bool) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Corrupt(f"invalid UTF-8 at byte {exc.start + 1}", cut_short=True) from None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Corrupt(f"not JSON: {exc.msg} at column {exc.colno}", cut_short=True) from None
    except RecursionError:
        raise _Corrupt("JSON nested too deeply") from None
    except ValueError as exc:  # an integer over Python's 4300-digit limit
        raise _Corrupt(f"unreadable JSON: {' '.join(str(exc).split())[:80]}") from None
    if not isinstance(row, dict):
        raise _Corrupt(f"a JSON {_json_type(row)}, not an object")
    if replace_surrogates and _SURROGATE_ESCAPE.search(raw):  # only an escape can write one in UTF-8 JSON
        try:
            row = _without_surrogates(row)
        except RecursionError:
            raise _Corrupt("JSON nested too deeply") from None
    problem = check(row) if check is not None else None
    if problem:
        raise _Corrupt(problem)
    return row


def _json_type(value: Any) -> str:
    for types, name in ((list, "array"), (str, "string"), (bool, "boolean"), ((int, float), "number")):
        if isinstance(value, types):
            return name
    return "null"


def _without_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_without_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_without_surrogates(k): _without_surrogates(v) for k, v in value.items()}
    return value


# ----- what a trajectory row is ------------------------------------------------------------------


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _list_of(ok: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and all(ok(x) for x in v)


def _optional(ok: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or ok(v)


def _is_message(m: Any) -> bool:
    if not isinstance(m, dict) or not isinstance(m.get("role", ""), str):
        return False
    calls = m.get("tool_calls")
    return calls is None or (
        isinstance(calls, list) and all(isinstance(c, dict) and isinstance(c.get("function", {}), dict) for c in calls)
    )


def _has_call_list(m: Any) -> bool:
    return not isinstance(m, dict) or m.get("tool_calls") is None or isinstance(m.get("tool_calls"), list)


def _is_token_id(v: Any) -> bool:
    # Token ids go to a tokenizer's decode, which overflows on negative or 64-bit values.
    return _is_int(v) and 0 <= v < 2**31


class _Field(NamedTuple):
    ok: Callable[[Any], bool]
    what: str
    shape_ok: Callable[[Any], bool] | None = None
    """The container alone (for ``shape_only``); None for a scalar, which a page shows whatever it is."""
    shape_what: str = ""


_ANY = _list_of(lambda v: True)
# The fields of agentrl.rollout.Trajectory, and the ones the trainer and the evaluator write beside them.
# Each is checked only when present, so rows of older versions (with fewer fields) still read.
_FIELDS: dict[str, _Field] = {
    "group_index": _Field(_is_int, "an integer"),
    "ids": _Field(_list_of(_is_token_id), "a list of token ids", _list_of(_is_token_id), "a list of token ids"),
    "mask": _Field(_list_of(_is_int), "a list of integers", _list_of(_is_int), "a list of integers"),
    "logprobs": _Field(_list_of(_optional(_is_number)), "a list of numbers", _ANY, "a list"),
    "prompt_length": _Field(_is_int, "an integer"),
    "messages": _Field(_list_of(_is_message), "a list of messages", _list_of(_has_call_list), "a list of messages"),
    "reward": _Field(_is_number, "a number"),
    "turn_rewards": _Field(_list_of(_is_number), "a list of numbers", _ANY, "a list"),
    "reward_components": _Field(
        lambda v: isinstance(v, dict) and all(_is_number(x) for x in v.values()),
        "a mapping of names to numbers",
        lambda v: isinstance(v, dict),
        "a mapping",
    ),
    "terminated": _Field(lambda v: isinstance(v, bool), "true or false"),
    "truncated": _Field(lambda v: isinstance(v, bool), "true or false"),
    "truncated_by": _Field(_optional(lambda v: isinstance(v, str)), "a string or null"),
    "turns": _Field(_is_int, "an integer"),
    "tool_calls": _Field(_is_int, "an integer"),
    "parse_errors": _Field(_is_int, "an integer"),
    "tool_errors": _Field(_is_int, "an integer"),
    "generated_tokens": _Field(_is_int, "an integer"),
    "generation_seconds": _Field(_is_number, "a number"),
    "tool_seconds": _Field(_is_number, "a number"),
    "infra_error": _Field(_optional(lambda v: isinstance(v, str)), "a string or null"),
    "policy_version": _Field(_optional(_is_int), "an integer or null"),
    "env": _Field(_optional(lambda v: isinstance(v, str)), "a string or null"),
    "segments": _Field(
        _list_of(lambda s: isinstance(s, dict) and _list_of(_is_token_id)(s.get("ids"))),
        "a list of {ids, mask, logprobs}",
        _ANY,
        "a list",
    ),
    "prefix_breaks": _Field(_is_int, "an integer"),
    "requests": _Field(_list_of(lambda r: isinstance(r, dict)), "a list of objects", _ANY, "a list"),
    "step": _Field(_optional(_is_int), "an integer or null"),
    "advantage": _Field(_optional(_is_number), "a number or null"),
    "text": _Field(lambda v: isinstance(v, str), "a string"),
}


def trajectory_problem(row: dict[str, Any], *, shape_only: bool = False) -> str | None:
    """Why ``row`` is not a saved trajectory, or None when it is one.

    By default every field must have its type, as resuming needs: the rows become
    :class:`~agentrl.rollout.Trajectory` objects whose rewards are averaged. With ``shape_only``, only the
    shape is checked: a ``task_id``, lists and mappings where the row has them, token ids that are ids, a
    mask per token. That is what a page needs, which shows any other value as text.
    """
    if "task_id" not in row:
        return "no task_id"
    if not shape_only and not isinstance(row["task_id"], str):
        return "task_id is not a string"
    for key, field in _FIELDS.items():
        if key not in row:
            continue
        if shape_only and field.shape_ok is not None and not field.shape_ok(row[key]):
            return f"{key} is not {field.shape_what}"
        if not shape_only and not field.ok(row[key]):
            return f"{key} is not {field.what}"
    ids, mask = row.get("ids") or [], row.get("mask") or []
    if ids and isinstance(mask, list) and len(mask) != len(ids):  # one mask entry per token: read together
        return f"mask has {len(mask)} entries for {len(ids)} ids"
    return None


def viewable_problem(row: dict[str, Any]) -> str | None:
    """:func:`trajectory_problem` with ``shape_only``: what ``agentrl view`` needs of a row."""
    return trajectory_problem(row, shape_only=True)
