"""The shipped recipes load, and what their comments claim about memory is what the preflight says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agentrl.train.memory import estimate_memory
from agentrl.train.memory_report import CARDS
from agentrl.train.recipe import load_recipe

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))
GIB = 2**30


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads(path):
    load_recipe(path)


@pytest.mark.parametrize("path", [p for p in RECIPES if p.name.startswith("qwen3-")], ids=lambda p: p.name)
def test_gpu_recipes_state_the_preflight_verdict_it_gives(path):
    text = path.read_text()
    verdict = r"(fits|does not fit)"
    claim = re.search(rf"peak ([\d.]+) GiB on CUDA\.\n#\s+24 GB card: {verdict}.*80 GB card: {verdict}", text)
    assert claim, f"{path.name} states no preflight verdict"
    estimate = estimate_memory(load_recipe(path), device="cuda")
    assert f"{estimate.total / GIB:.1f}" == claim.group(1)
    for card, verdict in zip(CARDS.values(), claim.groups()[1:], strict=True):
        assert verdict == ("fits" if estimate.total <= card else "does not fit")
    assert "fits one 24 GB GPU" not in text  # no claim without an estimate or a measurement behind it
