"""`agentrl view` renders saved trajectories: tool calls, results, rewards and the trained tokens."""

import html
import json
import re

import pytest

from agentrl.cli import main
from agentrl.eval.view import _CSP
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


def test_view_keeps_one_environment_of_a_mixed_run(tmp_path, capsys, stock_tok):
    tok = stock_tok
    rows = [_row(tok, task_id="calc/arith-1", env="calc"), _row(tok, task_id="game/code-1", env="game")]
    (tmp_path / "trajectories.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["view", str(tmp_path)]) == 0
    page = (tmp_path / "trajectories.html").read_text()
    assert "env <b>calc</b>" in page and "env <b>game</b>" in page and "2 episodes" in page
    assert main(["view", str(tmp_path), "--env", "game", "-o", str(tmp_path / "game.html")]) == 0
    page = (tmp_path / "game.html").read_text()
    assert "game/code-1" in page and "calc/arith-1" not in page and "1 episodes" in page
    capsys.readouterr()
    assert main(["view", str(tmp_path), "--env", "gaem"]) == 2  # a typo names the run's environments
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"agentrl view: error: no episodes of environment 'gaem' under {str(tmp_path)!r}; its environments "
                   "are calc, game"]  # fmt: skip
    with pytest.raises(SystemExit):
        main(["view", "--help"])
    assert "--env NAME" in capsys.readouterr().out


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ----- the page shows data, never runs it ----------------------------------------------------------
INJECTIONS = [
    "<script>alert(1)</script>",
    "</pre></div></details><script>alert(2)</script>",
    "' onmouseover='alert(3)",
    '"><img src=x onerror=alert(4)>',
    "<!-- --><svg onload=alert(5)>",
    "<style>body{display:none}</style>",
    "]]><iframe src=javascript:alert(6)>",
]
ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "div", "span", "b", "i",
                "details", "summary", "table", "tr", "td"}  # fmt: skip
ALLOWED_CLASSES = {"ep", "ok", "fail", "infra", "meta", "msg", "system", "user", "assistant", "tool", "other",
                   "role", "call", "ctl", "tok", "m0", "m1"}  # fmt: skip


class _Tags:
    """Every tag and attribute of a page, as a browser's tokenizer sees them."""

    def __init__(self, page: str):
        import html.parser

        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.style = []
        parser = html.parser.HTMLParser(convert_charrefs=True)
        parser.handle_starttag = lambda tag, attrs: self.tags.append((tag, attrs))
        parser.handle_startendtag = parser.handle_starttag
        parser.handle_data = lambda data: self.style.append(data) if self.tags[-1][0] == "style" else None
        parser.feed(page)
        parser.close()


def test_view_escapes_markup_in_every_field(tmp_path, capsys):
    bad = " ".join(INJECTIONS) + " \x1b]0;title\x07\x1b[2J\x00\udcff"
    row = {
        "task_id": bad,
        "group_index": bad,
        "step": bad,
        "messages": [
            {"role": "system", "content": bad},
            {"role": bad, "content": bad, "name": bad},
            {"role": "user", "content": bad, "reasoning_content": bad},
            {
                "role": "assistant",
                "content": bad,
                "reasoning_content": bad,
                "tool_calls": [
                    {"function": {"name": bad, "arguments": {bad: bad}}},
                    {"function": {"name": bad, "arguments": bad}},
                ],
            },
            {"role": "tool", "name": bad, "content": bad},
        ],
        "reward": bad,
        "advantage": bad,
        "reward_components": {bad: bad, "success": 0.0},
        "turn_rewards": [bad, 1.0],
        "turns": 2,
        "tool_calls": bad,
        "truncated": True,
        "truncated_by": bad,
        "infra_error": bad,
    }
    run = tmp_path / f"run{INJECTIONS[3]}"[:80].replace("/", "_")
    run.mkdir()
    (run / "trajectories.jsonl").write_text(json.dumps(row) + "\n")
    assert main(["view", str(run)]) == 0
    out = capsys.readouterr()
    assert not any(c in out.out + out.err for c in "\x1b\x07\x00")  # the command prints a path, no data
    page = (run / "trajectories.html").read_bytes().decode("utf-8")  # strict: valid UTF-8
    assert not any(c in page for c in "\x1b\x07\x00") and "<span class='ctl'>\\x1b</span>" in page
    tags = _Tags(page)
    for tag, attrs in tags.tags:
        assert tag in ALLOWED_TAGS, (tag, attrs)
        for name, value in attrs:
            assert name in ("class", "charset", "http-equiv", "content"), (tag, name, value)
            if name == "class":
                assert set(value.split()) <= ALLOWED_CLASSES, value
    assert len([t for t, _ in tags.tags if t == "style"]) == 1 and "alert" not in "".join(tags.style)
    assert ("meta", [("http-equiv", "Content-Security-Policy"), ("content", _CSP)]) in tags.tags
    # Each injection is on the page as text a reader sees, in every field it came from.
    assert page.count(html.escape(INJECTIONS[0])) >= 15


def test_reports_escape_markup_and_control_characters(tmp_path):
    from agentrl.eval.loop import eval_metrics
    from agentrl.eval.report import _html, _markdown
    from agentrl.rollout.trajectory import Trajectory

    ids = ["a|b\n| forged | row |", "[click](javascript:alert(1))", "<script>alert(2)</script>", "\x1b[2J\x07t"]
    trajs = [Trajectory(task_id=t, group_index=0, reward=1.0, reward_components={"success": 1.0}) for t in ids]
    settings = {"model": "<b>m</b>", "env": "e", "env_kwargs": {"data": "x|y"}, "split": "test", "samples": 1,
                "temperature": 0, "max_turns": 2, "seed": 0}  # fmt: skip
    api = {"requests": 1, "failed": 1, "retries": 0, "last_error": "<img src=x onerror=alert(3)>\x1b]0;t\x07"}
    summary = {"settings": settings, "results": {"base": eval_metrics(trajs, k=1)}, "api": api, "wall_seconds": 1}
    md = _markdown(summary, [], tmp_path)
    rows = [line for line in md.splitlines() if line.startswith("| base |")]
    assert len(rows) == len(ids)  # one row per task: no id broke out of its row or added one
    assert all(len(re.findall(r"(?<!\\)\|", line)) == 9 for line in rows), rows  # 8 cells each, none forged
    for text in ("<script", "<img", "<b>", "[click](", "\x1b", "\x07", "\n| forged"):
        assert text not in md, text
    assert "&lt;script&gt;" in md and "\\[click\\]" in md and "\\x1b" in md
    page = _html(summary, [])
    tags = _Tags(page)
    assert {t for t, _ in tags.tags} <= {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "code",
                                         "b", "table", "tr", "th", "td", "details", "summary"}  # fmt: skip
    assert "\x1b" not in page and "\x07" not in page and "&lt;script&gt;" in page
