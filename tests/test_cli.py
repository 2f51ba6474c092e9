import os
import subprocess
import sys

import pytest

from agentrl.cli import main

COMMANDS = [[], ["envs"], ["doctor"]]


def agentrl(*args):
    return subprocess.run([sys.executable, "-m", "agentrl.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*cmd, "--help"])
    assert exc.value.code == 0
    assert "usage: agentrl" in capsys.readouterr().out


def test_envs_lists_builtins(capsys):
    assert main(["envs"]) == 0
    out = capsys.readouterr().out
    assert "arithmetic" in out and "calculator" in out


def test_doctor_exit_codes():
    ok = agentrl("doctor", "tiny-qwen3-training")
    assert ok.returncode == 0, ok.stderr
    assert "PASS" in ok.stdout and "FAIL" not in ok.stdout
    bad = agentrl("doctor", "tiny-qwen3")
    assert bad.returncode == 1
    assert "FAIL" in bad.stdout and "prefix drift" in bad.stdout
    last = bad.stderr.strip().splitlines()[-1]
    assert last.startswith("agentrl doctor: ") and "failed" in last


def test_user_mistakes_are_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    assert main(["doctor", str(tmp_path / "nope")]) == 2  # a missing model directory
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("agentrl doctor: error: cannot load a tokenizer")
    assert main(["train", "recipes/nope.yaml"]) == 2  # a missing recipe file
    assert capsys.readouterr().err.strip() == "agentrl train: error: recipe file not found: recipes/nope.yaml"
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # a missing optional package
    assert main(["eval", "--env", "reasoning-gym", "--output-dir", str(tmp_path / "rg")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install reasoning-gym" in err


def test_unexpected_errors_show_their_traceback_and_exit_1(tmp_path):
    # A bug (here in the user's own environment) must not be reduced to one line: where it happened matters.
    (tmp_path / "broken_env.py").write_text(
        "class Broken:\n    def __init__(self, **kwargs):\n        raise RuntimeError('bug in my environment')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    args = ["eval", "--model", "tiny-qwen3", "--env", "broken_env:Broken", "--output-dir", str(tmp_path / "out")]
    proc = subprocess.run([sys.executable, "-m", "agentrl", *args], capture_output=True, text=True, env=env)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert 'broken_env.py", line 3' in proc.stderr and "RuntimeError: bug in my environment" in proc.stderr


def test_unknown_command_exits_nonzero():
    with pytest.raises(SystemExit) as exc:
        main(["fly"])
    assert exc.value.code == 2
