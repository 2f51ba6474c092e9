import sys

import pytest

from agentrl.chat.doctor import format_table, run_doctor
from agentrl.errors import UserError


def by_name(checks):
    return {c.name: c for c in checks}


def test_tiny_qwen3_with_training_template_passes():
    checks = run_doctor("tiny-qwen3-training", env_id="arithmetic")
    assert all(c.ok for c in checks), format_table(checks)
    assert len(checks) == 7


def test_training_template_can_be_requested_for_a_stock_model():
    checks = run_doctor("tiny-qwen3", template="training")
    assert all(c.ok for c in checks), format_table(checks)


def test_stock_template_reports_prefix_drift_clearly():
    checks = by_name(run_doctor("tiny-qwen3"))
    drift = checks["multi-turn prefix preserved"]
    assert not drift.ok
    assert "prefix drift at token" in drift.detail and "<think>" in drift.detail
    # Everything else about the stock template is fine.
    assert checks["tool-call round trip"].ok and checks["stop token"].ok and checks["environment check_env"].ok


def test_missing_stop_token_in_generation_config_is_caught(tmp_path):
    import json
    import shutil

    from agentrl.testing import tiny_qwen3_path

    model_dir = tmp_path / "m"
    shutil.copytree(tiny_qwen3_path("training"), model_dir)
    (model_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": 151643}))
    checks = by_name(run_doctor(str(model_dir)))
    assert not checks["stop token"].ok and "151645" in checks["stop token"].detail


def test_tool_less_template_passes_through_system_prompt(tmp_path):
    import shutil

    from conftest import CHATML_TEMPLATE

    from agentrl.testing import tiny_qwen3_path

    model_dir = tmp_path / "chatml"
    shutil.copytree(tiny_qwen3_path(), model_dir)
    template = tmp_path / "chatml.jinja"
    template.write_text(CHATML_TEMPLATE)
    checks = by_name(run_doctor(str(model_dir), template=str(template)))
    assert checks["template renders tools"].ok and "system prompt" in checks["template renders tools"].detail
    assert checks["tool-call round trip"].ok and checks["multi-turn prefix preserved"].ok


def test_broken_env_fails_its_check():
    checks = by_name(run_doctor("tiny-qwen3-training", env_id="no-such-env"))
    assert not checks["environment check_env"].ok and "no environment named" in checks["environment check_env"].detail


def test_unloadable_model_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="cannot load a tokenizer"):
        run_doctor(str(tmp_path / "missing"))


def test_doctor_and_training_resolve_template_names_alike(stock_tok):
    # One resolver: `doctor --template training` checks exactly the template `chat_template: training` trains with.
    from trl.chat_template_utils import qwen3_training_chat_template

    from agentrl.chat.format import load_chat_format
    from agentrl.chat.templates import resolve_chat_template

    assert resolve_chat_template(stock_tok, "training") == qwen3_training_chat_template
    assert load_chat_format(stock_tok, "training").chat_template == qwen3_training_chat_template
    assert resolve_chat_template(stock_tok, "auto") is None and resolve_chat_template(stock_tok, "stock") is None
    with pytest.raises(UserError, match="none of these"):
        resolve_chat_template(stock_tok, "no-such-template")


def test_training_template_is_refused_for_a_template_trl_does_not_know(chatml_chat):
    from agentrl.chat.templates import resolve_chat_template

    tok = chatml_chat.tokenizer
    saved = tok.chat_template
    tok.chat_template = chatml_chat.chat_template  # SmolLM2-like ChatML: TRL has no training variant
    try:
        with pytest.raises(UserError, match="no training chat template"):
            resolve_chat_template(tok, "training")
    finally:
        tok.chat_template = saved


def test_doctor_lists_an_mcp_servers_tools_and_checks_they_render(capsys):
    from pathlib import Path

    from agentrl.cli import main
    from agentrl.tools.mcp_tools import server_from

    server = f"{sys.executable} {Path(__file__).parents[1] / 'tools' / 'mcp_server.py'}"
    dead = f"{sys.executable} -c 'exit(1)'"
    checks = by_name(run_doctor("tiny-qwen3-training", mcp=[server, dead]))
    listed = checks[f"MCP server {server_from({'command': server}).label}"]
    assert listed.ok and "add(a, b)" in listed.detail and "lookup(city, fields)" in listed.detail
    assert checks["template renders MCP tools"].ok
    broken = checks[f"MCP server {server_from({'command': dead}).label}"]
    assert not broken.ok and "failed to start" in broken.detail
    assert main(["doctor", "tiny-qwen3-training", "--mcp", server]) == 0
    assert "echo(text, times)" in capsys.readouterr().out
