"""Recipes: YAML plus key=value overrides, checked against the dataclasses with one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agentrl.cli import main
from agentrl.errors import RecipeError
from agentrl.train.recipe import Recipe, describe, field_docs, load_recipe, parse_overrides

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def test_defaults_validate_and_every_field_is_documented():
    recipe = load_recipe()
    assert isinstance(recipe, Recipe)
    lines = describe()
    keys = [line.split(" = ")[0].strip() for line in lines if " = " in line]
    assert "grpo.learning_rate" in keys and "lora.r" in keys and "output_dir" in keys
    assert all(len(line.split(" = ", 1)[-1].split("  ", 1)) == 2 for line in lines if " = " in line)
    assert set(field_docs(Recipe)) == {f for f in Recipe.__dataclass_fields__}


def test_yaml_and_overrides_merge(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        "model:\n  name: tiny-qwen3\nenv:\n  id: arithmetic\n  kwargs: {digits: 2}\ngrpo:\n  learning_rate: 1e-5\n"
    )
    recipe = load_recipe(path, ["grpo.steps=7", "env.kwargs.num_ops=1", "report_to=[]", "model.load_in_4bit=false"])
    assert recipe.model.name == "tiny-qwen3"
    assert recipe.env.kwargs == {"digits": 2, "num_ops": 1}
    assert recipe.grpo.learning_rate == 1e-5  # YAML reads 1e-5 as a string; it is accepted as a float
    assert recipe.grpo.steps == 7 and recipe.report_to == [] and recipe.model.load_in_4bit is False


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("grpo.stepz=3", "unknown recipe key 'grpo.stepz'"),
        ("colour=red", "unknown recipe key 'colour'"),
        ("grpo.steps=abc", "grpo.steps: expected int"),
        ("grpo.steps=2.5", "grpo.steps: expected int"),
        ("lora.r=0", "lora.r: must be at least 1"),
        ("grpo.loss_type=ppo", "grpo.loss_type: must be one of"),
        ("grpo.group_size=1", "grpo.group_size"),
        ("model.gradient_checkpointing=maybe", "model.gradient_checkpointing: expected true or false"),
        ("model=3", "model: expected a mapping"),
        ("lora.target_modules=q_proj", "lora.target_modules: expected a list"),
        ("noequals", "not key=value"),
    ],
)
def test_bad_keys_fail_in_one_line_that_names_them(override, message):
    with pytest.raises(RecipeError, match=message.replace("(", r"\(")) as info:
        load_recipe(None, [override])
    assert "\n" not in str(info.value)


def test_cli_reports_recipe_errors_in_one_line(capsys):
    assert main(["train", "grpo.stepz=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "agentrl train: error: unknown recipe key 'grpo.stepz'; valid keys here: " + err[0].split("here: ")[1]
    ]
    assert main(["train", "missing.yaml"]) == 2
    assert "recipe file not found: missing.yaml" in capsys.readouterr().err


def test_cli_help_lists_recipe_keys_with_docs(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "grpo.epsilon_high = 0.28" in out and "DAPO's clip-higher" in out
    assert "output_dir" in out and "model.name = smollm2-135m" in out


def test_print_recipe_round_trips(capsys, tmp_path):
    assert main(["train", "--print-recipe", "grpo.steps=3", "env.kwargs.digits=2"]) == 0
    printed = capsys.readouterr().out
    path = tmp_path / "printed.yaml"
    path.write_text(printed)
    again = load_recipe(path)
    assert again.grpo.steps == 3 and again.env.kwargs == {"digits": 2}


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_validate(path):
    recipe = load_recipe(path)
    assert recipe.output_dir


def test_override_values_are_yaml_scalars():
    assert parse_overrides(["a.b=1", "c=[x, y]", "d=null", "e="]) == {
        "a": {"b": 1},
        "c": ["x", "y"],
        "d": None,
        "e": "",
    }


@pytest.mark.parametrize("override", ["sampling.top_p=0.9", "sampling.top_k=20", "sampling.min_p=0.05"])
def test_training_refuses_sampling_filters_it_cannot_reproduce(override):
    with pytest.raises(RecipeError, match=re.escape(override.replace("=", "=")) + ": .*cannot reproduce") as info:
        load_recipe(None, [override])
    assert "filters are fine in agentrl eval" in str(info.value) and "\n" not in str(info.value)


def test_new_grpo_keys_are_validated():
    with pytest.raises(RecipeError, match=r"grpo\.rollout_correction: must be one of auto, none, token_truncate"):
        load_recipe(None, ["grpo.rollout_correction=tis"])
    with pytest.raises(RecipeError, match=r"grpo\.importance_sampling_level: must be one of token, sequence"):
        load_recipe(None, ["grpo.importance_sampling_level=episode"])
    with pytest.raises(RecipeError, match=r"grpo\.rollout_correction_cap: must be above 1"):
        load_recipe(None, ["grpo.rollout_correction_cap=0.5"])
    r = load_recipe(None, ["grpo.importance_sampling_level=sequence", "sampling.stop=[</answer>]"])
    assert r.grpo.importance_sampling_level == "sequence" and r.sampling.stop == ["</answer>"]


def test_recipe_hash_ignores_only_bookkeeping():
    from agentrl.train.recipe import recipe_diff, recipe_hash, recipe_to_dict

    base = load_recipe(None, [])
    same = load_recipe(None, ["output_dir=elsewhere", "save_every=1", "report_to=[]", "resume=false",
                              "env.endpoint_host=0.0.0.0"])  # fmt: skip
    other = load_recipe(None, ["grpo.beta=0.05"])
    assert recipe_hash(base) == recipe_hash(same) == recipe_hash(recipe_to_dict(same)) != recipe_hash(other)
    assert recipe_diff(recipe_to_dict(base), recipe_to_dict(other)) == ["grpo.beta: 0.0 -> 0.05"]


MIX = "env.mix=[{id: arithmetic, weight: 2, kwargs: {digits: 2}}, {id: codebreaker, name: game}]"


def test_a_mix_of_environments_is_a_list_of_entries(tmp_path):
    path = tmp_path / "mix.yaml"
    path.write_text(
        "env:\n  mix:\n    - id: arithmetic\n      weight: 2\n      kwargs: {digits: 2}\n"
        "    - id: codebreaker\n      name: game\n  test_split: test\n"
    )
    recipe = load_recipe(path)
    assert [(e.name, e.id, e.weight, e.kwargs) for e in recipe.env.mix] == [
        ("arithmetic", "arithmetic", 2.0, {"digits": 2}),  # the name defaults to the id
        ("game", "codebreaker", 1.0, {}),
    ]
    assert (recipe.env.id, recipe.env.kwargs) == ("", {})  # the entries replace them
    assert load_recipe(None, [MIX]).env.mix == recipe.env.mix


def test_single_environment_recipes_hash_as_before_a_mix_existed():
    from agentrl.train.recipe import recipe_hash, recipe_to_dict

    # The hashes of recipes from before env.mix, pinned: a checkpoint resumes only under its recipe's hash.
    assert recipe_hash(load_recipe(None, [])) == "a42406948f322522"
    assert recipe_hash(load_recipe(RECIPES / "quickstart.yaml")) == "66a24fd50e092fc9"
    old_record = recipe_to_dict(load_recipe(None, []))
    del old_record["env"]["mix"]  # a recipe.json written before env.mix existed
    assert recipe_hash(old_record) == "a42406948f322522"
    mixed = recipe_hash(load_recipe(None, [MIX]))
    assert mixed != recipe_hash(load_recipe(None, [MIX.replace("weight: 2", "weight: 3")]))


def test_a_printed_mixed_recipe_round_trips(capsys, tmp_path):
    from agentrl.train.recipe import recipe_hash

    assert main(["train", "--print-recipe", MIX]) == 0
    path = tmp_path / "printed.yaml"
    path.write_text(capsys.readouterr().out)
    assert recipe_hash(load_recipe(path)) == recipe_hash(load_recipe(None, [MIX]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([MIX, "env.id=arithmetic"], "env.id and env.mix together: .*remove env.id"),
        ([MIX, "env.kwargs.digits=3"], "env.kwargs and env.mix together"),
        (["env.mix=[{id: arithmetic, wieght: 2}]"], r"unknown recipe key 'env.mix\[0\].wieght'; valid keys here: id, "),
        (["env.mix=[{id: arithmetic, weight: 0}]"], r"env.mix\[0\].weight: must be positive"),
        (["env.mix=[{id: arithmetic, weight: -1}]"], r"env.mix\[0\].weight: must be positive"),
        (
            ["env.mix=[{id: arithmetic}, {id: arithmetic}]"],
            r"env.mix\[1\].name: 'arithmetic' already names env.mix\[0\]",
        ),
        (["env.mix=[{id: arithmatic}]"], r"env.mix\[0\].id: no environment named 'arithmatic'. Did you mean"),
        (["env.mix=[{weight: 2}]"], r"env.mix\[0\].id: give the environment's id"),
        (["env.mix=[{id: envs/x.py:E}]"], r"env.mix\[0\].name: .* may not contain '/' \(its id holds one"),
        (["env.mix={id: arithmetic}"], "env.mix: expected a list"),
        (["env.mix=[arithmetic]"], r"env.mix\[0\]: expected a mapping"),
    ],
)
def test_bad_mix_entries_fail_in_one_line(overrides, message):
    with pytest.raises(RecipeError, match=message) as info:
        load_recipe(None, overrides)
    assert "\n" not in str(info.value)


def test_help_lists_the_keys_of_a_mix_entry(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "env.mix = []" in out and "env.mix[].weight = 1.0" in out and "env.mix[].name = ''" in out
