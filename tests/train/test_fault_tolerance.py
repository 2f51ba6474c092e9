"""The trainer under injected faults: training goes on, the weights never see a non-finite value, nothing written
is lost or half-written, and the run stops with one line only when a failure limit is crossed."""

from __future__ import annotations

import errno
import json
import math
import subprocess
import sys
import warnings

import pytest
import torch

import agentrl
from agentrl import faults
from agentrl.errors import RunStopped
from agentrl.testing import ScriptedBackend, product_policy, toy_policy_path
from agentrl.train.advantages import group_advantages
from agentrl.train.metrics import read_metrics
from agentrl.train.recipe import load_recipe
from agentrl.train.trainer import Trainer

pytestmark = pytest.mark.slow


def _latin(out, *extra):
    return load_recipe(
        None,
        [
            f"model.name={toy_policy_path()}",
            "env.id=agentrl.testing:LatinLettersEnv",
            "grpo.tasks_per_step=2",
            "grpo.group_size=4",
            "grpo.max_turns=1",
            "grpo.zero_variance=keep",
            "grpo.learning_rate=3e-3",
            "sampling.max_new_tokens=8",
            "sampling.stop=[.]",
            "lora.r=4",
            "eval.before=false",
            "eval.after=false",
            "report_to=[]",
            f"output_dir={out}",
            *extra,
        ],
    )


def _weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _unchanged(a, b) -> bool:
    return all(torch.equal(a[n], b[n]) for n in a)


def test_a_non_finite_loss_or_gradient_skips_the_update_and_nothing_else(tmp_path):
    trainer = Trainer(_latin(tmp_path / "run", "grpo.steps=3"), show_progress=False)
    try:
        before = _weights(trainer.model)
        with (
            faults.inject("loss", lambda loss: loss * float("nan"), times=1) as f,
            pytest.warns(RuntimeWarning, match="loss is not finite.*skipped"),
        ):
            m1 = trainer.train_step()
        assert f.fired == 1 and m1["skipped_updates"] == 1 and m1["updates"] == 1 and math.isnan(m1["loss"])
        assert _unchanged(before, _weights(trainer.model))
        assert not trainer.optimizer.state  # AdamW's moments never saw it either
        assert all(p.grad is None for p in trainer.model.parameters() if p.requires_grad)

        def poison(params):
            params[0].grad.view(-1)[0] = float("inf")

        with faults.inject("gradients", poison, times=1), pytest.warns(RuntimeWarning, match="gradient norm"):
            m2 = trainer.train_step()
        assert m2["skipped_updates"] == 1 and _unchanged(before, _weights(trainer.model))

        assert trainer.scheduler.last_epoch == 2  # skipped steps still count in the schedule
        for _ in range(3):  # the run goes on: the next clean step with any reward variance updates
            m3 = trainer.train_step()
            assert m3["skipped_updates"] == 0
            if m3["reward_std"] > 0:
                break
        after = _weights(trainer.model)
        assert not _unchanged(before, after)
        assert all(torch.isfinite(v).all() for v in after.values())
    finally:
        trainer.close()


def test_updates_that_are_never_finite_stop_the_run_with_one_line(tmp_path):
    trainer = Trainer(_latin(tmp_path / "run", "grpo.steps=5", "limits.max_skipped_steps=2"), show_progress=False)
    before = _weights(trainer.model)
    with faults.inject("loss", lambda loss: loss * float("inf")), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RunStopped) as err:
            trainer.train()
    message = str(err.value)
    assert "\n" not in message and "not finite for 2 steps in a row" in message
    assert "limits.max_skipped_steps=2" in message
    assert trainer.step == 2 and _unchanged(before, _weights(trainer.model))
    assert [r["skipped_updates"] for r in read_metrics(tmp_path / "run")] == [1, 1]


def test_too_many_infrastructure_failures_stop_the_run_and_fewer_do_not(tmp_path):
    down = faults.raises(lambda: ConnectionError("connection refused"))
    trainer = Trainer(_latin(tmp_path / "a", "grpo.steps=3"), show_progress=False)
    with faults.inject("generate", down), pytest.raises(RunStopped) as err:
        trainer.train()
    message = str(err.value)
    assert "stopped at step 1: 8 of the last 8 episodes (100.0%" in message
    assert "limits.max_infra_failure_rate=0.5" in message and "connection refused" in message and "\n" not in message

    # One garbage completion in every batch (1 of 8 episodes), under a limit of one half: every step is
    # trained and each failure counted.
    def garbage(completions):
        completions[0].token_ids[0] = -5

    trainer = Trainer(_latin(tmp_path / "b", "grpo.steps=4"), show_progress=False)
    with faults.inject("generate", garbage) as f:
        trainer.train()
    rows = read_metrics(tmp_path / "b")
    assert len(rows) == 4 and f.fired == 4
    assert [r["infra_failures"] for r in rows] == [1, 1, 1, 1] and rows[0]["infra_failure_rate"] == 1 / 8


