"""Fuzzing the trajectory JSONL reader shared by ``agentrl view`` and ``agentrl eval``'s resume.

A trajectories file may end in a line cut short by a crash, and any line may be damaged: text that
is not JSON, JSON that is not an object or not a trajectory row, bytes that are not UTF-8. Whatever
the file holds, a corrupt line is reported with its line number and never used; nothing raises
except the documented UserError of a strict read:

* ``read_jsonl`` (lenient): the good rows, in order, and one warning ``"{path}:{lineno}: skipped a
  corrupt line (...)"`` per bad line;
* ``read_rows`` (eval resume, strict): a cut-short last line is dropped with that warning, any other
  bad line is a UserError naming it;
* ``agentrl view`` writes its page from the good rows and warns about the others.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentrl.errors import UserError
from agentrl.eval.jsonl import CorruptLineWarning, read_jsonl, trajectory_problem, viewable_problem
from agentrl.eval.run import read_rows
from agentrl.eval.view import write_view
from agentrl.rollout.trajectory import Trajectory

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
VIEW = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))

ANY_CHAR = st.characters(codec=None, categories=None)
TEXT = st.text(ANY_CHAR, max_size=20)
NUMBER = st.integers(-(10**6), 10**6) | st.floats(allow_nan=False, width=32)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool", "other"]), "content": TEXT | st.none()},
    optional={
        "tool_calls": st.lists(
            st.fixed_dictionaries({"function": st.fixed_dictionaries({"name": TEXT, "arguments": TEXT})}), max_size=2
        ),
        "name": TEXT,
        "reasoning_content": TEXT,
    },
)


@st.composite
def trajectory_rows(draw) -> dict:
    """A row as the trainer or the evaluator writes it: Trajectory.to_dict(), some keys beside."""
    n = draw(st.integers(0, 6))
    row = Trajectory(
        task_id=draw(TEXT),
        group_index=draw(st.integers(0, 7)),
        ids=draw(st.lists(st.integers(0, 2**31 - 1), min_size=n, max_size=n)),
        mask=draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)),
        messages=draw(st.lists(MESSAGE, max_size=4)),
        reward=draw(NUMBER),
        turn_rewards=draw(st.lists(NUMBER, max_size=3)),
        reward_components=draw(st.dictionaries(TEXT, NUMBER, max_size=3)),
        turns=draw(st.integers(0, 5)),
        infra_error=draw(st.none() | TEXT),
    ).to_dict()
    extra = draw(st.fixed_dictionaries({}, optional={"step": st.integers(0, 99), "advantage": NUMBER | st.none()}))
    return {**row, **extra}


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def bad_field_rows(draw) -> dict:
    """A real row with one field of the wrong type (what a hand edit or another tool might leave)."""
    row = draw(trajectory_rows())
    key = draw(st.sampled_from(sorted(row)))
    row[key] = draw(JSON_VALUES)
    return row


def dumps(row: dict, ascii_only: bool) -> bytes:
    """The line a writer would produce: raw UTF-8, or ASCII with escapes (lone surrogates can only be escaped)."""
    try:
        return json.dumps(row, ensure_ascii=ascii_only).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(row).encode("ascii")


class Line(NamedTuple):
    raw: bytes
    good: bool
    """A trajectory row, as eval resume reads it (every field of its type)."""
    viewable: bool
    """A row agentrl view shows (the shape of a trajectory; any scalar is shown as text)."""
    cut_short: bool = False
    """What a crash mid-write leaves: bytes that are not JSON at all."""


@st.composite
def lines(draw) -> Line:
    kind = draw(st.sampled_from(["row", "row", "row", "blank", "cut", "text", "non_object", "bad_field", "bytes"]))
    ascii_only = draw(st.booleans())
    if kind == "row":
        return Line(dumps(draw(trajectory_rows()), ascii_only), True, True)
    if kind == "blank":
        return Line(draw(st.sampled_from([b"", b" ", b"\t", b"\r"])), True, True)
    if kind == "cut":
        raw = dumps(draw(trajectory_rows()), ascii_only)
        return Line(raw[: draw(st.integers(1, len(raw) - 1))], False, False, True)
    if kind == "text":
        raw = draw(st.text(ANY_CHAR, min_size=1, max_size=30).filter(lambda s: s.strip() and "\n" not in s))
        try:
            json.loads(raw)
            raw = "x" + raw  # a JSON scalar is the "non_object" kind
        except ValueError:
            pass
        return Line(raw.encode("utf-8", "surrogatepass"), False, False, True)
    if kind == "non_object":
        return Line(dumps(draw(JSON_VALUES.filter(lambda v: not isinstance(v, dict))), ascii_only), False, False)
    if kind == "bad_field":
        # The new value may happen to fit; the checks themselves are pinned down one by one below.
        row = draw(bad_field_rows())
        return Line(dumps(row, ascii_only), trajectory_problem(row) is None, viewable_problem(row) is None)
    raw = draw(st.binary(min_size=1, max_size=30).filter(lambda b: b"\n" not in b and b.strip()))
    try:
        json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return Line(raw, False, False, True)
    return Line(b"\xff" + raw, False, False, True)


FILES = st.tuples(st.lists(lines(), max_size=8), st.booleans())


def write(path: Path, file_lines: list[Line], final_newline: bool) -> None:
    data = b"\n".join(line.raw for line in file_lines)
    path.write_bytes(data + (b"\n" if final_newline and file_lines else b""))


def expected(file_lines: list[Line], *, view: bool = False) -> tuple[list[int], list[dict]]:
    """Line numbers of the bad lines, and the good rows, as the file says."""
    good = [line.viewable if view else line.good for line in file_lines]
    bad = [i + 1 for i, line in enumerate(file_lines) if not good[i] and line.raw.strip()]
    rows = [json.loads(line.raw) for i, line in enumerate(file_lines) if good[i] and line.raw.strip()]
    return bad, rows


def corrupt_line_numbers(caught, path: Path) -> list[int]:
    pattern = re.compile(re.escape(str(path)) + r":(\d+): skipped a corrupt line \(.+\)$")
    found = []
    for w in caught:
        assert issubclass(w.category, CorruptLineWarning)
        m = pattern.match(str(w.message))
        assert m, str(w.message)
        found.append(int(m.group(1)))
    return found


def same_rows(a: list[dict], b: list[dict]) -> bool:
    # As JSON text: NaN (which a bad-field row may hold) compares equal to itself there.
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@FUZZ
@given(FILES)
def test_lenient_read_skips_and_names_every_corrupt_line(tmp_path_factory, file):
    file_lines, final_newline = file
    path = tmp_path_factory.mktemp("jsonl") / "trajectories.jsonl"
    write(path, file_lines, final_newline)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = read_jsonl(path, check=trajectory_problem)
    bad, good_rows = expected(file_lines)
    assert corrupt_line_numbers(caught, path) == bad
    assert same_rows(rows, good_rows)


def _last_nonblank(file_lines: list[Line]) -> int:
    return max((i for i, line in enumerate(file_lines) if line.raw.strip()), default=-1)


@FUZZ
@given(FILES)
def test_eval_resume_drops_a_cut_last_line_and_refuses_others(tmp_path_factory, file):
    file_lines, final_newline = file
    path = tmp_path_factory.mktemp("jsonl") / "trajectories.jsonl"
    write(path, file_lines, final_newline)
    bad, good_rows = expected(file_lines)
    last = _last_nonblank(file_lines)
    # The last line may be a crash's leftover (any bytes that are not JSON); anything else bad is refused.
    tolerated = [last + 1] if last >= 0 and file_lines[last].cut_short else []
    refused = [n for n in bad if n not in tolerated]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if refused:
            with pytest.raises(UserError) as info:
                read_rows(path)
            message = str(info.value)
            assert message.startswith(f"{path}:{refused[0]}: corrupt line (") and "\n" not in message
            assert "--overwrite" in message
            return
        rows = read_rows(path)
    assert corrupt_line_numbers(caught, path) == [n for n in bad if n in tolerated]
    assert same_rows(rows, good_rows)
    for row in rows:  # what resume does with them
        Trajectory.from_dict(row)


def test_missing_file_has_no_rows(tmp_path):
    assert read_jsonl(tmp_path / "nope.jsonl") == [] and read_rows(tmp_path / "nope.jsonl") == []


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b'{"task_id": "a"}\n\xff\xfe\n{"task_id": "b"}\n', "invalid UTF-8 at byte 1"),
        (b'{"task_id": "a"}\n[1, 2]\n{"task_id": "b"}\n', "a JSON array, not an object"),
        (b'{"task_id": "a"}\n{"task_id": "a", "reward": "high"}\n{"task_id": "b"}\n', "reward is not a number"),
        (b'{"task_id": "a"}\n{"reward": 1}\n{"task_id": "b"}\n', "no task_id"),
        (b'{"task_id": "a"}\n{"task_id": "a", "ids": [1, 2], "mask": [1]}\n{"task_id": "b"}\n', "mask has 1"),
        (b'{"task_id": "a"}\n{"task_id": "a", "ids": [-1]}\n{"task_id": "b"}\n', "ids is not a list of token ids"),
        (b'{"task_id": "a"}\n{"task_id": ' + b"[" * 100_000 + b"\n" + b'{"task_id": "b"}\n', "JSON nested too deeply"),
        (b'{"task_id": "a"}\n{"task_id": "a", "n": ' + b"9" * 5000 + b'}\n{"task_id": "b"}\n', "unreadable JSON"),
    ],
)
def test_each_kind_of_corrupt_line_is_named(tmp_path, content, reason):
    path = tmp_path / "trajectories.jsonl"
    path.write_bytes(content)
    with pytest.warns(CorruptLineWarning, match=re.escape(f"{path}:2: skipped a corrupt line ({reason}")):
        rows = read_jsonl(path, check=trajectory_problem)
    assert [r["task_id"] for r in rows] == ["a", "b"]
    with pytest.raises(UserError, match=re.escape(f"{path}:2: corrupt line ({reason}")):
        read_rows(path)


def test_lone_surrogates_can_be_replaced(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"task_id": "a\\ud800b", "x": ["\\udfff", {"\\ud83d": 1}], "ok": "\\ud83d\\ude00"}\n')
    (row,) = read_jsonl(path)
    assert row["task_id"] == "a\ud800b"  # kept by default: JSON allows it, and it round-trips
    (row,) = read_jsonl(path, replace_surrogates=True)
    assert row == {"task_id": "a\ufffdb", "x": ["\ufffd", {"\ufffd": 1}], "ok": "\U0001f600"}


# ----- agentrl view, end to end ----------------------------------------------------------------------


@VIEW
@given(FILES, st.lists(lines(), max_size=3))
def test_view_writes_the_page_from_any_trajectories_file(tmp_path_factory, file, eval_lines):
    file_lines, final_newline = file
    run = tmp_path_factory.mktemp("run")
    write(run / "trajectories.jsonl", file_lines, final_newline)
    (run / "eval").mkdir()
    write(run / "eval" / "trajectories.jsonl", eval_lines, True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        page_path = write_view(run, limit=0)
    page = page_path.read_text(encoding="utf-8")  # valid UTF-8 whatever the rows held
    bad, good_rows = expected(file_lines, view=True)
    eval_bad, eval_good = expected(eval_lines, view=True)
    assert f"<h2>trajectories.jsonl</h2><p class='meta'>{len(good_rows)} episodes" in page
    assert f"<h2>eval/trajectories.jsonl</h2><p class='meta'>{len(eval_good)} episodes" in page
    assert page.count("<div class='ep ") == len(good_rows) + len(eval_good)
    warned = [str(w.message) for w in caught if issubclass(w.category, CorruptLineWarning)]
    assert len(warned) == len(bad) + len(eval_bad)
    assert all(f"{run / 'trajectories.jsonl'}:{n}: skipped a corrupt line" in " ".join(warned) for n in bad)
