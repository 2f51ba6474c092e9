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


def test_errors_are_one_line(tmp_path, capsys):
    assert main(["doctor", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("agentrl doctor: error: cannot load a tokenizer")


def test_unknown_command_exits_nonzero():
    with pytest.raises(SystemExit) as exc:
        main(["fly"])
    assert exc.value.code == 2
