"""`agentrl view` renders saved trajectories: tool calls, results, rewards and the trained tokens."""

import json

import pytest

from agentrl.cli import main
from agentrl.testing import qwen3_tokenizer_path


def _row(tok, **extra):
    messages = [
        {"role": "system", "content": "Use the calculator."},
        {"role": "user", "content": "What is 12 * 34?"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
            "name": "calculator", "arguments": {"expression": "12 * 34"}}}]},
        {"role": "tool", "name": "calculator", "content": "408"},
        {"role": "assistant", "content": "\\boxed{408}"},
    ]  # fmt: skip
    prompt = tok.encode("<|im_start|>user\nWhat is 12 * 34?<|im_end|>\n<|im_start|>assistant\n")
    sampled = tok.encode("\\boxed{408}<|im_end|>")
    return {
        "task_id": "arith-1",
        "group_index": 0,
        "ids": prompt + sampled,
        "mask": [0] * len(prompt) + [1] * len(sampled),
        "messages": messages,
        "reward": 1.0,
        "reward_components": {"reward": 1.0, "correct": 1.0, "used_tool": 1.0},
        "turns": 2,
        "tool_calls": 1,
        **extra,
    }


def test_view_renders_calls_results_rewards_and_trained_tokens(tmp_path, capsys):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(qwen3_tokenizer_path())
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.json").write_text(json.dumps({"model": {"name": str(qwen3_tokenizer_path())}}))
    rows = [_row(tok, step=1, advantage=0.8), _row(tok, step=1, advantage=0.0, reward=0.0, task_id="arith-2")]
    rows[1]["reward_components"] = {"reward": 0.0, "correct": 0.0}
    (run / "trajectories.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{cut sho")
    (run / "eval").mkdir()
    (run / "eval" / "trajectories.jsonl").write_text(json.dumps(_row(tok, infra_error="sandbox died")) + "\n")

    assert main(["view", str(run)]) == 0
    page = (run / "trajectories.html").read_text()
    assert "wrote" in capsys.readouterr().out
    assert "trajectories.jsonl" in page and "eval/trajectories.jsonl" in page
    assert "class='call'" in page and "calculator" in page and "12 * 34" in page  # the tool call, highlighted
    assert "class='msg tool'" in page and "408" in page  # the tool result
    assert "advantage +0.800" in page and "used_tool" in page
    assert "ep ok" in page and "ep fail" in page and "ep infra" in page and "not scored" in page
    assert "<span class='m1'>\\boxed{408}&lt;|im_end|&gt;</span>" in page  # the sampled, trained-on tokens
    assert "advantage 0, so this episode moved no weights" in page
    assert "prompt (2 messages)" in page

    out = tmp_path / "one.html"
    assert main(["view", str(run), "-o", str(out), "--task", "arith-2", "--limit", "1"]) == 0
    one = out.read_text()
    assert "arith-2" in one and "arith-1" not in one.split("<h2>")[1]


def test_view_errors_are_one_line(tmp_path, capsys):
    assert main(["view", str(tmp_path / "missing")]) == 2
    assert main(["view", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "not a directory" in err[0] and "no *trajectories.jsonl" in err[1]


@pytest.mark.parametrize("model", [None, "definitely/not-a-model"])
def test_view_without_a_tokenizer_still_renders_messages(tmp_path, model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(qwen3_tokenizer_path())
    (tmp_path / "trajectories.jsonl").write_text(json.dumps(_row(tok)) + "\n")
    args = ["view", str(tmp_path)] + (["--model", model] if model else [])
    with pytest.warns(UserWarning) if model else _nothing():
        assert main(args) == 0
    page = (tmp_path / "trajectories.html").read_text()
    assert "calculator" in page and "token view" not in page


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
