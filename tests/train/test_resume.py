"""Runs that resume cleanly: ``agentrl train`` killed with SIGKILL at four points, then rerun to the end.

One run is killed four times in a row (mid-rollout, mid-update, between checkpoints, during a
checkpoint write) and finished by a fifth start. Against an uninterrupted run of the same recipe and
seed it must have: every step exactly once in metrics.jsonl, trajectories.jsonl and TensorBoard; the
same metrics and the same final adapter; the evaluation before training computed once; and a
``wall_seconds`` that covers the time of every session, killed ones included.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from agentrl.errors import RecipeError
from agentrl.testing import toy_policy_path
from agentrl.train.recipe import load_recipe
from agentrl.train.run_dir import ARTEFACTS, claim

SCRIPT = Path(__file__).with_name("killable_train.py")
ROOT = Path(__file__).resolve().parents[2]
STEPS, TASKS, GROUP = 6, 2, 4
RECIPE = [
    f"model.name={toy_policy_path()}",
    "env.id=agentrl.testing:LatinLettersEnv",
    f"grpo.steps={STEPS}",
    f"grpo.tasks_per_step={TASKS}",
    f"grpo.group_size={GROUP}",
    "grpo.max_turns=1",
    "grpo.learning_rate=3e-3",
    "grpo.micro_batch_size=16",
    "sampling.max_new_tokens=12",
    "sampling.stop=[.]",
    "lora.r=4",
    "lora.alpha=8",
    "eval.num_tasks=4",
    "save_every=2",
    "report_to=[tensorboard]",
]
# (point, n): the n-th time the run reaches the point, it is killed.
KILLS = [
    ("rollout", 2),  # during step 2's rollout: no checkpoint yet (save_every=2), eval_before done
    ("update", 3),  # during step 3's update (the rerun starts from scratch): checkpoint 2 exists
    ("after_step", 3),  # step 5 logged, checkpoint 4 written, none for step 5
    ("checkpoint", 1),  # inside the write of checkpoint 6: the rerun resumed from checkpoint 4
]


def _run(out: Path, events: Path, point: str = "none", n: int = 0) -> tuple[int, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    start = time.time()
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), point, str(n), str(events), *RECIPE, f"output_dir={out}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=ROOT,
    )
    if point == "none":
        assert proc.returncode == 0, proc.stderr[-3000:]
    else:
        assert proc.returncode == -9, f"expected a SIGKILL at {point}, got {proc.returncode}: {proc.stderr[-3000:]}"
    return proc.returncode, time.time() - start


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _tensorboard(directory: Path) -> Counter:
    """How many times each (tag, step) was written across all event files."""
    from tensorboardX.proto import event_pb2

    seen: Counter = Counter()
    for path in directory.rglob("events.out.tfevents.*"):
        data, pos = path.read_bytes(), 0
        while pos < len(data):  # TFRecord: length, crc, payload, crc
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            seen.update((v.tag, event.step) for v in event.summary.value)
            pos += 12 + length + 4
    return seen


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_killed_four_times_then_finished_equals_an_uninterrupted_run(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _run(straight, tmp_path / "straight.events")
    events = tmp_path / "resumed.events"
    for point, n in KILLS:
        _run(resumed, events, point, n)
    _run(resumed, events)
    log = _events(events)
    assert [e["event"] for e in log if e["event"].startswith("kill:")] == [f"kill:{p}" for p, _ in KILLS]

    # Every step exactly once, everywhere.
    rows = _metrics(resumed)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    trajectories = [json.loads(line) for line in (resumed / "trajectories.jsonl").read_text().splitlines()]
    assert Counter(t["step"] for t in trajectories) == {s: TASKS * GROUP for s in range(1, STEPS + 1)}
    tb = _tensorboard(resumed / "tensorboard")
    assert {step for _, step in tb} == set(range(1, STEPS + 1))
    assert set(tb.values()) == {1}, [k for k, v in tb.items() if v > 1][:5]
    assert not list((resumed / "checkpoints").glob(".tmp-*"))  # the interrupted write was cleaned up

    # The same numbers as the run that was never interrupted.
    for a, b in zip(_metrics(straight), rows, strict=True):
        for key in ("reward_mean", "reward_std", "loss", "grad_norm", "learning_rate", "generated_tokens", "kl"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["step"], key)
    wa = load_file(str(straight / "adapter" / "adapter_model.safetensors"))
    wb = load_file(str(resumed / "adapter" / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    s_straight = json.loads((straight / "summary.json").read_text())
    s_resumed = json.loads((resumed / "summary.json").read_text())
    assert s_resumed["eval_before"] == s_straight["eval_before"]
    assert s_resumed["eval_after"] == s_straight["eval_after"]
    assert s_resumed["success_difference"] == s_straight["success_difference"]

    # The evaluation before training ran once, in the first session; the one after, once, in the last.
    assert [e["event"] for e in log if e["event"].startswith("eval")] == ["eval_before", "eval_after"]

    # wall_seconds covers every session from the trainer's start to its kill or end (heartbeat: 1 s).
    sessions, start = [], None
    for e in log:
        if e["event"] == "start":
            start = e["time"]
        elif e["event"].startswith("kill:") or e["event"] == "end":
            sessions.append(e["time"] - start)
    assert len(sessions) == len(KILLS) + 1
    assert sum(sessions) - 1.5 * len(sessions) <= s_resumed["wall_seconds"] <= sum(sessions) + 1.0


def _recipe(out: Path, *extra: str):
    return load_recipe(None, [*RECIPE, f"output_dir={out}", *extra])


def test_a_different_recipe_or_a_foreign_directory_is_refused(tmp_path):
    out = tmp_path / "run"
    claim(out, _recipe(out))
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    claim(out, _recipe(out, "report_to=[]", "save_every=1"))  # bookkeeping keys may change on resume
    with pytest.raises(RecipeError, match=r"different recipe \(grpo.steps: 6 -> 7\); pass overwrite=true"):
        claim(out, _recipe(out, "grpo.steps=7"))
    with pytest.raises(RecipeError, match="already holds a run of this recipe; pass resume=true"):
        claim(out, _recipe(out, "resume=false"))
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("not a run")
    with pytest.raises(RecipeError, match="not empty and holds no agentrl run"):
        claim(other, _recipe(other, "overwrite=true"))
    # overwrite deletes the run's own files, never anything else.
    (out / "mine.txt").write_text("keep me")
    claim(out, _recipe(out, "grpo.steps=7", "overwrite=true"))
    assert not (out / "metrics.jsonl").exists() and (out / "mine.txt").read_text() == "keep me"
    assert json.loads((out / "recipe.json").read_text())["grpo"]["steps"] == 7
    assert "recipe.json" in ARTEFACTS


def test_a_directory_whose_run_never_started_is_free(tmp_path):
    out = tmp_path / "run"
    claim(out, _recipe(out, "model.name=no-such-model"))  # the run died loading its model: recipe.json only
    claim(out, _recipe(out))  # the corrected recipe may use the directory
    assert json.loads((out / "recipe.json").read_text())["model"]["name"] == str(toy_policy_path())


def test_overwrite_says_what_it_deletes(tmp_path):
    out = tmp_path / "run"
    claim(out, _recipe(out))
    (out / "checkpoints" / "step-000004").mkdir(parents=True)
    (out / "checkpoints" / "step-000004" / "state.json").write_text("{}")
    with pytest.warns(UserWarning, match=r"deleting the run .* \(checkpointed at step 4\)"):
        claim(out, _recipe(out, "overwrite=true"))
    assert not (out / "checkpoints").exists()


@pytest.mark.slow
def test_a_checkpoint_resolved_differently_on_this_machine_is_refused(tmp_path):
    from agentrl.train.trainer import Trainer

    out = tmp_path / "run"
    quick = ["grpo.steps=1", "save_every=1", "eval.before=false", "eval.after=false", "report_to=[]"]
    Trainer(_recipe(out, *quick), show_progress=False).train()
    state = out / "checkpoints" / "step-000001" / "state.json"
    saved = json.loads(state.read_text())
    assert saved["resolved"] == {
        "backend": "hf",
        "rollout_correction": "none",
        "load_in_4bit": False,
        "loader": "transformers",
        "dtype": "float32",
    }
    saved["resolved"]["backend"] = "vllm"  # as if 'auto' had meant vLLM where the run started
    state.write_text(json.dumps(saved))
    with pytest.raises(RecipeError, match="backend: 'vllm' -> 'hf'"):
        Trainer(_recipe(out, *quick), show_progress=False).train()


def test_the_cli_refuses_another_recipe_in_one_line(tmp_path, capsys):
    from agentrl.cli import main

    out = tmp_path / "run"
    claim(out, _recipe(out))
    (out / "metrics.jsonl").write_text('{"step": 1}\n')  # the run got somewhere
    assert main(["train", *RECIPE, f"output_dir={out}", "grpo.learning_rate=1e-3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "grpo.learning_rate: 0.003 -> 0.001" in err[0] and "overwrite=true" in err[0]