def test_a_full_disk_loses_no_trajectory_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    full = OSError(errno.ENOSPC, "No space left on device")

    def disk_full_at_step_1(path):
        name = str(path)
        if ("trajectories" in name or ".tmp-step-000001" in name or "metrics" in name) and not hits.get(name):
            hits[name] = True
            raise full

    hits: dict[str, bool] = {}
    trainer = Trainer(_latin(out, "grpo.steps=2", "save_every=1"), show_progress=False)
    with faults.inject("write", disk_full_at_step_1), pytest.warns(RuntimeWarning, match="No space left"):
        trainer.train()
    assert len(hits) == 3  # the trajectories, the metrics line and the checkpoint of step 1 all failed once
    lines = (out / "trajectories.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1] * 8 + [2] * 8  # written with step 2's
    assert [r["step"] for r in read_metrics(out)] == [1, 2]
    assert read_metrics(out)[1]["write_failures"] == 2  # trajectories and checkpoint; metrics retry separately
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step-000002"]  # step 1's failed and left nothing behind; step 2's was written
    assert json.loads((out / "summary.json").read_text())["steps"] == 2


def test_a_write_cut_short_by_the_disk_leaves_no_half_line(tmp_path):
    """A real partial write: the file-size limit lets the first bytes through and fails the rest."""
    path = tmp_path / "t.jsonl"
    script = f"""
import resource, signal
from pathlib import Path
from agentrl.train.guards import append_lines
path = Path({str(path)!r})
append_lines(path, ['{{"step": 1}}'])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size + 100, resource.RLIM_INFINITY))
for mode in ("a", "w"):  # appending cuts back; replacing leaves the old file whole
    try:
        append_lines(path, ['{{"step": 2, "pad": "' + 'x' * 500 + '"}}'], mode=mode)
    except OSError as exc:
        print("failed:", exc.errno)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["failed:", str(errno.EFBIG)] * 2
    assert path.read_text() == '{"step": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["t.jsonl"]  # no temporary file left behind


def test_a_training_run_with_a_tenth_of_its_sandbox_calls_faulted(tmp_path):
    """10% of tool calls fail in the tool (InfraError) or in the sandbox client (the server's connection lost).

    Run A is faulted; run B is the same run without faults. Every episode makes one sandbox call, and the
    scripted policy's output does not depend on the weights, so both runs play the same episodes: A must
    exclude exactly the faulted ones, and each of A's advantages must equal the advantage computed from B's
    rewards with the faulted episodes taken out. No NaN reaches the weights.
    """
    from agentrl.tools.sandbox.base import SandboxError

    def run(out, inject: bool):
        recipe = load_recipe(
            None,
            [
                f"model.name={toy_policy_path()}",
                "env.id=agentrl.testing:ProductEnv",
                "grpo.steps=2",
                "grpo.tasks_per_step=3",
                "grpo.group_size=6",
                "grpo.max_turns=3",
                "grpo.zero_variance=keep",
                "grpo.learning_rate=1e-3",
                "sampling.max_new_tokens=64",
                "lora.r=4",
                "eval.before=false",
                "eval.after=false",
                "report_to=[]",
                f"output_dir={out}",
            ],
        )
        trainer = Trainer(recipe, show_progress=False)
        trainer.engine.backend = ScriptedBackend(trainer.tokenizer, product_policy)
        trainer.initial = _weights(trainer.model)
        if not inject:
            trainer.train()
            return trainer, 0
        cells = {"n": 0}

        def lose_connection(sandbox, index, msg):
            if msg.get("op") == "cell":
                cells["n"] += 1
                raise SandboxError("connection to the sandbox server lost")

        tool = faults.inject("tool.call", faults.raises(lambda: agentrl.InfraError("tool backend down")), rate=0.05)
        sand = faults.inject("sandbox.request", lose_connection, rate=0.05, seed=1)
        with tool as t, sand, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the scripted policy's logprobs are not the model's
            trainer.train()
        return trainer, t.fired + cells["n"]

    faulted, injected = run(tmp_path / "a", True)
    run(tmp_path / "b", False)
    rows = read_metrics(tmp_path / "a")
    assert len(rows) == 2 and injected >= 2  # about 10% of 36 calls
    assert sum(r["infra_failures"] for r in rows) == injected
    assert all(torch.isfinite(p).all() for p in faulted.model.parameters())
    assert not _unchanged(faulted.initial, _weights(faulted.model))  # it trained

    def episodes(out):
        rows = map(json.loads, (out / "trajectories.jsonl").read_text().splitlines())
        return {(r["step"], r["task_id"], r["group_index"]): r for r in rows}

    a, b = episodes(tmp_path / "a"), episodes(tmp_path / "b")
    assert a.keys() == b.keys() and len(a) == 36
    excluded = {k for k, r in a.items() if r["infra_error"]}
    assert len(excluded) == injected and all(a[k]["advantage"] is None for k in excluded)
    assert not any(r["infra_error"] for r in b.values())
    # Which calls fail depends on the order concurrent episodes reach the sandbox, so a group can lose more
    # than half its episodes; such a group is dropped whole (min_valid_fraction) and counted, not trained on.
    dropped = 0
    for step, task in {(k[0], k[1]) for k in a}:
        keep = sorted(k for k in a if k[:2] == (step, task) and k not in excluded)
        assert [a[k]["reward"] for k in keep] == [b[k]["reward"] for k in keep]  # the same episodes, played alike
        if len(keep) < 0.5 * 6:
            dropped += 1
            assert all(a[k]["advantage"] is None for k in keep)
            continue
        expected = group_advantages([b[k]["reward"] for k in keep], faulted.recipe.grpo.advantage).tolist()
        assert [a[k]["advantage"] for k in keep] == pytest.approx(expected, abs=1e-6)
    assert sum(r["dropped_too_few_valid"] for r in rows) == dropped
