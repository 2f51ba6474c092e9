"""The README's environment example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_environment_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "class Capitals" in b)
    example += (
        "\nassert obs == [] and reward == 1.0 and terminated and not truncated"
        "\nassert agentrl.make('capitals').max_turns == 3\n"
    )
    exec(compile(example, str(README), "exec"), {"__name__": "readme_example"})


def test_readme_test_command_installs_cpu_torch_first():
    text = README.read_text()
    command = text.split("<!-- test-command -->")[1].split("```")[1].splitlines()[1]
    assert command.startswith("pip install torch==2.13.0 && ")
    assert command.endswith("pytest")


def test_readme_first_command_installs_and_runs_the_quickstart():
    text = README.read_text()
    first_block = text.split("```")[1]
    assert first_block == text.split("<!-- quickstart-command -->")[1].split("```")[1]
    command = first_block.splitlines()[1]
    assert command.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && ")
    assert command.endswith("agentrl train recipes/quickstart.yaml")
    assert (README.parent / "docs" / "quickstart_reward_curve.png").exists()


def test_readme_agentrl_commands_parse():
    """Every `agentrl ...` command line shown in a bash block is accepted by the CLI's parser."""
    import shlex

    from agentrl.cli import build_parser

    parser = build_parser()
    lines = [
        line.split("#")[0].strip()
        for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
        for line in block.splitlines()
    ]
    commands = [shlex.split(line)[1:] for line in lines if line.startswith("agentrl ") and "--help" not in line]
    assert any(c[0] == "eval" for c in commands) and any(c[0] == "view" for c in commands)
    for argv in commands:
        parser.parse_args(argv)  # exits (SystemExit) on an unknown option


def test_readme_links_to_files_that_exist():
    for target in re.findall(r"\]\(((?:docs|recipes|benchmarks)/[^)#]+)\)", README.read_text()):
        assert (README.parent / target).exists(), target


def test_readme_agent_example_runs():
    """The AgentEnv example: check_env plays its agent code through the real endpoint."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "AgentEnv(tasks, run, score)" in b)
    example += "\nassert agentrl.make('capitals-agent').unwrapped.task_ids == ['lyon', 'porto']\n"
    exec(compile(example, str(README), "exec"), {"__name__": "readme_agent_example"})


def test_readme_mcp_example_runs_and_its_recipe_section_loads(tmp_path):
    """The MCP example builds its tools from the real time server; the recipe section is a valid recipe."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "class TimeZones" in b)
    example += (
        "\nenv = TimeZones()"
        "\nagentrl.check_env(env)"
        "\nenv.reset(options={'task_id': 'tokyo'})"
        "\nargs = {'source_timezone': 'Etc/UTC', 'time': '12:00', 'target_timezone': 'Asia/Tokyo'}"
        "\ncall = {'type': 'function', 'function': {'name': 'convert_time', 'arguments': args}}"
        "\nobs, *_ = env.step({'role': 'assistant', 'content': '', 'tool_calls': [call]})"
        "\nassert 'T21:00:00+09:00' in obs[0]['content']"
        "\nassert env.step('It is 21:00 in Tokyo.')[1] == 1.0"
        "\nenv.close()\n"
    )
    try:
        exec(compile(example, str(README), "exec"), {"__name__": "readme_mcp_example"})
    finally:
        from agentrl.tools import close_servers

        close_servers()
    from agentrl.train.recipe import load_recipe

    section = next(b for b in re.findall(r"```yaml\n(.*?)```", README.read_text(), flags=re.S) if "mcp:" in b)
    (tmp_path / "recipe.yaml").write_text(section)
    recipe = load_recipe(tmp_path / "recipe.yaml")
    assert [s.get("command") or s.get("url") for s in recipe.env.mcp] == [
        "python -m mcp_server_time",
        "http://127.0.0.1:8000/mcp",
    ]
