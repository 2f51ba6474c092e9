"""Fuzzing recipes: any YAML file and any ``key=value`` overrides either load or fail in one line.

``agentrl train`` prints a :class:`RecipeError` as one line and exits with status 2; any other
exception is shown as a traceback, as a bug. So for arbitrary documents, keys and values,
``load_recipe`` must return a valid :class:`Recipe` or raise ``RecipeError`` whose message is a
single line naming the key at fault.
"""

from __future__ import annotations

import dataclasses
import math
import typing

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agentrl.errors import RecipeError, UserError
from agentrl.train.recipe import Recipe, load_recipe

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


def _keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted recipe key, sections included."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        out.append(prefix + f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            out += _keys(hints[f.name], prefix + f.name + ".")
    return out


KEYS = _keys(Recipe)
ANY_CHAR = st.characters(codec=None, categories=None)
# What people (and typos) put after '=': YAML scalars and flow collections of every kind, and junk.
RAW_VALUES = st.one_of(
    st.sampled_from(
        [
            "",
            "1",
            "0",
            "-1",
            "2.5",
            "1e-5",
            "1e999",
            ".nan",
            ".inf",
            "-.inf",
            "nan",
            "true",
            "no",
            "null",
            "~",
            "[]",
            "{}",
            "[a, b]",
            "{a: 1}",
            "{1: 2}",
            "{null: 1, true: 2}",
            "[1, [2, [3]]]",
            "&a [*a]",
            "&a {x: *a}",
            "2024-02-30",
            "2001-12-14t21:59:43.10-25:00",
            "!!timestamp 2024-13-01",
            "!!binary aGVsbG8=",
            "!!python/name:os.system",
            "!!set {a, b}",
            "1" * 5000,
            "[" * 1000,  # PyYAML recurses per level: RecursionError
            "{" * 1000,
            "- a",
            "a: b",
            "'unclosed",
            '"\\ud800"',
            "\t",
            "\x00",
            "=",
            "a=b",
            "vllm-server",
            "http://localhost:1",
        ]
    ),
    st.text(ANY_CHAR, max_size=20),
    st.integers().map(str),
    st.floats().map(repr),
)
OVERRIDE_KEYS = st.sampled_from(KEYS) | st.sampled_from(KEYS).map(lambda k: k + ".x") | st.text(ANY_CHAR, max_size=15)


def check_error(exc: RecipeError, named: list[str]) -> None:
    """One line (whatever the key or value held), naming one of ``named``."""
    message = str(exc)
    assert isinstance(exc, UserError)
    assert message and len(message.splitlines()) == 1, message
    assert any(n in message or repr(n)[1:-1] in message for n in named), message


def _names(key: str) -> list[str]:
    """The key and each dotted prefix of it: an unknown key is reported at its first unknown component."""
    parts = key.strip().split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))] + [p for p in parts if p]


@FUZZ
@given(st.sampled_from(KEYS), RAW_VALUES)
@example("sft.epochs", "-1")
@example("server.retries", "-1")
@example("grpo.learning_rate", ".nan")
@example("env.kwargs", "&a [*a]")
def test_one_override_of_a_known_key(key, raw):
    try:
        recipe = load_recipe(None, [f"{key}={raw}"])
    except RecipeError as exc:
        # Cross-key rules name the other key too (backend vllm-server needs server_urls).
        check_error(exc, [key])
    else:
        check_valid(recipe)


@FUZZ
@given(st.lists(st.tuples(OVERRIDE_KEYS, RAW_VALUES), max_size=4), st.booleans())
def test_any_overrides(items, with_equals):
    overrides = [f"{k}={v}" if with_equals else f"{k}{v}" for k, v in items]
    try:
        recipe = load_recipe(None, overrides)
    except RecipeError as exc:
        keys = [o.partition("=")[0] for o in overrides]  # the key is what comes before the first '='
        # A line that is not key=value is quoted (the start of it, when it is long).
        check_error(exc, [n for k in keys for n in _names(k)] + KEYS + [repr(o)[:40] for o in overrides])
    else:
        check_valid(recipe)


def check_valid(recipe: Recipe) -> None:
    """A loaded recipe holds what its types promise: finite numbers, string keys in env.kwargs."""
    assert isinstance(recipe, Recipe)
    for key in KEYS:
        value = recipe
        for part in key.split("."):
            value = getattr(value, part)
        if isinstance(value, float):
            assert math.isfinite(value), key
    assert all(isinstance(k, str) for k in recipe.env.kwargs)


