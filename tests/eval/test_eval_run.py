"""`agentrl eval` end to end on a tiny model: files, metrics, --compare, resume, settings checks."""

import json

import pytest
import torch

from agentrl.cli import main
from agentrl.errors import UserError
from agentrl.testing import toy_policy_path

ENV = "agentrl.testing:LatinLettersEnv"


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A LoRA adapter with random (non-zero) weights, so that it really changes the policy."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(toy_policy_path())
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(out)
    return out


def _args(out, *extra):
    return ["eval", "--model", str(toy_policy_path()), "--env", ENV, "--max-new-tokens", "8", "--max-turns", "1",
            "--output-dir", str(out), "--no-progress", *extra]  # fmt: skip


def _lines(path):
    return path.read_text().splitlines()


def test_compare_writes_everything_and_resumes(tmp_path, adapter, capsys):
    out = tmp_path / "ev"
    assert main(_args(out, "--adapter", str(adapter), "--compare", "-n", "6", "-k", "3")) == 0
    printed = capsys.readouterr().out
    assert "paired difference over the same 6 tasks" in printed and "pass@3" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["results"]) == {"base", "adapter"}
    for label in ("base", "adapter"):
        m = summary["results"][label]
        assert m["tasks"] == 6 and m["episodes"] == 18 and m["samples_per_task"] == 3
        assert set(m["pass_at_k"]) == {"1", "2", "3"} and len(m["per_task"]) == 6
        assert m["pass_at_k"]["1"]["mean"] <= m["pass_at_k"]["3"]["mean"]
        rows = [json.loads(x) for x in _lines(out / label / "trajectories.jsonl")]
        assert len(rows) == 18 and all(r["text"] and r["ids"] for r in rows)
    assert summary["comparison"]["success"]["n"] == 6 and summary["settings"]["temperature"] == 1.0
    base_ids = [json.loads(x)["ids"] for x in _lines(out / "base" / "trajectories.jsonl")]
    adapter_ids = [json.loads(x)["ids"] for x in _lines(out / "adapter" / "trajectories.jsonl")]
    assert base_ids != adapter_ids  # the adapter really was applied, and really was switched off for base
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert "pass@3" in md and "Paired difference" in md and "figures/pass_at_k.png" in md
    assert page.count("data:image/png;base64,") >= 3 and "<script" not in page

    # A crash in the middle: the last task's rows are half written. Running again finishes only that task.
    path = out / "adapter" / "trajectories.jsonl"
    lines = _lines(path)
    path.write_text("\n".join(lines[:-2]) + "\n" + lines[-1][:40])
    kept = lines[:-3]
    base_before = _lines(out / "base" / "trajectories.jsonl")
    assert main(_args(out, "--adapter", str(adapter), "--compare", "-n", "6", "-k", "3")) == 0
    again = _lines(path)
    assert len(again) == 18 and again[: len(kept)] == kept
    assert _lines(out / "base" / "trajectories.jsonl") == base_before  # finished: nothing ran again

    # Other settings in the same directory are refused in one line, and --overwrite starts again.
    assert main(_args(out, "--adapter", str(adapter), "--compare", "-n", "6", "-k", "2")) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(_args(out, "--adapter", str(adapter), "--compare", "-n", "2", "-k", "2", "--overwrite")) == 0
    assert len(_lines(path)) == 4


def test_base_model_alone_and_greedy_default(tmp_path):
    out = tmp_path / "base"
    assert main(_args(out, "-n", "3")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["results"]) == ["base"] and summary["settings"]["temperature"] == 0.0
    assert len(_lines(out / "trajectories.jsonl")) == 3 and "comparison" not in summary


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--compare"], "--compare needs --adapter"),
        (["-k", "2", "--temperature", "0"], "temperature 0"),
        (["--adapter", "/nonexistent/adapter"], "does not exist"),
        (["--env", "no-such-env"], "no environment named"),
    ],
)
def test_bad_arguments_fail_in_one_line(tmp_path, capsys, extra, message):
    args = _args(tmp_path / "x", *extra)
    if "--env" in extra:
        args = [a for a in args if a != ENV]
        args.remove("--env")
        args += ["--env", "no-such-env"]
    assert main(args) == 2  # a user mistake: one line, exit 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_settings_come_from_the_run_then_the_environment(tmp_path):
    from agentrl.eval.run import EvalSettings, resolve

    assert resolve(EvalSettings(env="codebreaker"))[0].max_turns == 12  # the game's own limit, not 4
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    recipe = {"model": {"name": "m", "chat_template": "training"}, "env": {"id": "arithmetic", "kwargs": {"digits": 2}},
              "grpo": {"max_turns": 2, "max_total_tokens": 900}, "eval": {"num_tasks": 50, "max_new_tokens": 40},
              "sampling": {"max_new_tokens": 64}, "seed": 7}  # fmt: skip
    (run / "recipe.json").write_text(json.dumps(recipe))
    s, found = resolve(EvalSettings(adapter=str(run), env_kwargs={"num_ops": 1}))
    assert found == run and s.adapter == str(run / "adapter") and s.output_dir == str(run / "eval")
    assert (s.model, s.env, s.env_kwargs, s.chat_template) == (
        "m",
        "arithmetic",
        {"digits": 2, "num_ops": 1},
        "training",
    )
    assert (s.max_turns, s.max_total_tokens, s.num_tasks, s.max_new_tokens, s.seed) == (2, 900, 50, 40, 7)
    # Another environment does not inherit the run's environment kwargs.
    other, _ = resolve(EvalSettings(adapter=str(run), env="codebreaker"))
    assert other.env_kwargs == {} and other.num_tasks is None and other.max_turns == 12 and other.model == "m"
    assert other.output_dir == str(run / "eval-codebreaker")


