"""No API key reaches a log or a file that ``agentrl train`` or ``agentrl eval`` writes.

Each CLI runs once, in a subprocess whose environment holds sentinel keys (``secrets_probe``) for
E2B, W&B, OpenAI and Hugging Face and two other ``*_API_KEY``/``*_TOKEN`` variables. The user also
gives the environment a key of its own as a recipe override (``env.kwargs.api_key=...``, as for an
environment that calls a judge model) and pastes an environment value into another one
(``auth_header="Bearer $OPENAI_API_KEY"``). Every prompt quotes what sandboxed code saw of the
environment, and in the eval run the model's tool call prints it again, so sandbox output travels
through every writer. Then every byte of stdout, stderr (the ``agentrl`` logger at DEBUG included)
and every file under the output directories is searched for every sentinel: recipe.json,
summary.json, metrics.jsonl, trajectories, eval_*.json, base.json, checkpoints, TensorBoard events,
the W&B config (a stand-in ``wandb`` module records what it is given), eval_settings.json and the
md/html reports.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from secrets_probe import DUMP_CODE, key_digest, leaks, sentinels

from agentrl.cli import main
from agentrl.errors import RecipeError, UserError
from agentrl.redact import REDACTED, is_secret_name, redact, redact_text, secret_values

TESTS = Path(__file__).resolve().parent
# The CLI sets up no logging; here every record of the package's logger is printed, so that the
# log is searched too.
CLI = (
    "import logging, sys; logging.basicConfig(level=logging.INFO); logging.getLogger('agentrl').setLevel("
    "logging.DEBUG); from agentrl.cli import main; sys.exit(main(sys.argv[1:]))"
)
# A stand-in for the wandb package: it records the config and metrics it is given next to the run.
FAKE_WANDB = """
import json, os
class _Run:
    def __init__(self, path):
        self.path = path
    def log(self, scalars, step=None):
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "scalars": scalars}) + "\\n")
    def finish(self):
        pass
def init(project=None, dir=None, config=None, resume=None, **kwargs):
    path = os.path.join(dir, "wandb-record.jsonl")
    with open(path, "a") as f:
        f.write(json.dumps({"config": config}) + "\\n")
    return _Run(path)
"""


@pytest.fixture(scope="module")
def keys():
    """The environment's sentinels, plus JUDGE: the key the user passes only as a recipe override."""
    return {**sentinels(), "JUDGE": f"sentinel-judge-{secrets.token_hex(8)}"}


@pytest.fixture(scope="module")
def cli_env(keys, tmp_path_factory):
    stub = tmp_path_factory.mktemp("stub")
    (stub / "wandb").mkdir()
    (stub / "wandb" / "__init__.py").write_text(FAKE_WANDB)
    env = {k: v for k, v in os.environ.items() if not is_secret_name(k)}
    env.update({k: v for k, v in keys.items() if k != "JUDGE"})
    env.update(
        PYTHONPATH=os.pathsep.join([str(TESTS), str(stub)]),
        PROBE_KEY_SHA256=key_digest(keys["JUDGE"]),  # the environment checks that it got the key intact
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
    )
    return env


def start_cli(args, env, cwd) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CLI, *args], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip


def finish_cli(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr.decode(errors="replace")[-3000:]
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def files_with_keys(root: Path, keys: dict[str, str]) -> dict[str, list[str]]:
    return {str(p.relative_to(root)): leaks(p.read_bytes(), keys) for p in root.rglob("*") if p.is_file()}


def train_args(out: Path, keys: dict[str, str]) -> list[str]:
    from agentrl.testing import toy_policy_path

    return [
        "train",
        f"model.name={toy_policy_path()}",
        "env.id=secrets_probe:ProbeEnv",
        f"env.kwargs.api_key={keys['JUDGE']}",
        f"env.kwargs.auth_header=Bearer {keys['OPENAI_API_KEY']}",
        "grpo.steps=2",
        "grpo.tasks_per_step=2",
        "grpo.group_size=2",
        "grpo.max_turns=1",
        "grpo.micro_batch_size=4",
        "sampling.max_new_tokens=8",
        "sampling.stop=[.]",
        "lora.r=4",
        "lora.alpha=8",
        "eval.num_tasks=2",
        "save_every=1",
        "report_to=[tensorboard,wandb]",
        f"output_dir={out}",
    ]


def eval_args(url: str, out: Path, keys: dict[str, str]) -> list[str]:
    return ["eval", "--backend", "openai", "--base-url", url, "--model", "served-model",
            "--env", "secrets_probe:ProbeEnv", "-n", "2", "--max-turns", "3", "--output-dir", str(out),
            "--no-progress", f"api_key={keys['JUDGE']}", f"auth_header=Bearer {keys['OPENAI_API_KEY']}"]  # fmt: skip


class ChatAPI:
    """An OpenAI-style chat API on loopback: the model calls the python tool with DUMP_CODE, then answers."""

    def __init__(self):
        self.requests = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                api.requests.append({"auth": self.headers.get("Authorization"), "body": body})
                last = json.loads(body)["messages"][-1]
                if last["role"] == "user":
                    call = {"id": f"call-{len(api.requests)}", "type": "function",
                            "function": {"name": "python", "arguments": json.dumps({"code": DUMP_CODE})}}  # fmt: skip
                    message, finish = {"role": "assistant", "content": "", "tool_calls": [call]}, "tool_calls"
                else:
                    message, finish = {"role": "assistant", "content": "Done."}, "stop"
                data = json.dumps({"id": "x", "choices": [{"index": 0, "message": message, "finish_reason": finish}]})
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data.encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def runs(keys, cli_env, tmp_path_factory):
    """One training run and one eval run, side by side (they share nothing, and the machine has two cores)."""
    root = tmp_path_factory.mktemp("runs")
    api = ChatAPI()
    procs: list[subprocess.Popen] = []
    try:
        procs.append(start_cli(train_args(root / "run", keys), cli_env, root))
        procs.append(start_cli(eval_args(api.url, root / "ev", keys), cli_env, root))
        train, evaluation = (finish_cli(p) for p in procs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        api.close()
    return {"train": (train, root / "run"), "eval": (evaluation, root / "ev", api.requests)}


@pytest.fixture
def train_run(runs):
    return runs["train"]


@pytest.fixture
def eval_run(runs):
    return runs["eval"]


# ----- agentrl train -------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_training_run_writes_and_logs_no_key(train_run, keys):
    proc, out = train_run
    assert not leaks(proc.stdout, keys) and not leaks(proc.stderr, keys)
    found = files_with_keys(out, keys)
    assert not {path: names for path, names in found.items() if names}
    # Every kind of file was there to be searched.
    written = {"recipe.json", "summary.json", "metrics.jsonl", "trajectories.jsonl", "eval_before.json", "base.json"}
    written |= {"eval_after_trajectories.jsonl", "wandb-record.jsonl", "adapter/adapter_config.json"}
    assert written <= set(found), written - set(found)
    assert any(p.startswith("tensorboard/events.out.tfevents") for p in found)
    assert any(re.fullmatch(r"checkpoints/step-000002/.+\.json", p) for p in found)
    assert b"INFO:agentrl:" in proc.stderr  # the package's log was captured, and searched above
    # Sandboxed code's view of the environment went through the trajectory writer.
    text = json.loads((out / "trajectories.jsonl").read_text().splitlines()[0])["text"]
    assert '"environ": {"PATH"' in text


@pytest.mark.slow
def test_a_key_given_in_the_recipe_is_recorded_as_redacted(train_run):
    _, out = train_run
    kwargs = json.loads((out / "recipe.json").read_text())["env"]["kwargs"]
    assert kwargs == {"api_key": REDACTED, "auth_header": f"Bearer {REDACTED}"}
    config = json.loads((out / "wandb-record.jsonl").read_text().splitlines()[0])["config"]
    assert config["env"]["kwargs"] == kwargs  # what W&B would keep on its servers


@pytest.mark.slow
def test_eval_of_a_run_asks_again_for_the_key_its_recipe_does_not_hold(train_run, keys):
    from agentrl.eval.run import EvalSettings, resolve

    _, out = train_run
    with pytest.raises(UserError, match=r"env\.kwargs\.api_key held a key.*api_key=VALUE"):
        resolve(EvalSettings(adapter=str(out)))
    given = {"api_key": keys["JUDGE"], "auth_header": "Bearer x"}
    settings, _ = resolve(EvalSettings(adapter=str(out), env_kwargs=given))
    assert settings.env_kwargs == given  # the environment gets the key itself


def test_a_run_resumes_with_its_key_given_again_or_a_new_one(tmp_path, monkeypatch):
    from agentrl.train.recipe import load_recipe, recipe_hash
    from agentrl.train.run_dir import claim

    def recipe(key):
        return load_recipe(None, [f"env.kwargs.api_key={key}", "env.kwargs.digits=2", f"output_dir={tmp_path}"])

    claim(tmp_path, recipe("sk-first-key-0123456789"))
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')  # progress: a different recipe is refused now
    assert recipe_hash(recipe("sk-first-key-0123456789")) == recipe_hash(recipe("sk-rotated-key-0123456789"))
    claim(tmp_path, recipe("sk-rotated-key-0123456789"))
    assert "sk-" not in (tmp_path / "recipe.json").read_text()
    # A change that matters is still refused, and the message, printed to the terminal, quotes no key.
    monkeypatch.setenv("EXAMPLE_API_KEY", "sk-environment-key-0123")
    other = ["env.kwargs.api_key=sk-x-0123456789", "env.kwargs.header=Bearer sk-environment-key-0123"]
    with pytest.raises(RecipeError, match=r"env\.kwargs") as info:
        claim(tmp_path, load_recipe(None, [*other, "env.kwargs.digits=3", f"output_dir={tmp_path}"]))
    assert "sk-" not in str(info.value)


def test_print_recipe_shows_no_key(capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_sentinel_printed_0123456789")
    assert main(["train", "--print-recipe", "env.kwargs.token=t0ken-0123456789",
                 "env.kwargs.note=uses hf_sentinel_printed_0123456789"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "t0ken-0123456789" not in printed and "hf_sentinel_printed" not in printed
    assert "token: <redacted>" in printed and "note: uses <redacted>" in printed


# ----- agentrl eval --------------------------------------------------------------------------------
@pytest.mark.slow
def test_an_eval_run_writes_and_logs_no_key(eval_run, keys):
    proc, out, _ = eval_run
    assert not leaks(proc.stdout, keys) and not leaks(proc.stderr, keys)
    found = files_with_keys(out, keys)
    assert not {path: names for path, names in found.items() if names}
    assert {"summary.json", "report.md", "report.html", "trajectories.jsonl", "eval_settings.json"} <= set(found)
    settings = json.loads((out / "summary.json").read_text())["settings"]
    assert settings["env_kwargs"] == {"api_key": REDACTED, "auth_header": f"Bearer {REDACTED}"}
    # The model's tool call printed what the sandbox sees, and that went into the trajectories.
    rows = [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()]
    tool_results = [m["content"] for r in rows for m in r["messages"] if m["role"] == "tool"]
    assert len(tool_results) == 2 and all('"environ": {"PATH"' in t for t in tool_results)


@pytest.mark.slow
def test_the_chat_api_gets_its_own_key_in_its_header_and_nothing_else(eval_run, keys):
    _, _, requests = eval_run
    assert len(requests) == 4  # two tasks, each a tool call and an answer
    for req in requests:
        assert req["auth"] == f"Bearer {keys['OPENAI_API_KEY']}"
        assert not leaks(req["body"], keys)  # prompts and tool results sent to the provider hold no key


# ----- redaction -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    ["E2B_API_KEY", "WANDB_API_KEY", "OPENAI_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "AWS_SECRET_ACCESS_KEY",
     "GITHUB_TOKEN", "DB_PASSWORD", "api_key", "apiKey", "token", "judge.api-key", "client_secret"],
)  # fmt: skip
def test_secret_names(name):
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name",
    ["max_new_tokens", "pad_token_id", "TOKENIZERS_PARALLELISM", "key", "secret_word", "eos_token", "stop_token"],
)
def test_names_that_are_not_secrets(name):
    assert not is_secret_name(name)


def test_redact_replaces_named_keys_environment_values_and_url_passwords():
    values = secret_values({"OPENAI_API_KEY": "sk-abcdefgh12345678", "DB_PASSWORD": "postgres", "HOME": "/x/y"})
    assert values == ["sk-abcdefgh12345678"]  # too short to search for, or not a secret
    data = {
        "api_key": "anything",
        "token": 3,  # a number under a secret name is not a key
        "nested": [{"header": "Bearer sk-abcdefgh12345678"}, ("https://user:pw@host/v1", "/home/someone/x")],
        "digits": 2,
    }
    assert redact(data, values) == {
        "api_key": REDACTED,
        "token": 3,
        "nested": [{"header": f"Bearer {REDACTED}"}, (f"https://user:{REDACTED}@host/v1", "/home/someone/x")],
        "digits": 2,
    }
    assert redact_text("no keys here", values) == "no keys here"