# ----- whole YAML documents -------------------------------------------------------------------------

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(ANY_CHAR.filter(lambda c: c.isprintable()), max_size=15)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(KEYS) | SCALARS.filter(lambda v: v == v), inner, max_size=3)
    ),
    max_leaves=10,
)
# Documents shaped like recipes: known sections and keys (with their dotted parts split), arbitrary values.
SHAPED = st.dictionaries(
    st.sampled_from([k for k in KEYS if "." not in k]) | SCALARS.filter(lambda v: v == v),
    VALUES | st.dictionaries(st.sampled_from([k.split(".")[-1] for k in KEYS]), VALUES, max_size=3),
    max_size=4,
)
RAW_DOCUMENTS = st.sampled_from(
    [
        "- 1\n- 2\n",
        "just a string",
        "0",
        "42",
        "[[1, 2]]",
        "{1: 2}",
        "{1: 2, a: 3}",
        "grpo:\n  steps: " + "9" * 5000 + "\n",
        "grpo:\n  steps: " + "[" * 1000 + "\n",
        "seed: 2024-02-30\n",
        "x: &a [*a]\nseed: 2024-02-30\n",  # finding the bad value's key must not loop over the cycle
        "env: &a {kwargs: {x: *a}}\n",
        "env:\n  kwargs: &k {self: *k}\n",
        "a: 1\n---\nb: 2\n",
        "grpo:\n\tsteps: 1\n",
        "? [1]\n: 2\n",
        "grpo: !!python/object:object {}\n",
        "\ufeffgrpo:\n  steps: 3\n",
        "model:\n  name: x\nmodel:\n  name: y\n",
        "grpo: {steps: .nan}\n",
        "eval: {temperature: .inf}\n",
        "sft: {epochs: -1}\n",
        "server: {timeout: 0}\n",
    ]
)


@FUZZ
@given(
    SHAPED.map(lambda d: yaml.safe_dump(d, allow_unicode=True))
    | RAW_DOCUMENTS
    | st.text(ANY_CHAR, max_size=80).map(lambda s: s.encode("utf-8", "surrogatepass"))
    | st.binary(max_size=80)
)
def test_any_recipe_file(tmp_path_factory, document):
    path = tmp_path_factory.mktemp("recipe") / "r.yaml"
    if isinstance(document, bytes):
        path.write_bytes(document)
    else:
        path.write_text(document, encoding="utf-8")
    try:
        recipe = load_recipe(path)
    except RecipeError as exc:
        # The file itself for unreadable documents; the key otherwise.
        check_error(exc, [str(path), *KEYS, "recipe"] + [repr(k) for k in _top_keys(document)])
    else:
        check_valid(recipe)


def _top_keys(document: str | bytes) -> list[str]:
    try:
        data = yaml.safe_load(document)
    except Exception:
        return []
    return [str(k) for k in data] if isinstance(data, dict) else []


def test_recipe_errors_name_the_exact_key():
    """A few rules that used to name a whole section now name the key at fault."""
    cases = {
        "sft.epochs=0": "sft.epochs",
        "sft.demonstrations=-1": "sft.demonstrations",
        "sft.learning_rate=-1": "sft.learning_rate",
        "sft.batch_size=0": "sft.batch_size",
        "sft.gradient_accumulation_steps=0": "sft.gradient_accumulation_steps",
        "server.timeout=0": "server.timeout",
        "server.retries=-1": "server.retries",
        "server.max_failure_rate=2": "server.max_failure_rate",
        "grpo.learning_rate=.nan": "grpo.learning_rate",
        "eval.temperature=.inf": "eval.temperature",
        "seed=2024-02-30": "seed",
        "grpo.steps=" + "9" * 5000: "grpo.steps",
        "env.kwargs=&a [*a]": "env.kwargs",
        "env.kwargs={1: 2}": "env.kwargs",
    }
    for override, key in cases.items():
        try:
            load_recipe(None, [override])
        except RecipeError as exc:
            assert str(exc).startswith(key + ":"), (override, str(exc))
            assert len(str(exc).splitlines()) == 1
        else:
            raise AssertionError(f"{override[:40]} loaded")


def test_a_value_yaml_cannot_build_is_named_with_its_line(tmp_path):
    """PyYAML raises a bare ValueError (no position) for these; the message still says where they are."""
    cases = {
        "seed: 2024-02-30\n": "seed (line 1)",
        "grpo:\n  steps: " + "9" * 5000 + "\n": "grpo.steps (line 2)",
        "env:\n  kwargs:\n    when: [2024-01-01, 2024-13-01]\n": "env.kwargs.when[1] (line 3)",
    }
    for document, where in cases.items():
        path = tmp_path / "r.yaml"
        path.write_text(document)
        try:
            load_recipe(path)
        except RecipeError as exc:
            assert str(exc).startswith(f"{path}: {where}: cannot read the value: "), str(exc)
            assert len(str(exc).splitlines()) == 1
        else:
            raise AssertionError(f"{document[:30]!r} loaded")
