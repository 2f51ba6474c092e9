"""The wheel has one import root, and environments/ and tools/ land inside it."""

import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
        check=True,
    )
    (whl,) = out.glob("agentrl-*.whl")
    return whl


def test_wheel_has_agentrl_as_only_top_level_name(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"agentrl"}
    assert "agentrl/environments/arithmetic.py" in names
    assert "agentrl/tools/calculator_tool.py" in names
    assert not any(n.startswith(("environments/", "tools/", "tests/")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "agentrl = agentrl.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_wheel_installs_and_imports_in_a_fresh_venv(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    site = Path(
        subprocess.check_output(
            [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    # Dependencies (torch, transformers, ...) come from this test's environment, *after* the fresh site-packages,
    # so agentrl itself can only be imported from the wheel.
    (site / "zz_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    code = (
        "import agentrl, agentrl.environments, agentrl.tools, json; "
        "env = agentrl.make('arithmetic', num_tasks=3); env.reset(seed=0); "
        "print(json.dumps([agentrl.__file__, agentrl.environments.__file__, agentrl.tools.__file__]))"
    )
    import json

    files = json.loads(subprocess.check_output([py, "-c", code], text=True, cwd=tmp_path))
    for f in files:
        assert f.startswith(str(site)), f
    installed = {
        p.name for p in site.iterdir() if not p.name.endswith((".dist-info", ".pth")) and p.name != "__pycache__"
    }
    assert "environments" not in installed and "tools" not in installed
    assert "agentrl" in installed
    cli = subprocess.run([env_dir / "bin" / "agentrl", "envs"], capture_output=True, text=True, check=True)
    assert "arithmetic" in cli.stdout


def test_a_checkout_that_is_not_installed_imports_from_pythonpath(tmp_path):
    # The GPU device check runs from a checkout put on PYTHONPATH, on a machine where nothing is installed:
    # agentrl.tools and agentrl.environments (tools/ and environments/ at the top of the repository) must import.
    code = (
        "import sys\n"
        "sys.meta_path[:] = [m for m in sys.meta_path if 'editable' not in repr(m).lower()]  # not installed\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import agentrl, agentrl.tools, agentrl.environments\n"
        "from agentrl.tools.sandbox import LocalSandbox\n"
        "from agentrl.environments.arithmetic import ArithmeticEnv\n"
        "env = agentrl.make('arithmetic')\n"
        "print(agentrl.tools.__file__, agentrl.environments.__file__, type(env.unwrapped).__name__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tools, environments, env = proc.stdout.split()
    assert tools == str(ROOT / "tools" / "__init__.py") and environments == str(ROOT / "environments" / "__init__.py")
    assert env == "ArithmeticEnv"