def test_an_adapter_is_evaluated_on_the_base_its_loader_gave_it(tmp_path):
    # base.json records the loader and precision that trained the adapter (Unsloth's 4-bit base is not
    # bitsandbytes' even at the same precision); agentrl eval loads it the same way unless told otherwise.
    from agentrl.eval.run import EvalSettings, resolve

    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "recipe.json").write_text(json.dumps({"model": {"name": "m"}, "env": {"id": "arithmetic"}}))
    (run / "base.json").write_text(json.dumps({"loader": "unsloth", "load_in_4bit": True, "dtype": "bfloat16"}))
    s, _ = resolve(EvalSettings(adapter=str(run)))
    assert (s.loader, s.load_in_4bit) == ("unsloth", True)
    s, _ = resolve(EvalSettings(adapter=str(run), loader="bitsandbytes"))
    assert (s.loader, s.load_in_4bit) == ("bitsandbytes", True)  # --loader overrides, the precision stays
    s, _ = resolve(EvalSettings(adapter=str(run), model="other"))
    assert (s.loader, s.load_in_4bit) == ("auto", False)  # another base model: nothing carries over
    (run / "base.json").unlink()  # a run from before base.json recorded the loader
    assert resolve(EvalSettings(adapter=str(run)))[0].loader == "auto"


def test_a_mixed_run_is_evaluated_on_its_mix_or_one_environment_alone(tmp_path):
    from agentrl.envs.mix import MixedEnv
    from agentrl.envs.tasks import split_task_ids
    from agentrl.eval.run import EvalSettings, env_factory, resolve

    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    mix = [{"id": "arithmetic", "weight": 2.0, "kwargs": {"digits": 2}, "name": "calc"},
           {"id": "codebreaker", "weight": 1.0, "kwargs": {}, "name": "game"}]  # fmt: skip
    recipe = {"model": {"name": "m"}, "env": {"id": "", "kwargs": {}, "mix": mix}, "grpo": {"max_turns": 3},
              "eval": {"num_tasks": 9}, "seed": 5}  # fmt: skip
    (run / "recipe.json").write_text(json.dumps(recipe))
    s, _ = resolve(EvalSettings(adapter=str(run)))
    assert (s.mix, s.env, s.env_kwargs, s.max_turns, s.num_tasks) == (mix, "calc+game", {}, 3, 9)
    assert s.output_dir == str(run / "eval")
    make = env_factory(s)
    assert isinstance(make(), MixedEnv)
    ids = [t.split("/")[0] for t in split_task_ids(make)]
    assert [(ids[:n].count("calc"), ids[:n].count("game")) for n in (3, 9)] == [(2, 1), (6, 3)]  # 2:1 in a prefix
    # One environment of the mix alone: its own id and kwargs, the run's limits, a directory of its own.
    one, _ = resolve(EvalSettings(adapter=str(run), env="calc", env_kwargs={"num_ops": 1}))
    assert (one.mix, one.env, one.env_kwargs, one.max_turns) == (None, "arithmetic", {"digits": 2, "num_ops": 1}, 3)
    assert one.output_dir == str(run / "eval-calc")
    with pytest.raises(UserError, match="give --env NAME to evaluate one of the run's environments \\(calc, game\\)"):
        resolve(EvalSettings(adapter=str(run), env_kwargs={"digits": 3}))
    mix[1]["kwargs"] = {"api_key": "<redacted>"}  # recipe.json never records a key
    (run / "recipe.json").write_text(json.dumps(recipe))
    with pytest.raises(UserError, match="evaluate it alone, the key given again: agentrl eval --env game api_key="):
        resolve(EvalSettings(adapter=str(run)))
